"""Reliability: survive SIGKILL, never half-write a checkpoint, stop on non-finite runs."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.checkpoint import atomic_torch_save, load_payload
from pipelines.cli import main
from pipelines.params import read_yaml
from pipelines.train import NonFiniteTrainingError, fit
from test_train_flow import fresh_model, make_run, synthetic_group, tiny_params

ROOT = Path(__file__).resolve().parents[1]
VHP = str(Path(sys.executable).parent / "vhp")


def write_params(path: Path, **train_overrides) -> Path:
    raw = read_yaml(ROOT / "params.yaml")
    raw["base"].update({"seed": 11, "threads": 1})
    raw["train"].update({"datasets": ["toy"], "models": ["vhp"], "epochs": 30, "batch_size": 16,
                         "checkpoint_every": 10, "log_every": 5, "kappa": {"toy": 0.2}})
    raw["train"]["model"].update({"hidden": [32], "prior_hidden": [32], "k_inner": 4})
    raw["train"].update(train_overrides)
    path.write_text(yaml.safe_dump(raw))
    return path


def train_cmd(tmp: Path, out: str, params: Path) -> list[str]:
    return [VHP, "train", "--dataset", "toy", "--model", "vhp", "--data", str(tmp / "toy.zarr"),
            "--out", str(tmp / out), "--checkpoints", str(tmp / f"ck-{out}"), "--params", str(params),
            "--no-progress"]


def run_env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, PREFECT_HOME=str(tmp / "prefect-home"))


def test_sigkilled_training_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    synthetic_group(tmp_path / "toy.zarr", n_train=192)
    params = write_params(tmp_path / "params.yaml")
    env = run_env(tmp_path)

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
            try:
                step = load_payload(ck)["step"]
            except Exception:  # noqa: BLE001 - a checkpoint is replaced atomically; retry
                step = 0
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


SAVER = textwrap.dedent(
    """
    import sys, torch
    from pipelines.checkpoint import atomic_torch_save
    big = {"config": {}, "state_dict": {"w": torch.randn(4_000_000)}}
    print("ready", flush=True)
    while True:
        atomic_torch_save(sys.argv[1], big)
    """
)


def test_a_kill_during_a_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save(path, {"config": {"tag": "previous"}, "state_dict": {"w": torch.zeros(3)}})
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    rng = random.Random(1)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                cwd=ROOT, start_new_session=True)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        payload = load_payload(path)  # previous or new, never torn
        assert payload["config"] in ({"tag": "previous"}, {})
        if payload["config"] == {}:
            assert payload["state_dict"]["w"].shape == (4_000_000,)


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
        ("train", "kappa", {"toy": -1.0}, "kappa.toy must be > 0"),
        ("train", "batch_size", -8, "train: batch_size must be positive"),
        ("train", "no_such_key", 1, "train.no_such_key"),
        ("base", "threads", -1, "threads must be >= 0"),
    ],
)
def test_cli_refuses_bad_params_naming_the_key(tmp_path, capsys, section, key, value, expected):
    synthetic_group(tmp_path / "toy.zarr")
    params = write_params(tmp_path / "params.yaml")
    raw = read_yaml(params)
    raw[section][key] = value
    params.write_text(yaml.safe_dump(raw))
    code = main(train_cmd(tmp_path, "m", params)[1:])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and "params.yaml" in err
    assert not (tmp_path / "m").exists()


def test_training_refuses_a_broken_zarr_group(tmp_path, capsys):
    synthetic_group(tmp_path / "toy.zarr")
    (tmp_path / "toy.zarr" / "train" / "x" / "zarr.json").unlink()
    params = write_params(tmp_path / "params.yaml")
    code = main(train_cmd(tmp_path, "m", params)[1:])
    assert code == 2
    err = capsys.readouterr().err
    assert "toy.zarr" in err
    assert not (tmp_path / "m" / "model.pt").exists()


def test_prepare_refuses_a_malformed_amc_with_exit_2_and_no_output(tmp_path, capsys):
    src = tmp_path / "raw" / "07"
    src.mkdir(parents=True)
    asf = ROOT.parent / "shared" / "data" / "cmu" / "07" / "07.asf"
    if not asf.exists():
        pytest.skip("reference CMU skeleton not found beside the clone")
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
