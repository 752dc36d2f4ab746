"""Every CLI failure ends in one line naming the file, key or model and the problem, exit status 2.

The training cases run the real `vhp` command in a subprocess, so what Prefect prints
to the terminal is what a user sees: its traceback of our expected errors is kept off
the terminal (it stays in Prefect's run logs), and `--debug` shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from builders import synthetic_group, write_params
from pipelines.cli import main
from pipelines.params import read_yaml
from test_preprocessing_faces import write_mesh_folder

VHP = str(Path(sys.executable).parent / "vhp")


def toy_params(path: Path, **train) -> Path:
    return write_params(path, train={"epochs": 2, "log_every": 1, **train})


def vhp(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([VHP, *args], env=env, capture_output=True, text=True, timeout=300)


def one_line(stderr: str) -> str:
    """The one line of our error; Prefect's own INFO lines may surround it, but no report of the error."""
    assert "Traceback" not in stderr and "| ERROR" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("vhp ")]
    assert len(lines) == 1, stderr[-3000:]
    message = lines[0].split(": error: ", 1)[1]
    assert sum(message[:40] in line for line in stderr.splitlines()) == 1, stderr[-3000:]
    return lines[0]


def test_require_constraint_fails_the_run_in_one_line_and_writes_nothing(tmp_path, flow_env):
    synthetic_group(tmp_path / "toy.zarr")
    # kappa far below any reachable reconstruction error: the constraint is never met
    params = toy_params(tmp_path / "params.yaml", kappa={"toy": 1e-4}, require_constraint=True)
    args = ["train", "--dataset", "toy", "--model", "vhp", "--data", str(tmp_path / "toy.zarr"),
            "--out", str(tmp_path / "m"), "--checkpoints", str(tmp_path / "ck"), "--params", str(params),
            "--no-progress"]
    result = vhp(args, flow_env)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("vhp train: error: vhp on toy: the constraint was never met")
    assert "use kappa: auto or raise kappa" in line and "nothing written" in line
    assert not (tmp_path / "m").exists()

    debug = vhp(["--debug", *args], flow_env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConstraintNotMetError" in debug.stderr


def test_an_unmet_constraint_is_said_in_words_when_not_required(tmp_path, flow_env):
    synthetic_group(tmp_path / "toy.zarr")
    params = toy_params(tmp_path / "params.yaml", kappa={"toy": 1e-4})
    result = vhp(["train", "--dataset", "toy", "--model", "vhp", "--data", str(tmp_path / "toy.zarr"),
                  "--out", str(tmp_path / "m"), "--checkpoints", str(tmp_path / "ck"), "--params", str(params),
                  "--no-progress"], flow_env)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["constraint_met"] is False and metrics["prior_activation_step"] is None
    assert "is below the best reconstruction error reached" in metrics["constraint_warning"]
    assert "the constraint was never met" in result.stderr + result.stdout  # the training log says so


def test_evaluating_a_model_on_another_data_set_is_one_line(tmp_path, capsys, harness):
    from pipelines.params import BaseParams, TrainParams, section
    from pipelines.train.flow import run_training

    synthetic_group(tmp_path / "toy.zarr", dim=6)
    synthetic_group(tmp_path / "other.zarr", dim=8)
    params = toy_params(tmp_path / "params.yaml")
    raw = read_yaml(params)
    run_training("toy", "vhp", tmp_path / "toy.zarr", tmp_path / "m", tmp_path / "ck",
                 section(TrainParams, raw, "train"), section(BaseParams, raw, "base"), progress=False)
    code = main(["evaluate", "--model-dir", str(tmp_path / "m"), "--data", str(tmp_path / "other.zarr"),
                 "--out", str(tmp_path / "e"), "--params", str(params), "--no-progress"])
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert str(tmp_path / "m") in line and "(6,)" in line and "(8,)" in line
    assert not (tmp_path / "e").exists()


def test_prepare_faces_source_takes_a_folder_of_meshes(tmp_path, capsys):
    folder = write_mesh_folder(tmp_path / "meshes", 2)
    params = write_params(tmp_path / "params.yaml",
                          prepare_faces={"n_identities": 0, "n_azimuth": 2, "n_elevation": 1, "n_light": 2})
    out = tmp_path / "faces.zarr"
    assert main(["prepare", "faces", "--source", str(folder), "--out", str(out), "--params", str(params),
                 "--no-progress"]) == 0
    from preprocessing.store import open_dataset

    assert open_dataset(out).attrs["labels"]["identity"]["classes"] == ["person0", "person1"]

    code = main(["prepare", "faces", "--source", str(tmp_path / "absent"), "--out", str(tmp_path / "x.zarr"),
                 "--params", str(params), "--no-progress"])
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert str(tmp_path / "absent") in line and "--source" in line
    assert not (tmp_path / "x.zarr").exists()
