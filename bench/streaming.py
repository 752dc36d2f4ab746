"""Peak memory and speed of training from memory vs streaming zarr chunks, at 1x and 10x the CMU set.

Data: the shared CMU motion-capture set (../shared/data/cmu, or $VHP_DATA_DIR/cmu)
prepared with preprocessing.mocap.prepare (fallback_asf 01/01.asf for subject 90,
frame_step 1: every frame of the set), then a 10x group built by repeating every
array ten times (preprocessing.store.write_dataset). Both groups live in --work
(/tmp by default), never in the repository.

Each setting (1x / 10x, in memory / streamed) trains the default VHP model
(params.yaml train.model, batch 64) for --steps steps with pipelines.train.flow.fit in a
fresh subprocess, which reports its own peak RSS (resource.getrusage ru_maxrss),
its RSS after imports, the time to load the training data and the steps per
second. Streaming is forced with train.memory_budget_mb = 0 and avoided with a
budget larger than the data.

A second measurement times the reads alone on the 10x group: batches of random
rows (what fit's epoch permutation asks for: nearly every row of a batch in a
different chunk) against batches drawn from a window of a few chunks (a
permutation shuffled within windows of consecutive chunks, the windows in random
order), to show what a chunk-aware shuffle would gain.

Run: .venv/bin/python bench/streaming.py   (writes bench/results/streaming.json, or --out)
The figures are printed and recorded, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from _machine import current_rss_mb, peak_rss_mb  # noqa: E402
from _params import describe, jsonable, train_params  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "streaming.json"
# the prepare stage's params.yaml section with these keys changed: the shared set, every frame, whole trials
PREPARE_OVERRIDES = {"fallback_asf": "01/01.asf", "frame_step": 1, "segment_frames": 0}


BUDGETS_MB = {"in_memory": 10**6, "streamed": 0}  # train.memory_budget_mb of each mode


def train_overrides(batch_size: int) -> dict:
    """What each setting changes in params.yaml's train section (and train.memory_budget_mb: BUDGETS_MB)."""
    return {"batch_size": batch_size, "epochs": 1000, "checkpoint_every": 10**9, "log_every": 50,
            "datasets": ["mocap"], "models": ["vhp"]}


def cmu_source() -> Path:
    env = os.environ.get("VHP_DATA_DIR")
    base = Path(env) if env else ROOT.parent / "shared" / "data"
    return base / "cmu"


def prepare_groups(work: Path, repeat: int) -> tuple[Path, Path]:
    """The 1x group (prepared from the shared CMU files) and the repeat-x group built from it."""
    import numpy as np

    from pipelines.params_file import load_section
    from preprocessing.mocap import MocapParams, prepare
    from preprocessing.store import open_dataset, write_dataset

    one, many = work / "cmu_1x.zarr", work / f"cmu_{repeat}x.zarr"
    if not one.exists():
        params = load_section(MocapParams, "prepare_mocap", ROOT / "params.yaml", source=str(cmu_source()),
                              **PREPARE_OVERRIDES)
        t0 = time.perf_counter()
        prepare(params, one, progress=False)
        print(f"prepared {one} in {time.perf_counter() - t0:.1f} s")
    if not many.exists():
        ds = open_dataset(one)
        arrays = {"train/x": np.tile(np.asarray(ds.train.x[:]), (repeat, 1)),
                  "test/x": np.asarray(ds.test.x[:])}
        for name, arr in ds.train.labels.items():
            arrays[f"train/{name}"] = np.tile(np.asarray(arr[:]), repeat)
        for name, arr in ds.test.labels.items():
            arrays[f"test/{name}"] = np.asarray(arr[:])
        attrs = dict(ds.attrs)
        attrs["params"] = {**dict(attrs.get("params") or {}), "bench_repeat": repeat}
        t0 = time.perf_counter()
        write_dataset(many, arrays, attrs)
        print(f"wrote {many} ({arrays['train/x'].nbytes / 2**20:.0f} MB of training data) "
              f"in {time.perf_counter() - t0:.1f} s")
    return one, many


