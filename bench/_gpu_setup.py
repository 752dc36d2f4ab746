"""bench/gpu.py's set-up: the Fashion-MNIST files, the model setting, the machine, time caps and the JSON.

Nothing here needs the pipeline (zarr, Prefect): the GPU machine has neither. The setting is
resolved from params.yaml where the pipeline is installed, else read from the carried file.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _machine import load_average
from preprocessing.atomic import atomic_write_text

# --------------------------------------------------------------------------- data

FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
TEST_BINARISATION_SEED = 0


def _idx_images(path: Path) -> np.ndarray:
    """An idx3 image file (gzip) as (N, 1, rows, cols) uint8."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051 or len(raw) != 16 + int(n) * int(rows) * int(cols):
        raise SystemExit(f"{path}: not an idx3 image file")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(int(n), 1, int(rows), int(cols)).copy()


def load_fashion_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Train grey levels (60000, 1, 28, 28) uint8 and a fixed binarised test set (10000, 1, 28, 28) float32.

    The test set is binarised once with a seeded draw (x ~ Bernoulli(grey / 255)), as the prepare
    stage's `test/x_binarised`; training batches are binarised afresh every time (dynamically).
    """
    data_dir = Path(data_dir)
    missing = [f for f in FILES.values() if not (data_dir / f).is_file()]
    if missing:
        raise SystemExit(f"{data_dir}: missing {', '.join(missing)} (Debian: apt-get install dataset-fashion-mnist)")
    train, test = (_idx_images(data_dir / FILES[k]) for k in ("train", "test"))
    rng = np.random.default_rng(TEST_BINARISATION_SEED)
    test_bin = (rng.random(test.shape, dtype=np.float32) < test / np.float32(255.0)).astype(np.float32)
    return train, test_bin


# --------------------------------------------------------------------------- the model setting


def gpu_setting(epochs: int, n_train: int, carried: Path):
    """(setting, where it came from): params.yaml through the pipeline where it is installed, else `carried`
    (written by `bench/gpu.py --write-setting` for the same epochs and training images)."""
    from _compare_setting import load_setting, resolve

    try:
        return resolve(epochs, n_train), "params.yaml"
    except ModuleNotFoundError as err:
        missing = err.name
    if not Path(carried).is_file():
        raise SystemExit(f"bench/gpu.py: the pipeline is not importable here (no {missing}) and {carried} is missing; "
                         f"write it with `python bench/gpu.py --write-setting {carried}` (same --tiny) where it is")
    setting = load_setting(carried)
    if (setting.epochs, setting.n_train) != (epochs, n_train):
        raise SystemExit(f"{carried}: resolved for {setting.epochs} epochs over {setting.n_train} images, this run "
                         f"trains {epochs} over {n_train}; write it again with the same --tiny")
    return setting, f"{carried} (params.yaml, resolved where the pipeline is installed)"


# --------------------------------------------------------------------------- machine


def gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "python": platform.python_version(),
                            "cpus": os.cpu_count(), "load_average_start": load_average()}
    if not info["cuda"]:
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                bf16_supported=torch.cuda.is_bf16_supported())
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit,utilization.gpu",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = out.stdout.strip()
        info["driver"] = out.stdout.split(",")[0].strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    return info


# --------------------------------------------------------------------------- time caps


class Deadline:
    """The run's wall-clock budget; each phase asks for at most `cap` seconds of what is left."""

    def __init__(self, total_s: float, reserve_s: float = 20.0) -> None:
        self.t0 = time.monotonic()
        self.total = total_s
        self.reserve = reserve_s

    def left(self) -> float:
        return self.total - self.reserve - (time.monotonic() - self.t0)

    def cap(self, seconds: float) -> float:
        return max(0.0, min(seconds, self.left()))

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- results


class Results:
    """The JSON record, rewritten after every phase (to bench/results/gpu.json and copies) so a cut run keeps what it did."""

    def __init__(self, paths: list[Path], data: dict[str, Any]) -> None:
        self.paths = paths
        self.data = data

    def save(self) -> None:
        text = json.dumps(_clean(self.data), indent=2, sort_keys=True) + "\n"
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)


def _clean(value: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if not str(k).startswith("_")}  # _model etc.: in memory only
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    return value


PHASES = ("tests", "training", "launch_overhead", "log_likelihood", "profiles")


def parse_phases(text: str) -> list[str]:
    """`--phases a,b`: the phases to run, in PHASES's order; an unknown name is an error naming it."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in PHASES]
    if unknown or not names:
        raise SystemExit(f"bench/gpu.py: --phases: unknown phase(s) {unknown or text!r}; choose from {', '.join(PHASES)}")
    return [p for p in PHASES if p in names]


def merge_base(path: Path | None, phases: list[str]) -> dict[str, Any]:
    """The results of an earlier run at `path`, less the phases about to be run again (and what they decide).

    The phases run now replace their entries; every other phase's results, and a record of the
    earlier run, stay. No path: an empty record.
    """
    if path is None:
        return {}
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: --merge: cannot read the earlier results ({type(err).__name__}: {err})") from None
    if not isinstance(old, dict):
        raise SystemExit(f"{path}: --merge: the earlier results are not a JSON object")
    dropped = set(phases) | {"goals"}
    base = {k: v for k, v in old.items() if k not in dropped}
    base["phases_s"] = {k: v for k, v in (old.get("phases_s") or {}).items() if k not in phases}
    base["merged_from"] = {"path": str(path), "started": old.get("started"), "total_s": old.get("total_s"),
                           "machine": old.get("machine"), "phases_kept": [k for k in PHASES if k in old and k not in phases]}
    return base
