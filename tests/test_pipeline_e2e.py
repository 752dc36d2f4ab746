"""The real pipeline, end to end, on a few samples in a temporary folder.

The stage commands that dvc.yaml runs (`vhp prepare`, `vhp train`, `vhp evaluate`,
`vhp report`) are called in order with the real params.yaml shrunk to a few steps
(as lightning-hydra-template's conftest shrinks its config); the training stage
runs its Prefect flow under ``prefect_test_harness``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from pipelines.params import read_yaml

ROOT = Path(__file__).resolve().parents[1]


def shrunk_params(path: Path) -> Path:
    raw = read_yaml(ROOT / "params.yaml")
    raw["base"]["threads"] = 1
    raw["prepare_faces"].update({"n_identities": 2, "n_azimuth": 3, "n_elevation": 2, "n_light": 2})
    raw["train"].update({"datasets": ["faces"], "models": ["vhp", "iwae"], "epochs": 2, "batch_size": 8,
                         "checkpoint_every": 2, "log_every": 1})
    raw["train"]["model"].update({"hidden": [16], "prior_hidden": [16], "k_inner": 4, "k_iw": 3})
    raw["evaluate"].update({"ll_samples": 16, "ll_inner_samples": 4, "ll_inner_samples_check": 8, "ll_points": 10,
                            "max_train_points": 100,
                            "grid_size": 10, "mf_points": 40, "graph_nodes": 40, "graph_k": 4,
                            "interp_pairs": 2, "line_steps": 10, "segment_steps": 2, "n_frames": 4,
                            "n_reconstructions": 4, "n_samples": 4})
    path.write_text(yaml.safe_dump(raw))
    return path


def expected_steps(data: Path | str, epochs: int = 2, batch_size: int = 8) -> int:
    """Optimiser steps of the shrunk run: epochs x ceil(training rows / batch); val rows are not trained on."""
    from preprocessing.store import open_dataset

    dataset = open_dataset(data)
    assert dataset.val is not None and len(dataset.val) > 0, "the shrunk faces data set must hold a val split"
    return epochs * math.ceil(len(dataset.train) / batch_size)


@pytest.mark.slow
def test_prepare_train_evaluate_report(tmp_path, harness, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = str(shrunk_params(tmp_path / "params.yaml"))
    data = "data/processed/faces.zarr"
    assert main(["prepare", "faces", "--out", data, "--params", params, "--no-progress"]) == 0
    for model in ("vhp", "iwae"):
        assert main(["train", "--dataset", "faces", "--model", model, "--data", data,
                     "--out", f"models/faces/{model}", "--checkpoints", f"checkpoints/faces/{model}",
                     "--params", params, "--no-progress"]) == 0
        assert main(["evaluate", "--model-dir", f"models/faces/{model}", "--data", data,
                     "--out", f"eval/faces/{model}", "--params", params, "--no-progress"]) == 0
    assert main(["report", "--eval", "eval", "--models", "models", "--out", "report", "--params", params]) == 0

    for model in ("vhp", "iwae"):
        trained = json.loads(Path(f"models/faces/{model}/metrics.json").read_text())
        assert trained["steps"] == expected_steps(data)  # 2 epochs of ceil(training images / 8)
        evaluated = json.loads(Path(f"eval/faces/{model}/metrics.json").read_text())
        assert evaluated["ll_samples"] == 16 and evaluated["stand_in_data"] is True
        assert evaluated["test_log_likelihood"] == pytest.approx(evaluated["test_log_likelihood"])  # finite
        assert trained["prior_active"] and trained["kappa_mode"] == "auto"
        assert Path(f"eval/faces/{model}/latent_map.png").stat().st_size > 0
    page = Path("report/index.html").read_text()
    assert "Stand-in data" in page and "vhp vs iwae" in page
    summary = json.loads(Path("report/metrics.json").read_text())
    assert set(summary["faces"]) == {"vhp", "iwae"}
    assert sorted(p.suffix for p in Path("report/plots").iterdir()) == [".png"] * len(list(Path("report/plots").iterdir()))
    assert "vega" in Path("report/plots_template.html").read_text()