def child(data: Path, budget_mb: int, steps: int, batch_size: int, work: Path) -> dict:
    """One setting, in this (fresh) process: load, train `steps` steps, report memory and speed."""
    import torch

    from pipelines.train.data import load_training_data
    from pipelines.train.fit import fit
    from pipelines.runtime import set_determinism, set_threads
    from pipelines.train.flow import constraint_config, model_config
    from preprocessing.store import open_dataset
    from vhp_core import build_model

    set_threads(1)
    rss_imports = current_rss_mb()
    params = train_params({**train_overrides(batch_size), "memory_budget_mb": budget_mb})
    t0 = time.perf_counter()
    dataset = open_dataset(data, check_values=False)
    train = load_training_data(dataset, params)
    load_seconds = time.perf_counter() - t0
    rss_loaded = current_rss_mb()
    config = model_config(params, "mocap", "vhp", dataset.x_shape, dataset.likelihood)
    set_determinism(0)
    model = build_model(config)
    ck = work / f"ck-{os.getpid()}.pt"
    result = fit(model, config, constraint_config(params, "mocap", train.n), train, params, 0, ck, progress=False,
                 stop_after_steps=steps)
    ck.unlink(missing_ok=True)
    return {
        "n_train": train.n,
        "train_mb": round(train.n * int(torch.tensor(dataset.x_shape).prod()) * 4 / 2**20, 1),
        "streamed": train.streamed,
        "memory_budget_mb": budget_mb,
        "steps": result.step,
        "rss_after_imports_mb": round(rss_imports, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_seconds": round(load_seconds, 2),
        "train_seconds": round(result.seconds, 2),
        "steps_per_second": round(result.step / result.seconds, 1),
    }


def read_speed(data: Path, batch_size: int, n_batches: int, window_chunks: int) -> dict:
    """Seconds per batch read from a streamed group: random rows vs rows from a window of chunks."""
    import numpy as np
    import torch

    from pipelines.train.data import TrainingData
    from preprocessing.store import open_dataset

    arr = open_dataset(data, check_values=False).train.x
    n, chunk = int(arr.shape[0]), int(arr.chunks[0])
    streamed = TrainingData(x=arr, n=n, binarise=False, data_id="bench", streamed=True)
    rng = np.random.default_rng(0)

    def chunk_window_permutation() -> np.ndarray:
        # windows of `window_chunks` consecutive chunks in random order; rows shuffled within a window
        width = chunk * window_chunks
        starts = rng.permutation(np.arange(0, n, width))
        return np.concatenate([start + rng.permutation(min(width, n - start)) for start in starts])

    out = {"rows_per_chunk": chunk, "n_chunks": -(-n // chunk), "window_chunks": window_chunks}
    for name, perm in (("random", rng.permutation(n)), ("chunk_window", chunk_window_permutation())):
        t0 = time.perf_counter()
        for b in range(n_batches):
            streamed.batch(torch.from_numpy(perm[b * batch_size:(b + 1) * batch_size]))
        out[f"{name}_seconds_per_batch"] = round((time.perf_counter() - t0) / n_batches, 4)
        out[f"{name}_chunks_per_batch"] = round(float(np.mean(
            [len(np.unique(perm[b * batch_size:(b + 1) * batch_size] // chunk)) for b in range(n_batches)])), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/vhp_bench_streaming", help="folder for the zarr groups")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--read-batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.child:
        print(json.dumps(child(Path(args.child), args.budget_mb, args.steps, args.batch_size, work)))
        return
    work.mkdir(parents=True, exist_ok=True)
    print(f"data: prepare_mocap of {describe(PREPARE_OVERRIDES)}; training: "
          f"{describe(train_overrides(args.batch_size))}, memory_budget_mb per mode {BUDGETS_MB}", flush=True)
    one, many = prepare_groups(work, args.repeat)
    settings = []
    for scale, path in (("1x", one), (f"{args.repeat}x", many)):
        for mode, budget in BUDGETS_MB.items():
            proc = subprocess.run([sys.executable, __file__, "--child", str(path), "--budget-mb", str(budget),
                                   "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                   "--work", str(work)],
                                  cwd=ROOT, capture_output=True, text=True, check=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = {"scale": scale, "mode": mode, **json.loads(proc.stdout.strip().splitlines()[-1])}
            settings.append(row)
            print(f"{scale:>4} {mode:<10} train {row['train_mb']:7.1f} MB  peak RSS {row['peak_rss_mb']:7.1f} MB "
                  f"(after imports {row['rss_after_imports_mb']:.0f}, after load {row['rss_after_load_mb']:.0f})  "
                  f"load {row['load_seconds']:5.2f} s  {row['steps_per_second']:6.1f} steps/s")
    reads = read_speed(many, args.batch_size, args.read_batches, window_chunks=2)
    print(f"reads from the {args.repeat}x group, batch {args.batch_size}: random rows "
          f"{reads['random_seconds_per_batch'] * 1e3:.1f} ms/batch ({reads['random_chunks_per_batch']} chunks), "
          f"chunk-window shuffle {reads['chunk_window_seconds_per_batch'] * 1e3:.1f} ms/batch "
          f"({reads['chunk_window_chunks_per_batch']} chunks)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "steps": args.steps, "batch_size": args.batch_size, "repeat": args.repeat, "torch_threads": 1,
        "settings": settings, "reads": reads,
        "overrides": {"prepare_mocap": PREPARE_OVERRIDES,
                      "train": jsonable(train_overrides(args.batch_size)), "memory_budget_mb": BUDGETS_MB},
    }, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
