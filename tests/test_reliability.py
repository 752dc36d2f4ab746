"""Reliability: survive SIGKILL, stop on non-finite runs, one run per model, bad input refused early.

Kills during a checkpoint save are injected at chosen points of the writer in
tests/test_checkpoint_faults.py.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from builders import fresh_model, make_run, synthetic_group, tiny_params, write_params
from pipelines.checkpoint import load_payload
from pipelines.cli import main
from pipelines.errors import NonFiniteTrainingError
from pipelines.train.fit import fit

VHP = str(Path(sys.executable).parent / "vhp")


def long_run_params(path: Path, **train) -> Path:
    """Shrunk params for a `vhp train` long enough (30 epochs) to be killed between checkpoints."""
    return write_params(path, base={"seed": 11}, model={"hidden": [32], "prior_hidden": [32]},
                        train={"epochs": 30, "checkpoint_every": 10, "log_every": 5, **train})


def train_cmd(tmp: Path, out: str, params: Path) -> list[str]:
    return [VHP, "train", "--dataset", "toy", "--model", "vhp", "--data", str(tmp / "toy.zarr"),
            "--out", str(tmp / out), "--checkpoints", str(tmp / f"ck-{out}"), "--params", str(params),
            "--no-progress"]


@pytest.mark.slow  # three `vhp train` processes (25 s); in-process resume: test_validation.py, test_core_training.py
def test_sigkilled_training_resumes_and_ends_like_an_uninterrupted_run(tmp_path, flow_env):
    synthetic_group(tmp_path / "toy.zarr", n_train=192)
    params = long_run_params(tmp_path / "params.yaml")
    env = flow_env  # the shared Prefect server

    subprocess.run(train_cmd(tmp_path, "reference", params), env=env, check=True, capture_output=True,
                   timeout=300)

    # start, wait until at least two checkpoints exist, then SIGKILL at a random moment
    ck = tmp_path / "ck-killed" / "checkpoint.pt"
    proc = subprocess.Popen(train_cmd(tmp_path, "killed", params), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if ck.exists():
            step = load_payload(ck)["step"]  # replaced atomically: a torn read is a failure, never retried
            if step >= 20:
                time.sleep(random.Random(0).uniform(0.0, 0.3))
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.02)
    proc.wait(timeout=30)
    if killed_at is None:
        pytest.fail("training finished before it could be killed; make the run longer")
    assert not (tmp_path / "killed" / "metrics.json").exists()
    saved = load_payload(ck)  # the checkpoint the kill left behind is complete
    assert saved["step"] >= killed_at

    done = subprocess.run(train_cmd(tmp_path, "killed", params), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    timing = yaml.safe_load((tmp_path / "killed" / "timing.json").read_text())
    assert timing["resumed_from_step"] == saved["step"] > 0
    assert (tmp_path / "killed" / "metrics.json").read_bytes() == (tmp_path / "reference" / "metrics.json").read_bytes()
    a = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_steps_are_skipped_then_training_stops_with_the_checkpoint_intact(tmp_path):
    params = tiny_params(max_nonfinite=5, checkpoint_every=4)
    data, config, ccfg = make_run(tmp_path, params)
    ck = tmp_path / "ck.pt"
    fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, stop_after_steps=8)
    good = load_payload(ck)
    assert good["step"] == 8

    poisoned = dataclasses.replace(data, x=torch.full_like(data.x, float("nan")))
    with pytest.raises(NonFiniteTrainingError, match="5 non-finite"):
        fit(fresh_model(config), config, ccfg, poisoned, params, 0, ck, progress=False)
    after = load_payload(ck)
    assert after["step"] == 8
    assert all(torch.equal(after["state_dict"][k], good["state_dict"][k]) for k in good["state_dict"])


def test_isolated_non_finite_batches_are_counted_and_skipped(tmp_path):
    params = tiny_params(epochs=2, max_nonfinite=3)
    data, config, ccfg = make_run(tmp_path, params)
    x = data.x.clone()
    x[0] = float("nan")  # one poisoned row: its batch is skipped once an epoch
    result = fit(fresh_model(config), config, ccfg, dataclasses.replace(data, x=x), params, 0,
                 tmp_path / "ck.pt", progress=False)
    assert result.skipped_steps == 2
    assert result.step == 2 * 6 - 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("train", "kappa", {"toy": -1.0}, "kappa.toy must be 'auto' or a number > 0"),
        ("train", "batch_size", -8, "train: batch_size must be positive"),
        ("train", "no_such_key", 1, "train.no_such_key"),
        ("base", "threads", -1, "threads must be >= 0"),
    ],
)
def test_cli_refuses_bad_params_naming_the_key(tmp_path, capsys, section, key, value, expected):
    synthetic_group(tmp_path / "toy.zarr")
    params = write_params(tmp_path / "params.yaml", **{section: {key: value}})
    code = main(train_cmd(tmp_path, "m", params)[1:])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and "params.yaml" in err
    assert not (tmp_path / "m").exists()


def test_training_refuses_a_broken_zarr_group_before_writing_anything(tmp_path, capsys):
    synthetic_group(tmp_path / "toy.zarr")
    (tmp_path / "toy.zarr" / "train" / "x" / "zarr.json").unlink()
    params = write_params(tmp_path / "params.yaml")
    before = set(tmp_path.iterdir())
    code = main(train_cmd(tmp_path, "m", params)[1:])
    assert code == 2
    err = capsys.readouterr().err
    assert "toy.zarr" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # neither the model folder nor the checkpoint folder (nor its lock or PID file) was created
    assert set(tmp_path.iterdir()) == before

    # the data are checked before the run lock is even tried: with the lock held elsewhere, the
    # refusal is still about the data
    from filelock import FileLock

    (tmp_path / "ck-m").mkdir()
    with FileLock(str(tmp_path / "ck-m" / ".train.lock")):
        assert main(train_cmd(tmp_path, "m", params)[1:]) == 2
    err = capsys.readouterr().err
    assert "toy.zarr" in err and "another training run" not in err


def test_the_run_lock_refuses_a_second_holder_naming_the_first_and_dies_with_it(tmp_path):
    from pipelines.errors import RunLockedError
    from pipelines.runtime import run_lock

    folder = tmp_path / "ck"
    with run_lock(folder):
        assert (folder / ".train.pid").read_text() == str(os.getpid())
        with pytest.raises(RunLockedError, match=rf"another training run \(pid {os.getpid()}\) is writing here"):
            with run_lock(folder):
                pass
    assert not folder.exists()  # released: lock, pid note and the folder it made are gone
    with run_lock(folder):  # and a new run takes it
        pass


@pytest.mark.slow  # three `vhp train` processes (16 s); the lock itself: the test above
def test_a_second_training_of_the_same_model_is_refused_naming_the_first_ones_pid(tmp_path, flow_env):
    """Two real `vhp train` processes for the same data set and model (the same checkpoint folder)."""
    synthetic_group(tmp_path / "toy.zarr", n_train=192)
    params = long_run_params(tmp_path / "params.yaml", epochs=20000)  # far longer than the test: it is killed
    env = flow_env
    first = subprocess.Popen(train_cmd(tmp_path, "a", params), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pid_file = tmp_path / "ck-a" / ".train.pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.1)
        cmd = train_cmd(tmp_path, "b", params)
        cmd[cmd.index("--checkpoints") + 1] = str(tmp_path / "ck-a")  # the same run folder
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"another training run (pid {first.pid}) is writing here" in second.stderr
        assert "Traceback" not in second.stderr
        assert not (tmp_path / "b").exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # the lock dies with its holder: a new run can take it
    done = subprocess.run(train_cmd(tmp_path, "a", long_run_params(tmp_path / "short.yaml", epochs=1)), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "ck-a" / ".train.pid").exists()


def test_prepare_refuses_a_malformed_amc_with_exit_2_and_no_output(tmp_path, capsys, cmu_reference):
    src = tmp_path / "raw" / "07"
    src.mkdir(parents=True)
    asf = cmu_reference / "07" / "07.asf"
    (src / "07.asf").write_bytes(asf.read_bytes())
    (src / "07_01.amc").write_text(":FULLY-SPECIFIED\n:DEGREES\n1\nroot 0 0 0 0 0 0\nlowerback 1 2\n")
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "mocap.zarr"
    code = main(["prepare", "mocap", "--source", str(tmp_path / "raw"), "--out", str(out),
                 "--params", str(params), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "07_01.amc" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mocap.zarr")]
