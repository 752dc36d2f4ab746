"""The retrain flow promotes only a better model and records every decision.

The pipeline command is a small script that writes a controlled metric, so the
flow's gate is tested against known better and worse challengers; the flow
itself runs under Prefect (``prefect_test_harness``).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipelines.retrain import hash_raw_data, is_better, load_params, read_metric, read_registry

FAKE_PIPELINE = textwrap.dedent(
    """
    import json, pathlib, sys
    root = pathlib.Path.cwd()
    value = (root / "next_metric.txt").read_text().strip()
    if value == "fail":
        print("stage train failed: simulated", file=sys.stderr)
        sys.exit(1)
    for kind in ("models", "eval"):
        (root / kind / "mocap" / "vhp").mkdir(parents=True, exist_ok=True)
    (root / "models/mocap/vhp/model.pt").write_text("weights for " + value)
    (root / "eval/mocap/vhp/metrics.json").write_text(json.dumps({"test_log_likelihood": float(value)}))
    """
)


def make_project(root: Path) -> Path:
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "trial.amc").write_text("1\nroot 0 0 0\n")
    (root / "pipeline.py").write_text(FAKE_PIPELINE)
    params = {
        "prepare_mocap": {"source": "raw"},
        "retrain": {
            "dataset": "mocap",
            "model": "vhp",
            "metric": "test_log_likelihood",
            "higher_is_better": True,
            "min_improvement": 0.5,
            "command": [sys.executable, "pipeline.py"],
            "raw_paths": [],
            "registry": "registry",
            "timeout_seconds": 120,
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_gate_rules():
    params = load_params_from({"min_improvement": 1.0})
    assert is_better(-90.0, None, params)
    assert is_better(-90.0, -92.0, params)
    assert not is_better(-91.5, -92.0, params)  # better, but not by the margin
    lower = load_params_from({"higher_is_better": False, "min_improvement": 0.0})
    assert is_better(1.0, 2.0, lower) and not is_better(2.0, 1.0, lower)


def load_params_from(overrides: dict):
    from pipelines.retrain import RetrainParams

    return RetrainParams(**overrides)


def test_read_metric_refuses_missing_and_non_finite(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"a": {"b": 2.5}, "nan": float("nan"), "s": "x"}))
    assert read_metric(path, "a.b") == 2.5
    assert read_metric(path, "nan") is None
    assert read_metric(path, "s") is None
    assert read_metric(path, "missing") is None
    assert read_metric(tmp_path / "absent.json", "a") is None


def test_raw_data_hash_changes_with_content(tmp_path):
    root = make_project(tmp_path / "p")
    params = load_params(root)
    before = hash_raw_data(root, params)
    assert "raw" in before
    (root / "raw" / "trial.amc").write_text("1\nroot 0 0 1\n")
    assert hash_raw_data(root, params)["raw"] != before["raw"]


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_promotes_only_better_models(tmp_path, harness):
    from pipelines.retrain import run_retrain_once

    root = make_project(tmp_path / "p")
    production = root / "registry" / "production" / "models" / "model.pt"

    def run(metric: str, force: bool = False) -> dict:
        (root / "next_metric.txt").write_text(metric)
        return run_retrain_once(root, force=force)

    def touch_raw(text: str) -> None:
        (root / "raw" / "trial.amc").write_text(text)

    first = run("-100.0")
    assert first["decision"] == "promoted"
    assert production.read_text() == "weights for -100.0"

    # unchanged raw data: nothing reruns
    assert run("-50.0")["decision"] == "unchanged"
    assert production.read_text() == "weights for -100.0"

    # new data, worse challenger: the champion stays
    touch_raw("2\n")
    worse = run("-101.0")
    assert worse["decision"] == "kept-champion"
    assert production.read_text() == "weights for -100.0"

    # better, but by less than min_improvement (0.5): kept
    touch_raw("3\n")
    assert run("-99.8")["decision"] == "kept-champion"

    # the pipeline fails: recorded, champion untouched
    touch_raw("4\n")
    failed = run("fail")
    assert failed["decision"] == "failed"
    assert "simulated" in failed["reason"]
    assert production.read_text() == "weights for -100.0"

    # better by the margin: promoted
    touch_raw("5\n")
    better = run("-98.0")
    assert better["decision"] == "promoted"
    assert production.read_text() == "weights for -98.0"

    registry = read_registry(root)
    assert [d["decision"] for d in registry["decisions"]] == [
        "promoted", "unchanged", "kept-champion", "kept-champion", "failed", "promoted",
    ]
    assert registry["champion"]["value"] == -98.0
    for decision in registry["decisions"]:
        assert decision["data_hashes"]["raw"]
        assert "revision" in decision


def test_a_held_lock_makes_a_duplicate_run_harmless(tmp_path, harness):
    from filelock import FileLock

    from pipelines.retrain import run_retrain_once

    root = make_project(tmp_path / "p")
    (root / "next_metric.txt").write_text("-10.0")
    (root / "registry").mkdir()
    with FileLock(str(root / "registry" / ".retrain.lock")):
        decision = run_retrain_once(root)
    assert decision["decision"] == "skipped"
    assert not (root / "registry" / "production").exists()
