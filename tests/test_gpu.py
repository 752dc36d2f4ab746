"""On a CUDA device: precision, resume identity, data-parallel training over NCCL, CPU <-> GPU numbers.

Run with `pytest -m gpu` (bench/gpu.py does); every test skips without CUDA. They import only
vhp_core, torch and numpy, so they run where the pipeline's storage and orchestration
packages (zarr, Prefect) are not installed; the one pipeline-level test skips there.
"""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch

from builders import constraint_config, model_config
from vhp_core import ConstraintState, ModelConfig, build_model, log_likelihood, train_step
from vhp_core.precision import resolve_precision
from vhp_core.training import restore_rng_states, rng_states

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda", 0)


def _config(model: str, precision: str = "fp32", **kw) -> ModelConfig:
    sizes = dict(latent_dim=8, hidden=(64, 64), zeta_dim=4, prior_hidden=(32,), k_inner=4, k_iw=4)
    sizes.update(kw)
    return model_config(model=model, x_shape=(1, 12, 12), likelihood="bernoulli", precision=precision, **sizes)


def _grey(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_auto_precision_is_bf16_on_a_bf16_gpu_and_the_layers_run_under_cuda_autocast():
    assert torch.cuda.is_bf16_supported()
    assert resolve_precision("auto", CUDA) == "bf16"
    torch.manual_seed(0)
    model = build_model(_config("vae", precision=resolve_precision("auto", CUDA))).to(CUDA)
    seen = []
    linear = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, inp, out: seen.append((out.dtype, torch.is_autocast_enabled("cuda"))))
    parts = model.objective_parts(torch.bernoulli(_grey(16)).to(CUDA))
    assert seen and all(s == (torch.bfloat16, True) for s in seen)
    assert parts.total(1.0).dtype == torch.float32 and torch.isfinite(parts.total(1.0))


def _train(model, optimiser, state, cfg, grey, steps: range):
    for step in steps:
        batch = torch.bernoulli(grey[(step * 32) % len(grey):][:32])  # dynamic binarisation on the GPU
        state, terms = train_step(model, optimiser, batch, state, cfg)
        assert terms.finite
    return state


def _snapshot(model, optimiser, state):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), **rng_states(CUDA)}, buffer)
    return buffer.getvalue(), copy.deepcopy(state)


@pytest.mark.parametrize("name", ["vae", "vhp"])
def test_a_resumed_run_on_cuda_ends_with_bit_identical_weights(name):
    """Train 12 steps; or train 5, save (weights, optimiser, CPU and CUDA RNG), rebuild, resume 7.

    The noise (reparameterisation, inner zetas, binarisation) is drawn on the GPU from its
    global generator, so the resumed run matches only with the CUDA RNG state restored.
    """
    cfg = constraint_config(kappa=0.5, auto_max_steps=4)
    grey = _grey(256).to(CUDA)

    def fresh():
        torch.manual_seed(0)
        model = build_model(_config(name)).to(CUDA)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        return model, optimiser, ConstraintState.initial(cfg, model.rule)

    model, optimiser, state = fresh()
    state = _train(model, optimiser, state, cfg, grey, range(5))
    blob, saved_state = _snapshot(model, optimiser, state)
    _train(model, optimiser, state, cfg, grey, range(5, 12))
    reference = [p.detach().clone() for p in model.parameters()]

    def resume(restore_cuda: bool):
        model, optimiser, _ = fresh()
        torch.cuda.manual_seed_all(12345)  # the generator as a new process would find it
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        optimiser.load_state_dict(payload["optimiser"])
        restore_rng_states(payload if restore_cuda else {**payload, "cuda_rng": []}, CUDA)
        _train(model, optimiser, copy.deepcopy(saved_state), cfg, grey, range(5, 12))
        return [p.detach() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(resume(True), reference))
    assert not all(torch.equal(a, b) for a, b in zip(resume(False), reference))  # the CUDA state matters


