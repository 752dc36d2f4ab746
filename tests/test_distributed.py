"""Data-parallel training: shards of the global batch, the step against train_step, and two
torchrun processes against one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from pipelines.checkpoint import load_payload
from pipelines.distributed import ShardedObjective, World, distributed_step, rank_slices, shard_seed
from test_train_flow import ROOT, fresh_model, make_run, synthetic_group, tiny_params
from vhp_core import ConstraintState, train_step


def test_ranks_take_disjoint_shards_that_make_up_the_global_batch():
    batch = torch.randperm(24)
    worlds = [World(rank=r, world_size=3, local_rank=r, n_shards=6) for r in range(3)]
    pieces = [rank_slices(batch, w) for w in worlds]
    assert all(len(p) == 2 for p in pieces)
    assert torch.equal(torch.cat([s for p in pieces for s in p]), batch)
    with pytest.raises(ValueError, match="multiple"):
        World(rank=0, world_size=2, local_rank=0, n_shards=3)
    with pytest.raises(ValueError, match="equal shards"):
        rank_slices(torch.arange(10), worlds[0])


def test_shard_seeds_are_distinct_across_steps_and_shards():
    seeds = {shard_seed(0, t, s) for t in range(50) for s in range(4)}
    assert len(seeds) == 200
    assert shard_seed(1, 0, 0) != shard_seed(0, 0, 0)


@pytest.mark.parametrize("model_name", ["vhp", "iwae"])
def test_one_shard_step_is_vhp_core_train_step(tmp_path, model_name):
    # kappa large enough that the prior switches on within the steps
    params = tiny_params(kappa={"toy": 0.9})
    data, config, ccfg = make_run(tmp_path, params, model_name)
    ours, core = fresh_model(config), fresh_model(config)
    opt_ours, opt_core = (torch.optim.Adam(m.parameters(), lr=params.lr) for m in (ours, core))
    state_ours = state_core = ConstraintState.initial(ccfg, ours.rule)
    world = World(rank=0, world_size=1, local_rank=0, n_shards=1)
    objective = ShardedObjective(ours)
    for step in range(6):
        x = data.x[step * 16:(step + 1) * 16]
        g1, g2 = (torch.Generator().manual_seed(shard_seed(0, step, 0)) for _ in range(2))
        state_ours, terms_ours = distributed_step(objective, ours, opt_ours, [x], [g1], state_ours, ccfg, world)
        state_core, terms_core = train_step(core, opt_core, x, state_core, ccfg, generator=g2)
        assert state_ours == state_core
        assert terms_ours.reconstruction == pytest.approx(terms_core.reconstruction, rel=1e-6)
        assert terms_ours.elbo == pytest.approx(terms_core.elbo, rel=1e-6)
    for a, b in zip(ours.parameters(), core.parameters()):
        assert torch.equal(a, b)


def test_non_finite_batch_skips_the_step_and_keeps_the_state(tmp_path):
    params = tiny_params()
    data, config, ccfg = make_run(tmp_path, params)
    model = fresh_model(config)
    before = [p.detach().clone() for p in model.parameters()]
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr)
    state = ConstraintState.initial(ccfg, model.rule)
    world = World(rank=0, world_size=1, local_rank=0, n_shards=2)
    x = data.x[:16].clone()
    x[3, 0] = float("nan")
    shards = [x[:8], x[8:]]
    generators = [torch.Generator().manual_seed(shard_seed(0, 0, s)) for s in range(2)]
    new_state, terms = distributed_step(ShardedObjective(model), model, optimiser, shards, generators, state,
                                        ccfg, world)
    assert not terms.finite and new_state == state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _params_file(tmp_path, **train) -> str:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"].update(seed=0, threads=1, device="cpu")
    raw["train"].update(datasets=["toy"], models=["vhp"], kappa={"toy": 0.9}, log_every=1, **train)
    raw["train"]["model"].update(hidden=[16], prior_hidden=[16], k_inner=4, k_iw=3, n_pseudo=5)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    """torchrun with 2 gloo processes vs one process holding both shards of each global batch.

    Tolerance: parameters allclose at atol 1e-5 after 12 Adam steps; on this machine they agree
    bitwise (the only difference is the order in which the two shards' gradients are summed).
    """
    data = synthetic_group(tmp_path / "toy.zarr", n_train=128, n_test=32)
    params = _params_file(tmp_path, epochs=3, batch_size=32)
    common = ["--data", str(data), "--params", params, "--model", "vhp", "--shards", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pipelines.distributed", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pipelines.distributed", *common, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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
