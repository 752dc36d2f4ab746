"""The claims run's setting: its rows, data sets, budgets, and its params from params.yaml with stated overrides.

Every record here comes from params.yaml through the pipeline's strict reader, with the
overrides the claims run needs (one data set, a fixed number of optimiser steps, the row's
constraint variant, the evaluation's sizes) written as dotted keys and stored in claims.json.
A data set the run adds (cmu, cmu09) takes the per-data-set entries (kappa, gaussian_std,
network) of its kind (mocap); where params.yaml lacks that entry the run refuses, naming
the key, as the strict reader does.

Used by bench/claims.py and bench/heldout_gap.py (which reads the claims run's folders).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _params import PARAMS, apply_overrides

HELD_OUT_SUBJECT = "09"
# row label -> (model, train.constraint overrides)
ROWS = {
    "vhp": ("vhp", {}),
    "iwae": ("iwae", {}),
    "iwae (warm-up)": ("iwae", {"variant": "warmup"}),
    "vhp (no warm-up)": ("vhp", {"variant": "elbo"}),
    "vhp-iw": ("vhp-iw", {}),
}
# data set -> (optimiser steps per run, training rows used (0 = all), test points in the log-likelihood)
BUDGETS = {"cmu": (1000, 0, 100), "cmu09": (1000, 0, 100), "faces": (400, 0, 100),
           "fashion_mnist": (1000, 10000, 100)}
QUICK = {"cmu": (120, 0, 16), "cmu09": (120, 0, 16), "faces": (60, 0, 16), "fashion_mnist": (120, 2000, 16)}
SEEDS = (0, 1, 2)
DESCRIPTIONS = {
    "cmu": "Shared CMU set without subject 09 (whole trials as split units, 30 fps)",
    "cmu09": "CMU subject 09 alone, held out of every choice of defaults (whole trials as split units)",
    "faces": "Surrey Face Model renders, 6 identities x 13 azimuths x 3 elevations x 3 lights",
    "fashion_mnist": "Dynamically binarised Fashion-MNIST, a training subset, the fixed binarised test set",
}
KIND = {"cmu": "mocap", "cmu09": "mocap", "faces": "faces", "fashion_mnist": "fashion_mnist"}
TABLES = ("kappa", "gaussian_std", "network")  # train's per-data-set entries


def read_params(path: Path | str = PARAMS) -> dict[str, Any]:
    from pipelines.params import read_yaml

    return read_yaml(path)


def train_overrides(name: str, n_train: int, steps: int, rows: int, constraint: dict[str, Any],
                    path: Path | str = PARAMS) -> dict[str, Any]:
    """The dotted train overrides of one row on one data set at a fixed number of optimiser steps."""
    t = read_params(path)["train"]
    batches = math.ceil((min(n_train, rows) if rows else n_train) / t["batch_size"])
    out: dict[str, Any] = {"datasets": [name], "models": ["vhp"], "epochs": max(1, math.ceil(steps / batches)),
                           "max_train_samples": rows, "checkpoint_every": 10**9, "log_every": 20}
    like = KIND[name]
    for table in TABLES:
        entries = t.get(table)
        if not isinstance(entries, dict) or like not in entries:
            raise SystemExit(f"{path}: train.{table}.{like}: missing key (bench/claims.py runs {name} with it)")
        if like != name:
            out[f"{table}.{name}"] = entries[like]
    out.update({f"constraint.{k}": v for k, v in constraint.items()})
    return out


def train_params(name: str, n_train: int, steps: int, rows: int, constraint: dict[str, Any],
                 path: Path | str = PARAMS):
    """params.yaml's train section for one data set at a fixed number of optimiser steps."""
    from pipelines.params import TrainParams, section

    overrides = train_overrides(name, n_train, steps, rows, constraint, path)
    return section(TrainParams, apply_overrides(read_params(path), "train", overrides, path), "train", path)


def evaluate_overrides(points: int, quick: bool) -> dict[str, Any]:
    return {"ll_samples": 32 if quick else 1000, "ll_inner_samples": 16,
            "ll_inner_samples_check": 32 if quick else 128, "ll_points": points,
            "grid_size": 20 if quick else 60, "graph_nodes": 200 if quick else 1500,
            "interp_pairs": 3 if quick else 10, "mf_points": 100 if quick else 1000,
            "max_train_points": 1000 if quick else 10000}


def evaluate_params(points: int, quick: bool, path: Path | str = PARAMS):
    from pipelines.params import EvaluateParams, section

    raw = apply_overrides(read_params(path), "evaluate", evaluate_overrides(points, quick), path)
    return section(EvaluateParams, raw, "evaluate", path)


def base_params(path: Path | str = PARAMS):
    """params.yaml's base section (seed, threads, device), as every stage reads it."""
    from pipelines.params import BaseParams, section

    return section(BaseParams, read_params(path), "base", path)


def sweep_overrides(name: str, label: str, seeds: tuple[int, ...], out: Path) -> dict[str, Any]:
    """The sweep of one row: one data set, kappa auto, the row's model, every seed, one local worker."""
    return {"datasets": [name], "kappa": ["auto"], "models": [ROWS[label][0]], "seeds": list(seeds),
            "task_runner": "local", "n_workers": 1, "out": str(out), "epochs": None}  # None: train.epochs


def row_sweep(name: str, label: str, seeds: tuple[int, ...], out: Path, path: Path | str = PARAMS):
    from pipelines.params import SweepParams, section

    raw = apply_overrides(read_params(path), "sweep", sweep_overrides(name, label, seeds, out), path)
    return section(SweepParams, raw, "sweep", path)


def row_folder(work: Path, name: str, label: str) -> Path:
    """Where the claims run keeps one row's sweep on one data set."""
    return Path(work) / "runs" / name / f"row{list(ROWS).index(label)}"
