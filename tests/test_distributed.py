"""Data-parallel training: shards of the global batch, the step against train_step, and two
torchrun processes against one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from builders import ROOT, ddp_params, fresh_model, make_run, synthetic_group, tiny_params, torchrun_command
from pipelines.checkpoint import load_payload
from pipelines.distributed import World, rank_slices, shard_seed
from vhp_core import ConstraintState, train_step


def test_ranks_take_disjoint_shards_that_make_up_the_global_batch():
    batch = torch.randperm(24)
    worlds = [World(rank=r, world_size=3, local_rank=r, n_shards=6) for r in range(3)]
    pieces = [rank_slices(batch, w) for w in worlds]
    assert all(len(p) == 2 for p in pieces)
    assert torch.equal(torch.cat([s for p in pieces for s in p]), batch)
    with pytest.raises(ValueError, match="multiple"):
        World(rank=0, world_size=2, local_rank=0, n_shards=3)


def test_shard_seeds_are_distinct_across_steps_and_shards():
    seeds = {shard_seed(0, t, s) for t in range(50) for s in range(4)}
    assert len(seeds) == 200
    assert shard_seed(1, 0, 0) != shard_seed(0, 0, 0)


def test_uneven_last_batch_splits_into_nearly_equal_shards():
    worlds = [World(rank=r, world_size=2, local_rank=r, n_shards=2) for r in range(2)]
    pieces = [rank_slices(torch.arange(7), w) for w in worlds]
    assert [len(p[0]) for p in pieces] == [4, 3]
    with pytest.raises(ValueError, match="cannot feed"):
        rank_slices(torch.arange(1), worlds[0])


def test_one_process_hooks_give_the_same_step_as_the_plain_loop(tmp_path):
    """With one shard the data-parallel hooks change nothing but where the noise comes from."""
    from pipelines.distributed import data_parallel_hooks
    from pipelines.train.fit import fit

    params = tiny_params(kappa={"toy": 0.9}, epochs=2)
    data, config, ccfg = make_run(tmp_path, params)
    world = World(rank=0, world_size=1, local_rank=0, n_shards=1)
    model = fresh_model(config)
    hooks = data_parallel_hooks(model, data, world, 0, torch.device("cpu"))
    result = fit(model, config, ccfg, data, params, 0, tmp_path / "ck.pt", progress=False, hooks=hooks)
    assert result.step == 2 * 6  # 96 rows, batches of 16, the last partial batch included
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_non_finite_shard_skips_the_step_and_keeps_the_state(tmp_path):
    from pipelines.distributed import data_parallel_hooks

    params = tiny_params()
    data, config, ccfg = make_run(tmp_path, params)
    model = fresh_model(config)
    before = [p.detach().clone() for p in model.parameters()]
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr)
    state = ConstraintState.initial(ccfg, model.rule)
    world = World(rank=0, world_size=1, local_rank=0, n_shards=2)
    hooks = data_parallel_hooks(model, data, world, 0, torch.device("cpu"))
    shards, generators = hooks.batch(data, torch.arange(16), 0)
    shards[1][3, 0] = float("nan")
    new_state, terms = train_step(model, optimiser, shards, state, ccfg, generators,
                                  forward=hooks.forward, reduce=hooks.reduce)
    assert not terms.finite and new_state == state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    """torchrun with 2 gloo processes vs one process holding both shards of each global batch.

    Tolerance: parameters allclose at atol 1e-5 after 12 Adam steps; on this machine they agree
    bitwise (the only difference is the order in which the two shards' gradients are summed).
    """
    data = synthetic_group(tmp_path / "toy.zarr", n_train=128, n_test=32)
    params = ddp_params(tmp_path, epochs=3, batch_size=32)
    common = ["--data", str(data), "--params", params, "--model", "vhp", "--shards", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pipelines.distributed", *common, "--out", str(tmp_path / "one"),
                          "--checkpoints", str(tmp_path / "ck-one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(torchrun_command(tmp_path, common, "two"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    assert "on 2 process(es)" in two.stdout

    a, b = load_payload(tmp_path / "one" / "model.pt"), load_payload(tmp_path / "two" / "model.pt")
    assert a["constraint_state"]["step"] == b["constraint_state"]["step"] == 12
    assert b["constraint_state"]["prior_active"]  # the prior's parameters were trained too
    assert a["constraint_state"]["lambda_"] == pytest.approx(b["constraint_state"]["lambda_"], rel=1e-9)
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-5, msg=name)
    curves = [np.loadtxt(tmp_path / run / "curves.tsv", skiprows=1) for run in ("one", "two")]
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_a_sigkilled_ddp_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    """torchrun with 2 processes, SIGKILLed (the whole process group) after its second checkpoint,
    then started again: the same weights as an uninterrupted 2-process run."""
    import signal
    import time

    data = synthetic_group(tmp_path / "toy.zarr", n_train=128, n_test=32)
    params = ddp_params(tmp_path, epochs=8, batch_size=32, checkpoint_every=4)
    common = ["--data", str(data), "--params", params, "--model", "vhp", "--shards", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(torchrun_command(tmp_path, common, "ref"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr

    ck = tmp_path / "ck-killed" / "checkpoint.pt"
    proc = subprocess.Popen(torchrun_command(tmp_path, common, "killed"), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    step = 0
    while step < 8:
        assert time.monotonic() < deadline and proc.poll() is None, "the run ended before its second checkpoint"
        if ck.exists():
            step = load_payload(ck)["step"]  # atomic writes: a torn read here would be a bug, not retried
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "killed" / "model.pt").exists()

    again = subprocess.run(torchrun_command(tmp_path, common, "killed"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    a, b = load_payload(tmp_path / "ref" / "model.pt"), load_payload(tmp_path / "killed" / "model.pt")
    assert b["constraint_state"] == a["constraint_state"]
    for name, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], value), name
    assert not ck.exists()  # a finished run leaves no resumption point
