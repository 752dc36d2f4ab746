"""What `dvc status` says after an edit: a change to a stage's code reruns that stage and what
follows it, never a stage that does not import the code (a figure's colour never retrains a model).

The project's code, dvc.yaml and params.yaml are copied into a fresh DVC project; every
stage's outputs are stood in by a small file and recorded with `dvc commit`, so the lock
holds the real hashes of every dep. Then one file is edited and `dvc status` is asked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = subprocess.run([*DVC, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"dvc {' '.join(args)}: {run.stdout[-1500:]}{run.stderr[-1500:]}"
    return run.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A DVC project with the pipeline's code and a lock up to date with it."""
    project = tmp_path_factory.mktemp("dvc_status")
    for package in ("pipelines", "vhp_core", "preprocessing"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, project / name)
    dvc(project, "init", "--no-scm", "-q")
    listing = subprocess.run(
        [sys.executable, "-c", "import json; from dvc.repo import Repo\n"
         "r = Repo('.')\n"
         "print(json.dumps([str(o.fs_path) for s in r.index.stages for o in s.outs]))"],
        cwd=project, capture_output=True, text=True, timeout=300, check=True)
    for out in json.loads(listing.stdout.strip().splitlines()[-1]):
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)  # every out of this pipeline is a folder
        (path / "stand-in").write_text(path.name)
    dvc(project, "commit", "-f", "-q")
    assert stale_stages(project) == set(), "the lock should be up to date before any edit"
    return project


def stale_stages(project: Path) -> set[str]:
    return set(json.loads(dvc(project, "status", "--json") or "{}"))


def stale_after_edit(project: Path, file: str) -> set[str]:
    path = project / file
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        return stale_stages(project)
    finally:
        path.write_text(original)


def kinds(stages: set[str]) -> set[str]:
    return {name.split("@")[0] for name in stages}


def test_an_edit_to_evaluation_figures_never_retrains(project):
    # DVC lists the stages whose own deps changed; the report follows once evaluate's outputs do
    stale = stale_after_edit(project, "pipelines/evaluate/figures.py")
    assert "evaluate" in kinds(stale) and kinds(stale) <= {"evaluate", "report"}, sorted(stale)


def test_an_edit_to_the_report_reruns_the_report_only(project):
    assert stale_after_edit(project, "pipelines/report/build.py") == {"report"}


def test_an_edit_to_the_model_code_retrains(project):
    # ... and never reruns the report by itself: it reads files and imports no model code
    stale = stale_after_edit(project, "vhp_core/models.py")
    assert {"train", "evaluate"} <= kinds(stale), sorted(stale)
    assert not kinds(stale) & {"fetch_embedded", "prepare_mocap", "report"}, sorted(stale)


def test_an_edit_to_a_parser_reprepares_only_what_reads_it(project):
    # How motions are read, labelled and split is prepare_mocap's alone: evaluation draws its stick
    # figures from the stored skeleton (preprocessing.poses, preprocessing.skeletons), so it does not rerun.
    for reader in ("preprocessing/bvh.py", "preprocessing/amass.py", "preprocessing/mocap.py",
                   "preprocessing/mocap_sources.py"):
        assert stale_after_edit(project, reader) == {"prepare_mocap"}, reader
    # the skeletons' kinematics are read by both, never by training
    stale = stale_after_edit(project, "preprocessing/skeletons.py")
    assert {"prepare_mocap", "evaluate"} <= kinds(stale) and "train" not in kinds(stale), sorted(stale)
