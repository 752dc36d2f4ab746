"""Device-dependent logic checked on the CPU: precision per device, the RNG states a checkpoint
carries, data placement, and the refusal decided together by every data-parallel process.
(The same behaviour on a real GPU: tests/test_gpu.py.)"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest
import torch
from torch import nn

from vhp_core import networks
from vhp_core import precision as precision_policy
from vhp_core.networks import Network, set_precision
from vhp_core.precision import evaluation_precision, resolve_precision
from vhp_core.training import restore_rng_states, rng_states


@pytest.fixture
def cuda_bf16(monkeypatch):
    """Pretend a CUDA device is present; the fixture's value sets whether it supports bf16."""
    support = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: support["bf16"])
    return support


def test_auto_precision_resolves_for_the_device_it_runs_on(cuda_bf16, monkeypatch):
    monkeypatch.setattr(precision_policy, "native_bf16", lambda: False)  # an AVX2 CPU
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto") == "fp32"  # the CPU by default, as before
    cuda_bf16["bf16"] = False  # e.g. a pre-Ampere GPU
    assert resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(precision_policy, "native_bf16", lambda: True)  # AVX-512 BF16 / AMX
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cuda")


def test_evaluation_runs_in_the_precision_of_the_evaluating_device(cuda_bf16, monkeypatch):
    monkeypatch.setattr(precision_policy, "native_bf16", lambda: False)
    assert evaluation_precision("bf16", "cpu") == "fp32"  # a GPU's bf16 model on an AVX2 CPU
    assert evaluation_precision("bf16", "cuda") == "bf16"
    assert evaluation_precision("fp32", "cuda") == "fp32"
    monkeypatch.setattr(precision_policy, "native_bf16", lambda: True)
    assert evaluation_precision("bf16", "cpu") == "bf16"
    model = nn.Sequential(Network(nn.Linear(3, 2), "bf16"), Network(nn.Linear(2, 2), "bf16"))
    set_precision(model, "fp32")
    assert [m.precision for m in model if isinstance(m, Network)] == ["fp32", "fp32"]


def test_network_opens_autocast_for_the_device_of_its_input(monkeypatch):
    opened = []
    real = networks.network_autocast

    def spy(precision, device_type="cpu"):
        opened.append((precision, device_type))
        return real(precision, device_type) if device_type == "cpu" else contextlib.nullcontext()

    monkeypatch.setattr(networks, "network_autocast", spy)
    net = Network(nn.Linear(4, 3), "bf16")
    out = net(torch.randn(5, 4))
    assert opened == [("bf16", "cpu")]
    assert out.dtype == torch.float32  # cast back to the input's dtype
    meta = net.to("meta")(torch.randn(2, 4, device="meta"))  # a tensor on another device
    assert opened[-1] == ("bf16", "meta") and meta.device.type == "meta"


def test_model_config_resolves_auto_precision_for_the_training_device(cuda_bf16, monkeypatch):
    from builders import tiny_params
    from pipelines.train.flow import model_config

    monkeypatch.setattr(precision_policy, "native_bf16", lambda: False)
    params = tiny_params(precision="auto")
    assert model_config(params, "toy", "vae", (6,), "gaussian").precision == "fp32"
    assert model_config(params, "toy", "vae", (6,), "gaussian", torch.device("cuda")).precision == "bf16"


