"""Builders that several test modules share: a small zarr data set, the real params.yaml
shrunk to a run of a few steps (as a file or as the train record), and a ready training run.

Plain functions, imported by the test modules (`from builders import ...`); fixtures
that wrap them live in conftest.py.
"""

from __future__ import annotations

import dataclasses
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
