"""The retrain flow asks DVC what changed, reruns it, and promotes only a better model.

The project under test is a real git + DVC repository in a temporary folder whose one
stage writes a controlled metric (read from its params), so `dvc status` and
`dvc repro` run for real and the flow's gate meets known better, worse, failed and
metric-less challengers. The flow itself runs under Prefect's test harness.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from builders import RETRAIN, make_retrain_project
from pipelines.params import RetrainParams
from pipelines.retrain.flow import decide, pipeline_changes, read_metric, read_registry


def params(**overrides) -> RetrainParams:
    return RetrainParams(**{**RETRAIN, **overrides})


def set_metric(root: Path, value: str) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["fake"]["metric"] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def test_decide_is_the_champion_challenger_rule():
    p = params(min_improvement=1.0)
    assert decide(-90.0, None, p)[0] == "promoted"
    assert decide(-90.0, -92.0, p)[0] == "promoted"
    assert decide(-91.5, -92.0, p)[0] == "kept-champion"  # better, but not by the margin
    assert decide(None, -92.0, p)[0] == "rejected"
    assert decide(None, None, p)[0] == "rejected"  # no metric never becomes a champion
    lower = params(higher_is_better=False, min_improvement=0.0)
    assert decide(1.0, 2.0, lower)[0] == "promoted" and decide(2.0, 1.0, lower)[0] == "kept-champion"


def test_read_metric_refuses_missing_and_non_finite(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"a": {"b": 2.5}, "nan": float("nan"), "s": "x"}))
    assert read_metric(path, "a.b") == 2.5
    assert read_metric(path, "nan") is None
    assert read_metric(path, "s") is None
    assert read_metric(path, "missing") is None
    assert read_metric(tmp_path / "absent.json", "a") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed for a DVC project")
def test_promotes_only_better_models_asking_dvc_what_changed(tmp_path, harness, monkeypatch):
    from pipelines.retrain.flow import run_retrain_once

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    root = make_retrain_project(tmp_path / "p")
    production = root / "registry" / "production" / "models" / "model.pt"
    assert pipeline_changes(root)  # nothing has run yet: DVC says the stage is new

    first = run_retrain_once(root)
    assert first["decision"] == "promoted"
    assert production.read_text().startswith("weights for -100.0")
    assert pipeline_changes(root) == {}

    # nothing changed (DVC says so): nothing reruns
    set_metric(root, "-100.0")
    assert run_retrain_once(root)["decision"] == "unchanged"

    # a params change, worse challenger: the champion stays
    set_metric(root, "-101.0")
    worse = run_retrain_once(root)
    assert worse["decision"] == "kept-champion" and worse["changed_stages"] == ["train"]
    assert production.read_text().startswith("weights for -100.0")

    # new raw data, but the challenger has no metric at all: rejected, champion untouched
    (root / "raw" / "trial.amc").write_text("2\n")
    set_metric(root, "none")
    rejected = run_retrain_once(root)
    assert rejected["decision"] == "rejected" and "no finite test_log_likelihood" in rejected["reason"]
    assert production.read_text().startswith("weights for -100.0")

    # better, but by less than min_improvement (0.5): kept
    set_metric(root, "-99.8")
    assert run_retrain_once(root)["decision"] == "kept-champion"

    # the pipeline fails: recorded, champion untouched
    set_metric(root, "fail")
    failed = run_retrain_once(root)
    assert failed["decision"] == "failed" and "simulated" in failed["reason"]
    assert production.read_text().startswith("weights for -100.0")

    # better by the margin: promoted
    set_metric(root, "-98.0")
    better = run_retrain_once(root)
    assert better["decision"] == "promoted"
    assert production.read_text().startswith("weights for -98.0")

    registry = read_registry(root)
    assert [d["decision"] for d in registry["decisions"]] == [
        "promoted", "unchanged", "kept-champion", "rejected", "kept-champion", "failed", "promoted",
    ]
    assert registry["champion"]["value"] == -98.0
    assert all("revision" in d for d in registry["decisions"])


def test_a_held_lock_makes_a_duplicate_run_harmless(tmp_path, harness):
    from filelock import FileLock

    from pipelines.retrain.flow import run_retrain_once

    root = tmp_path / "p"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"retrain": RETRAIN}))
    (root / "registry").mkdir()
    with FileLock(str(root / "registry" / ".retrain.lock")):
        decision = run_retrain_once(root)
    assert decision["decision"] == "skipped"
    assert not (root / "registry" / "production").exists()