@pytest.mark.parametrize("name,k_eval", [("vae", None), ("iwae", None), ("vhp", 6)])
def test_log_likelihood_on_the_gpu_gives_the_cpu_numbers(name, k_eval):
    """Same weights, same CPU generator (draws copied to the GPU), same chunk: the same estimate
    up to float rounding; the GPU's default chunk with its own generator agrees within noise."""
    torch.manual_seed(1)
    model = build_model(_config(name)).eval()
    x = torch.bernoulli(_grey(64, seed=2))
    cpu = log_likelihood(model, x, 300, n_inner=k_eval, chunk=4096, generator=torch.Generator().manual_seed(3))
    gpu_model = copy.deepcopy(model).to(CUDA)
    gpu = log_likelihood(gpu_model, x.to(CUDA), 300, n_inner=k_eval, chunk=4096,
                         generator=torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=2e-3)
    native = log_likelihood(gpu_model, x.to(CUDA), 300, n_inner=k_eval,
                            generator=torch.Generator(device=CUDA).manual_seed(3)).cpu()
    diff = native - cpu
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / len(diff) ** 0.5 + 1e-3


def _ddp_worker(rank: int, world_size: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = build_model(_config("vhp")).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        cfg = constraint_config(kappa=0.5, auto_max_steps=4)
        state = ConstraintState.initial(cfg, model.rule)

        class Objective(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x, generator):
                return self.inner.objective_parts(x, generator)

        ddp = DistributedDataParallel(Objective(model), device_ids=[rank], find_unused_parameters=True)

        def reduce(stats):
            stats = stats.clone()
            dist.all_reduce(stats)
            return stats / world_size

        grey = _grey(64 * world_size, seed=5).to(device)
        for step in range(6):
            g = torch.Generator(device=device).manual_seed(1000 * step + rank)
            x = torch.bernoulli(grey[rank * 64:(rank + 1) * 64], generator=g)
            state, terms = train_step(model, optimiser, x, state, cfg, g, forward=ddp, reduce=reduce)
            assert terms.finite
        # the finish of pipelines.distributed: broadcast on the parameters' device, one all-reduce of flags
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        flags = torch.tensor([float(not torch.equal(reference, flat)), float(rank == 0)], dtype=torch.float64,
                             device=device)
        dist.all_reduce(flags)
        with open(f"{out}.{rank}", "w") as fh:
            fh.write(f"{flags.tolist()} {state.lambda_!r}")
    finally:
        dist.destroy_process_group()


def test_data_parallel_training_over_nccl_on_every_gpu_keeps_the_ranks_in_lock_step(tmp_path):
    import torch.multiprocessing as mp

    world_size = torch.cuda.device_count()
    out = str(tmp_path / "rank")
    mp.start_processes(_ddp_worker, args=(world_size, str(tmp_path / "store"), out), nprocs=world_size,
                       join=True, start_method="spawn")
    results = [open(f"{out}.{r}").read() for r in range(world_size)]
    assert len(set(results)) == 1, results
    assert results[0].startswith("[0.0, 1.0] ")  # no rank diverged; rank 0's refusal reached every rank


def test_the_pipeline_trains_on_the_gpu_with_data_on_the_device(tmp_path):
    """Where the pipeline's packages are installed: fit on CUDA keeps its data there and resumes identically."""
    pytest.importorskip("zarr")
    pytest.importorskip("prefect")
    from test_train_flow import fresh_model, make_run, tiny_params

    from pipelines.train.fit import fit

    params = tiny_params(epochs=2, checkpoint_every=3, precision="fp32")
    data, config, ccfg = make_run(tmp_path, params, model_name="vae")
    assert data.on_device(CUDA).x.device.type == "cuda"
    full = fit(fresh_model(config), config, ccfg, data, params, 0, tmp_path / "a.pt", progress=False, device=CUDA)
    fit(fresh_model(config), config, ccfg, data, params, 0, tmp_path / "b.pt", progress=False, device=CUDA,
        stop_after_steps=6)
    resumed = fit(fresh_model(config), config, ccfg, data, params, 0, tmp_path / "b.pt", progress=False,
                  device=CUDA)
    assert resumed.resumed_from == 6
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # set by set_determinism before cuBLAS starts
