"""The main job itself: the real `dvc repro` in a temporary copy of the project with shrunk params.

Checks dvc.yaml's wiring (cmd, deps, outs, params, metrics): the outputs appear where
the README says, a second `dvc repro` is a no-op, and a change of a `train.*` key
makes `dvc status` name only the train stages and `dvc repro` rerun only the train,
evaluate and report stages (never the preprocessing). The
copy keeps to the faces data set (the procedural stand-in head), so nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builders import ROOT, expected_steps, faces_params
from pipelines.params import read_yaml

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def project_copy(dest: Path) -> Path:
    """The tracked files of the working tree (what a clone holds), as a fresh git + DVC repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    faces_params(dest / "params.yaml")
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed for a DVC project")
def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_changed(tmp_path):
    project = project_copy(tmp_path / "project")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(tmp_path / "prefect"),
           "DVC_NO_ANALYTICS": "1"}
    dvc = [str(BIN / "dvc")]

    run([*dvc, "repro", "report"], project, env)
    for model in ("vhp", "iwae"):
        trained = json.loads((project / "models" / "faces" / model / "metrics.json").read_text())
        assert trained["steps"] == expected_steps(project / "data" / "processed" / "faces.zarr")
        assert trained["prior_active"]
        assert trained["constraint_met"] is (None if model == "iwae" else True)  # iwae has no constraint
        assert (project / "eval" / "faces" / model / "latent_map.png").stat().st_size > 0
        assert "seconds" not in json.loads((project / "eval" / "faces" / model / "metrics.json").read_text())
    assert (project / "report" / "index.html").is_file()
    metrics = json.loads((project / "report" / "metrics.json").read_text())
    assert set(metrics["faces"]) == {"vhp", "iwae"}
    assert (project / "dvc.lock").is_file()
    assert not (project / "checkpoints" / "faces" / "vhp" / "checkpoint.pt").exists()

    # a second run is a no-op, and DVC's metric shows no difference
    second = run([*dvc, "repro", "report"], project, env)
    assert "Running stage" not in second
    assert run([*dvc, "status", "--with-deps", "report"], project, env).strip().endswith(
        "Data and pipelines are up to date.")
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "first run"], project, env)

    # a train.* change reruns train, evaluate and report, never the preprocessing
    raw = read_yaml(project / "params.yaml")
    raw["train"]["lr"] = 0.002
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    status = run([*dvc, "status", "--json", "--with-deps", "report"], project, env)
    changed = set(json.loads(status[status.index("{"):]))
    assert changed == {"train@faces-vhp", "train@faces-iwae"}
    rerun = run([*dvc, "repro", "report"], project, env)
    stages = {line.split("'")[1] for line in rerun.splitlines() if line.startswith("Running stage")}
    assert stages == {"train@faces-vhp", "train@faces-iwae", "evaluate@faces-vhp", "evaluate@faces-iwae",
                      "report"}
