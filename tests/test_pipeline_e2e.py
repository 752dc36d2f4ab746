"""The real pipeline, end to end, on a few samples in a temporary folder.

The stage commands that dvc.yaml runs (`vhp prepare`, `vhp train`, `vhp evaluate`,
`vhp report`) are called in order with the real params.yaml shrunk to a few steps
(as lightning-hydra-template's conftest shrinks its config); the training stage
runs its Prefect flow under ``prefect_test_harness``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders import expected_steps, faces_params
from pipelines.cli import main


@pytest.mark.slow
def test_prepare_train_evaluate_report(tmp_path, harness, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = str(faces_params(tmp_path / "params.yaml"))
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
