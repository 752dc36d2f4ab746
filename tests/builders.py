"""Builders that several test modules share: a small zarr data set, the real params.yaml
shrunk to a run of a few steps (as a file or as the train record), and a ready training run.

Also the commands and projects that subprocess tests run: a torchrun of the trainer, a
git + DVC project for the retrain flow, and a Prefect server on 127.0.0.1.

Plain functions, imported by the test modules (`from builders import ...`); fixtures
that wrap them live in conftest.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ data and runs


def synthetic_group(path: Path, n_train: int = 96, n_test: int = 32, dim: int = 6, seed: int = 0) -> Path:
    """A small valid zarr group: points near a 1-D curve in `dim` dimensions."""
    from preprocessing.store import identity_normalisation, write_dataset

    rng = np.random.default_rng(seed)

    def points(n: int) -> np.ndarray:
        t = rng.uniform(0, 2 * np.pi, size=(n, 1))
        basis = np.concatenate([np.cos(t * k) for k in range(1, dim // 2 + 1)]
                               + [np.sin(t * k) for k in range(1, dim - dim // 2 + 1)], axis=1)
        return (basis + 0.05 * rng.standard_normal((n, dim))).astype(np.float32)

    arrays = {
        "train/x": points(n_train),
        "test/x": points(n_test),
        "train/label": rng.integers(0, 2, n_train).astype(np.int64),
        "test/label": rng.integers(0, 2, n_test).astype(np.int64),
    }
    attrs = {
        "dataset": "toy",
        "likelihood": "gaussian",
        "x_shape": [dim],
        "feature_names": [f"f{i}" for i in range(dim)],
        "units": "arbitrary",
        "normalisation": identity_normalisation(),
        "labels": {"label": {"kind": "categorical", "classes": ["a", "b"]}},
        "sources": [],
        "params": {"seed": seed},
        "stand_in": True,
    }
    write_dataset(path, arrays, attrs)
    return path


# ------------------------------------------------------------------ shrunk params

# The toy data set of synthetic_group, added beside the real data sets' entries.
TOY_ENTRIES = {"kappa": 0.2, "gaussian_std": 1.0, "network": "mlp"}
TINY_TRAIN = {"datasets": ["toy"], "models": ["vhp"], "epochs": 3, "batch_size": 16, "checkpoint_every": 4,
              "log_every": 2}
TINY_MODEL = {"hidden": [16], "prior_hidden": [16], "k_inner": 4, "k_iw": 3, "n_pseudo": 5}
TINY_FACES = {"n_identities": 2, "n_azimuth": 3, "n_elevation": 2, "n_light": 2}
TINY_EVALUATE = {"ll_samples": 16, "ll_inner_samples": 4, "ll_inner_samples_check": 8, "ll_points": 10,
                 "max_train_points": 100, "grid_size": 10, "mf_points": 40, "graph_nodes": 40, "graph_k": 4,
                 "interp_pairs": 2, "line_steps": 10, "segment_steps": 2, "n_frames": 4,
                 "n_reconstructions": 4, "n_samples": 4}


def shrunk_params(*, base: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                  **sections: dict[str, Any]) -> dict[str, Any]:
    """The real params.yaml shrunk to a run of a few steps on the toy data set, then changed.

    ``base`` and ``model`` (``train.model``) update those sections; every other keyword names a
    section (``train={...}``, ``evaluate={...}``) whose keys it replaces.
    """
    from pipelines.params import read_yaml

    raw = read_yaml(ROOT / "params.yaml")
    raw["base"].update({"threads": 1, **(base or {})})
    raw["prepare_faces"].update(TINY_FACES)
    raw["evaluate"].update(TINY_EVALUATE)
    train = raw["train"]
    train.update(TINY_TRAIN)
    for key, value in TOY_ENTRIES.items():
        train[key] = {**train[key], "toy": value}
    train["model"].update({**TINY_MODEL, **(model or {})})
    for name, changes in sections.items():
        if name not in raw:
            raise KeyError(f"params.yaml has no section {name!r}")
        raw[name].update(changes)
    return raw


def write_params(path: Path, **changes: Any) -> Path:
    """`shrunk_params(**changes)` written to `path` (the one writer of shrunk params files)."""
    path.write_text(yaml.safe_dump(shrunk_params(**changes)))
    return path


def tiny_params(**overrides: Any):
    """The train record of `shrunk_params()`, with some fields replaced."""
    from pipelines.params import TrainParams, section

    return dataclasses.replace(section(TrainParams, shrunk_params(), "train"), **overrides)


def make_run(tmp_path: Path, params, model_name: str = "vhp"):
    """(training data, model config, constraint config) of a run on a fresh toy data set."""
    from pipelines.train import flow
    from pipelines.train.data import load_training_data
    from preprocessing.store import open_dataset

    dataset = open_dataset(synthetic_group(tmp_path / "toy.zarr"))
    data = load_training_data(dataset, params)
    config = flow.model_config(params, "toy", model_name, dataset.x_shape, dataset.likelihood)
    ccfg = flow.constraint_config(params, "toy", data.n)
    return data, config, ccfg


def fresh_model(config, seed: int = 0):
    """The model of `config`, built after seeding every generator with `seed`."""
    from pipelines.runtime import set_determinism
    from vhp_core import build_model

    set_determinism(seed)
    return build_model(config)


# ------------------------------------------------------------------ the faces run of `dvc repro`, shrunk

# Two models on the procedural faces, a few steps each.
FACES_RUN = {"datasets": ["faces"], "models": ["vhp", "iwae"], "epochs": 2, "batch_size": 8, "checkpoint_every": 2,
             "log_every": 1}


def faces_params(path: Path) -> Path:
    """Shrunk params for the real pipeline on the procedural faces (`vhp prepare` ... `vhp report`)."""
    return write_params(path, train=FACES_RUN)


def expected_steps(data: Path | str, epochs: int = FACES_RUN["epochs"],
                   batch_size: int = FACES_RUN["batch_size"]) -> int:
    """Optimiser steps of the shrunk run: epochs x ceil(training rows / batch); val rows are not trained on."""
    from preprocessing.store import open_dataset

    dataset = open_dataset(data)
    assert dataset.val is not None and len(dataset.val) > 0, "the shrunk faces data set must hold a val split"
    return epochs * math.ceil(len(dataset.train) / batch_size)


# ------------------------------------------------------------------ data-parallel runs


def ddp_params(tmp_path: Path, **train: Any) -> str:
    """Shrunk params for the torchrun runs: kappa 0.9 (met early, so the prior trains), a curve row a step."""
    return str(write_params(tmp_path / "params.yaml", base={"seed": 0, "device": "cpu"},
                            train={"kappa": {"toy": 0.9}, "log_every": 1, **train}))


def torchrun_command(tmp_path: Path, common: list[str], out: str) -> list[str]:
    """`pipelines.distributed` under torchrun, 2 processes, into tmp_path/<out> and tmp_path/ck-<out>."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "pipelines.distributed", *common, "--out", str(tmp_path / out),
            "--checkpoints", str(tmp_path / f"ck-{out}")]