def test_rng_states_carry_the_cuda_generators_when_training_on_cuda(monkeypatch):
    saved = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(saved))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(list(states)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rng_states("cpu")["cuda_rng"] == []
    states = rng_states("cuda")
    assert states["cuda_rng"] == saved and torch.equal(states["torch_rng"], torch.get_rng_state())
    expected = torch.rand(3)  # the CPU stream after the saved state
    restore_rng_states(states, "cuda")
    assert torch.equal(torch.rand(3), expected)
    assert restored == [saved]
    restore_rng_states(states, "cpu")  # a CPU resume leaves the CUDA generators alone
    assert len(restored) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 CUDA device"):
        restore_rng_states(states, "cuda")


def test_checkpoints_hold_the_rng_states_and_resume_restores_them(tmp_path, monkeypatch):
    from builders import fresh_model, make_run, tiny_params
    from pipelines.train import fit as fit_module
    from pipelines.checkpoint import load_payload

    params = tiny_params(epochs=2, checkpoint_every=3)
    data, config, ccfg = make_run(tmp_path, params, model_name="vae")
    ck = tmp_path / "ck.pt"
    fit_module.fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, stop_after_steps=3)
    payload = load_payload(ck)
    assert payload["cuda_rng"] == [] and payload["torch_rng"].dtype == torch.uint8
    seen = []
    monkeypatch.setattr(fit_module, "restore_rng_states", lambda states, device: seen.append(
        (torch.equal(states["torch_rng"], payload["torch_rng"]), torch.device(device).type)))
    fit_module.fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, stop_after_steps=4)
    assert seen == [(True, "cpu")]


def test_in_memory_data_stay_put_off_the_gpu(tmp_path):
    from builders import make_run, tiny_params

    data, _, _ = make_run(tmp_path, tiny_params())
    assert data.on_device("cpu") is data and data.device.type == "cpu"


def _finish_worker(rank: int, store: str, mode: str, out: str) -> None:
    import torch.distributed as dist

    from pipelines.distributed import World, finish_together
    from pipelines.errors import TrainingError
    from builders import constraint_config
    from vhp_core import ConstraintState

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        if mode == "diverged" and rank == 1:
            with torch.no_grad():
                model.bias.add_(1e-6)
        state = ConstraintState.initial(constraint_config(kappa=0.5), "rewo")
        world = World(rank=rank, world_size=2, local_rank=rank, n_shards=2)
        try:
            result = str(finish_together(model, state, refuse=(mode == "refuse" and rank == 0), world=world))
        except TrainingError as err:
            result = f"error: {err}"
        with open(f"{out}.{rank}", "w") as fh:
            fh.write(result)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode,expected", [("agree", "False"), ("refuse", "True"),
                                           ("diverged", "error: 1 rank(s) diverged from rank 0 after training")])
def test_two_gloo_processes_decide_the_finish_together(tmp_path, mode, expected):
    """Rank 0 alone refuses (or rank 1 alone diverges): both ranks learn it from one collective
    and return (or raise) the same, so neither waits for the other."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    mp.start_processes(_finish_worker, args=(str(tmp_path / "store"), mode, out), nprocs=2, join=True,
                       start_method="spawn")
    assert [open(f"{out}.{r}").read() for r in range(2)] == [expected, expected]


def _refusing_params(tmp_path, **train) -> str:
    """A params file whose kappa no run can meet, with train.require_constraint set."""
    from builders import ddp_params

    return ddp_params(tmp_path, require_constraint=True, kappa={"toy": 1e-4}, **train)


@pytest.mark.slow
def test_torchrun_refusal_ends_every_rank_with_the_same_one_line_error(tmp_path):
    """require_constraint with a kappa no run can meet: both gloo ranks stop with status 2, one line each."""
    from builders import ROOT, synthetic_group, torchrun_command

    data = synthetic_group(tmp_path / "toy.zarr", n_train=64, n_test=16)
    params = _refusing_params(tmp_path, epochs=2, batch_size=32)
    common = ["--data", str(data), "--params", params, "--model", "vhp", "--shards", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(torchrun_command(tmp_path, common, "refused"), cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("vhp distributed: error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "require_constraint" in lines[0], run.stderr[-3000:]
    assert not (tmp_path / "refused" / "model.pt").exists()


def test_distributed_main_reports_a_user_error_in_one_line(tmp_path, capsys):
    from builders import synthetic_group
    from pipelines.distributed import main

    data = synthetic_group(tmp_path / "toy.zarr", n_train=32, n_test=8)
    params = _refusing_params(tmp_path, epochs=1, batch_size=16)
    status = main(["--data", str(data), "--params", params, "--model", "vhp", "--out", str(tmp_path / "m"),
                   "--checkpoints", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("vhp distributed: error: vhp on toy:")
    assert not (tmp_path / "m" / "model.pt").exists()
