"""The training stage: resumable loop, Prefect flow, outputs, locks and pure rules."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from builders import fresh_model, make_run, synthetic_group, tiny_params
from pipelines.checkpoint import CheckpointError, load_model, load_payload
from pipelines.params import BaseParams
from pipelines.train.data import load_training_data
from pipelines.train.fit import fit, learning_rate
from pipelines.train.flow import constraint_config, model_config, run_training
from preprocessing.store import open_dataset


def test_learning_rate_schedule():
    p = tiny_params(lr=1e-3, lr_schedule="cosine", lr_min_factor=0.1, warmup_steps=10)
    assert learning_rate(0, 100, p) == pytest.approx(1e-4)
    assert learning_rate(9, 100, p) == pytest.approx(1e-3)
    assert learning_rate(10, 100, p) == pytest.approx(1e-3)
    assert learning_rate(100, 100, p) == pytest.approx(1e-4)
    rates = [learning_rate(s, 100, p) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    const = tiny_params(lr_schedule="constant", warmup_steps=0)
    assert learning_rate(57, 100, const) == const.lr


def test_interrupted_run_resumes_at_its_checkpoint_and_matches(tmp_path):
    params = tiny_params()
    data, config, ccfg = make_run(tmp_path, params)

    reference = fit(fresh_model(config), config, ccfg, data, params, 0, tmp_path / "ref" / "ck.pt",
                    progress=False)

    ck = tmp_path / "resumed" / "ck.pt"
    first = fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, stop_after_steps=10)
    assert first.step == 10
    saved = load_payload(ck)
    assert saved["step"] == 8  # the last multiple of checkpoint_every before the interruption

    # a new process would build a fresh model; the checkpoint brings it back to step 8
    second = fit(fresh_model(config, seed=123), config, ccfg, data, params, 0, ck, progress=False)
    assert second.resumed_from == 8
    assert second.step == reference.step
    for (name, a), (_, b) in zip(reference.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resuming"
    assert second.state == reference.state
    assert second.curves == reference.curves


def test_checkpoint_of_other_config_is_not_resumed(tmp_path, capsys):
    params = tiny_params()
    data, config, ccfg = make_run(tmp_path, params)
    ck = tmp_path / "ck.pt"
    fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, stop_after_steps=8)
    changed = dataclasses.replace(params, lr=params.lr * 2)
    result = fit(fresh_model(config), config, ccfg, data, changed, 0, ck, progress=False)
    assert result.resumed_from == 0
    assert "starting afresh" in capsys.readouterr().out


def test_prior_stays_frozen_until_the_constraint_is_met(tmp_path):
    # kappa so small that the constraint is never met: Theta, Phi and lambda must not move
    params = tiny_params(kappa={"toy": 1e-4}, epochs=1)
    data, config, ccfg = make_run(tmp_path, params)
    model = fresh_model(config)
    before = [p.detach().clone() for p in model.prior_parameters()]
    result = fit(model, config, ccfg, data, params, 0, tmp_path / "ck.pt", progress=False)
    assert not result.state.prior_active
    assert result.state.lambda_ == params.constraint.lambda_init
    for a, b in zip(before, model.prior_parameters()):
        assert torch.equal(a, b)


def test_kappa_auto_activates_the_prior_and_is_kept_on_resume(tmp_path):
    params = tiny_params(kappa={"toy": "auto"}, epochs=6)
    data, config, ccfg = make_run(tmp_path, params)
    assert ccfg.kappa is None and ccfg.auto_max_steps == int(0.2 * 6 * 6)
    reference = fit(fresh_model(config), config, ccfg, data, params, 0, tmp_path / "ref.pt", progress=False)
    assert reference.state.prior_active and reference.state.kappa_sq is not None
    assert reference.state.kappa_step <= ccfg.auto_max_steps
    ck = tmp_path / "ck.pt"
    fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, stop_after_steps=10)
    assert load_payload(ck)["constraint_state"]["kappa_sq"] == reference.state.kappa_sq
    resumed = fit(fresh_model(config, seed=9), config, ccfg, data, params, 0, ck, progress=False)
    assert resumed.state == reference.state


def test_flow_writes_model_metrics_and_curves(tmp_path, harness):
    params = tiny_params(epochs=2)
    data_path = synthetic_group(tmp_path / "toy.zarr")
    out = tmp_path / "models" / "toy" / "vhp"
    ck = tmp_path / "checkpoints" / "toy" / "vhp"
    metrics = run_training("toy", "vhp", data_path, out, ck, params, BaseParams(seed=3, threads=1, device="cpu"),
                           progress=False)
    assert {p.name for p in out.iterdir()} >= {"model.pt", "metrics.json", "curves.tsv", "curves.png", "timing.json"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["steps"] == 2 * 6 and on_disk["final_lambda"] > 0
    assert "seconds" not in on_disk and "seconds" in json.loads((out / "timing.json").read_text())
    header = (out / "curves.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["step", "epoch", "lr"] and "lambda" in header and "c_hat" in header
    model, payload = load_model(out / "model.pt")
    assert payload["config"]["model"] == "vhp"
    x = torch.from_numpy(np.asarray(open_dataset(data_path).test.x[:4]))
    assert torch.isfinite(model.loss(x).total)
    assert not (ck / "checkpoint.pt").exists()  # a finished run leaves no resumption point


def test_same_seed_gives_identical_metrics(tmp_path, harness):
    params = tiny_params(epochs=2)
    data_path = synthetic_group(tmp_path / "toy.zarr")
    runs = []
    for name in ("a", "b"):
        run_training("toy", "vhp", data_path, tmp_path / name, tmp_path / f"ck-{name}", params,
                     BaseParams(seed=5, threads=1, device="cpu"), progress=False)
        runs.append((tmp_path / name / "metrics.json").read_bytes())
    assert runs[0] == runs[1]


def test_tampered_checkpoint_is_refused(tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "model.pt"
    torch.save({"config": {}, "state_dict": {}, "x": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_payload(path)
    path.write_bytes(pickle.dumps({"config": Exploit()}))
    with pytest.raises(CheckpointError):
        load_payload(path)


def test_streamed_data_visit_every_row_once_and_match_the_array(tmp_path):
    dataset = open_dataset(synthetic_group(tmp_path / "toy.zarr", n_train=100))
    params = tiny_params(memory_budget_mb=0)
    streamed = load_training_data(dataset, params)
    assert streamed.streamed and streamed.window_rows > 0
    in_memory = load_training_data(dataset, tiny_params())
    assert not in_memory.streamed
    # small windows, so that batches straddle windows
    streamed = dataclasses.replace(streamed, window_rows=7, _windows={})
    perm = streamed.epoch_permutation(torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(100))
    for start in range(0, 100, 16):
        idx = perm[start:start + 16]
        assert torch.equal(streamed.batch(idx), in_memory.batch(idx))
    assert len(streamed._windows) <= 2
    rows_only = dataclasses.replace(streamed, window_rows=0, _windows={})  # exact-row reads
    idx = torch.tensor([5, 99, 0, 42])
    assert torch.equal(rows_only.batch(idx), in_memory.batch(idx))


def test_training_on_streamed_data(tmp_path):
    params = tiny_params(memory_budget_mb=0, epochs=2)
    dataset = open_dataset(synthetic_group(tmp_path / "toy.zarr"))
    data = load_training_data(dataset, params)
    config = model_config(params, "toy", "vhp", dataset.x_shape, dataset.likelihood)
    result = fit(fresh_model(config), config, constraint_config(params, "toy", data.n), data, params, 0,
                 tmp_path / "ck.pt", progress=False)
    assert data.streamed and result.step == 2 * 6
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