# ------------------------------------------------------------------ a DVC project for the retrain flow

# Its one stage writes a controlled metric, read from its params (fake.metric: a number, "none" or "fail").
RETRAIN_STAGE = textwrap.dedent(
    """
    import json, pathlib, sys, yaml
    root = pathlib.Path.cwd()
    value = yaml.safe_load((root / "params.yaml").read_text())["fake"]["metric"]
    raw = (root / "raw" / "trial.amc").read_text()
    if value == "fail":
        print("stage train failed: simulated", file=sys.stderr)
        sys.exit(1)
    for kind in ("models", "eval"):
        (root / kind / "mocap" / "vhp").mkdir(parents=True, exist_ok=True)
    (root / "models/mocap/vhp/model.pt").write_text(f"weights for {value} on {raw}")
    metrics = {} if value == "none" else {"test_log_likelihood": float(value)}
    (root / "eval/mocap/vhp/metrics.json").write_text(json.dumps(metrics))
    """
)

RETRAIN = {"dataset": "mocap", "model": "vhp", "metric": "test_log_likelihood", "higher_is_better": True,
           "min_improvement": 0.5, "command": ["dvc", "repro"], "registry": "registry", "timeout_seconds": 300}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def make_retrain_project(root: Path) -> Path:
    """A git + DVC repository whose one stage `train` runs RETRAIN_STAGE (metric -100.0), committed."""
    root.mkdir(parents=True)
    (root / "raw").mkdir()
    (root / "raw" / "trial.amc").write_text("1\nroot 0 0 0\n")
    (root / "stage.py").write_text(RETRAIN_STAGE)
    (root / "params.yaml").write_text(yaml.safe_dump({"fake": {"metric": "-100.0"}, "retrain": RETRAIN}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": f"{sys.executable} stage.py", "deps": ["stage.py", "raw"], "params": ["fake"],
        "outs": ["models/mocap/vhp", "eval/mocap/vhp"]}}}))
    (root / ".gitignore").write_text("/registry/\n")
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.org")
    git(root, "config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


# ------------------------------------------------------------------ a Prefect server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session), then SIGKILL it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def prefect_server_env(home: Path, port: int) -> dict[str, str]:
    """The environment of a Prefect server on 127.0.0.1:<port> keeping its database in `home`."""
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    })
    env.pop("PREFECT_API_URL", None)
    return env


def start_prefect_server(home: Path, log: Path, timeout: float = 150.0) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port of 127.0.0.1, in its own process group; returns it and its
    API URL once /api/health answers. The caller stops it with `stop`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env=prefect_server_env(home, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc, log, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


# ------------------------------------------------------------------ vhp_core configs from the real params.yaml


def real_train_params():
    """The train record of the real params.yaml, unchanged."""
    from pipelines.params import TrainParams, read_yaml, section

    return section(TrainParams, read_yaml(ROOT / "params.yaml"), "train")


def model_config(model: str = "vhp", x_shape: tuple[int, ...] = (6,), likelihood: str = "gaussian", *,
                 dataset: str = "mocap", **overrides: Any):
    """The ModelConfig that `vhp train` builds (``pipelines.train.flow.model_config``) for `model`
    on data of `x_shape` and `likelihood`, from the real params.yaml (``train.model`` and the
    entries of `dataset`), with some fields replaced.

    In fp32 unless `overrides` say otherwise: params' ``precision: auto`` means bf16 on a CPU
    that multiplies bf16 natively, and a test's numbers should not depend on the machine.
    """
    from pipelines.train import flow

    config = flow.model_config(real_train_params(), dataset, model, tuple(x_shape), likelihood, device="cpu")
    return dataclasses.replace(config, **{"precision": "fp32", **overrides})


def constraint_config(*, dataset: str = "mocap", n_train: int = 1000, **overrides: Any):
    """The ConstraintConfig that `vhp train` builds (``pipelines.train.flow.constraint_config``)
    for `dataset` with `n_train` training points, from the real params.yaml (``train.constraint``,
    kappa None for ``auto``, auto_max_steps a fraction of the run's steps), with some fields replaced."""
    from pipelines.train import flow

    return dataclasses.replace(flow.constraint_config(real_train_params(), dataset, n_train), **overrides)
