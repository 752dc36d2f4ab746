"""Data-parallel training with torch DistributedDataParallel (DDP), launched by torchrun.

    torchrun --standalone --nproc_per_node 2 -m pipelines.distributed \\
        --data data/processed/mocap.zarr --params params.yaml --out models/mocap/vhp --model vhp

Every process (rank) builds the same model from the same seed, draws the same
epoch permutation, and takes its slice of every global batch of
``train.batch_size`` samples. One step:

1. The rank's forward pass runs through the DDP wrapper of a small module whose
   forward returns the objective's parts, so DDP's backward hooks all-reduce
   (average) the gradients of the global batch.
2. Before lambda moves, the constraint C of the global batch is formed by one
   all-reduce of the ranks' reconstruction errors (with the reported terms and a
   non-finite flag beside it), so the REWO/GECO state (vhp_core.update_constraint)
   takes the same value on every rank and the ranks stay in lock-step.
3. total = regulariser_term + lambda * nll on the rank's slice; backward (DDP
   averages); the prior's gradients are dropped while the prior is inactive; a
   non-finite loss or gradient skips the step on every rank alike; Adam steps.

Noise. The global batch is cut into ``--shards`` equal pieces (default: the
number of processes); piece s of global step t draws its reparameterisation
noise (and dynamic binarisation) from a generator seeded by (seed, t, s). A
sample's noise therefore depends on where it sits in the global batch and not on
how many processes share the work: one process holding both pieces and two
processes holding one each compute the same global-batch objective with the same
noise, and end with the same weights up to floating-point summation order
(tests/test_distributed.py).

The order of operations follows vhp_core.training.train_step (METHOD §4); the
step is rebuilt here on top of ``model.objective_parts`` and the vhp_core
constraint rules because C must be reduced across ranks between the forward pass
and the lambda update. The last incomplete global batch of an epoch is dropped,
so every rank does the same number of steps. Rank 0 writes the outputs of
``vhp train`` (model.pt, metrics.json, curves.tsv, curves.png, timing.json), so
``vhp evaluate`` works on them; this trainer keeps no resumption checkpoint.

Backends: gloo on CPU, nccl when base.device resolves to CUDA (one GPU a process,
cuda:LOCAL_RANK). Based on the PyTorch DDP and torchrun documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.train import (
    BaseParams,
    FitResult,
    TrainingData,
    TrainParams,
    constraint_config,
    evaluate_elbo,
    learning_rate,
    load_training_data,
    model_config,
    resolve_device,
    set_determinism,
    set_threads,
    write_outputs,
)
from vhp_core import ConstraintConfig, ConstraintState, LossTerms, ObjectiveParts, build_model, update_constraint

# The terms reduced across ranks, in this order (then the non-finite flag).
REDUCED_TERMS = ("regulariser_term", "reconstruction", "nll", "regulariser", "elbo")


@dataclass(frozen=True)
class World:
    """Where this process sits: rank among world_size processes, holding shards [first, first + count)."""

    rank: int
    world_size: int
    local_rank: int
    n_shards: int

    def __post_init__(self) -> None:
        if self.n_shards % self.world_size:
            raise ValueError(f"shards ({self.n_shards}) must be a multiple of the number of processes "
                             f"({self.world_size})")

    @property
    def shards_per_rank(self) -> int:
        return self.n_shards // self.world_size

    @property
    def first_shard(self) -> int:
        return self.rank * self.shards_per_rank

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def shard_seed(seed: int, step: int, shard: int) -> int:
    """Seed of one shard's noise at one global step (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([seed, step, shard]).generate_state(1, dtype=np.uint64)[0])


def rank_slices(batch: torch.Tensor, world: World) -> list[torch.Tensor]:
    """This rank's shards of a global batch of indices, one tensor a shard."""
    if len(batch) % world.n_shards:
        raise ValueError(f"global batch of {len(batch)} does not split into {world.n_shards} equal shards")
    size = len(batch) // world.n_shards
    return [batch[s * size:(s + 1) * size] for s in range(world.first_shard, world.first_shard + world.shards_per_rank)]


class ShardedObjective(nn.Module):
    """forward(shards, generators) -> (the objective's parts averaged over this rank's shards,
    float64 sums over these shards of the reported terms REDUCED_TERMS).

    Wrapping this (and not the model) in DDP makes the objective the output of
    DDP's forward, so its backward hooks fire and average the gradients across
    ranks. Each shard uses its own generator for every random draw.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, shards: list[torch.Tensor],
                generators: list[torch.Generator]) -> tuple[ObjectiveParts, torch.Tensor]:
        parts = [self.model.objective_parts(x, g) for x, g in zip(shards, generators)]
        # float64 sums per shard: the global mean then does not depend on how shards are placed
        sums = torch.stack([torch.stack([getattr(p, name).detach().double() for name in REDUCED_TERMS])
                            for p in parts]).sum(dim=0)
        if len(parts) == 1:
            return parts[0], sums
        mean = ObjectiveParts(*(torch.stack([getattr(p, f.name) for p in parts]).mean()
                                for f in dataclasses.fields(ObjectiveParts)))
        return mean, sums


def _grads_finite(parameters: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)))


def distributed_step(
    objective: nn.Module,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    shards: list[torch.Tensor],
    generators: list[torch.Generator],
    state: ConstraintState,
    cfg: ConstraintConfig,
    world: World,
) -> tuple[ConstraintState, LossTerms]:
    """One step on the global batch; ``objective`` is the DDP wrapper (or the bare module, one process).

    Same contract as vhp_core.train_step, except that every term, ``total``
    included, is the global batch's (``total`` detached: the backward pass has
    run). Returns the new state and the terms at the new lambda; on a non-finite
    loss or gradient
    every rank skips the step and returns (state unchanged, finite=False).
    """
    rule = model.rule
    kappa = None if rule == "none" else cfg.kappa
    optimiser.zero_grad(set_to_none=True)
    parts, sums = objective(shards, generators)
    nonfinite = ~(torch.isfinite(parts.regulariser_term) & torch.isfinite(parts.nll))
    # One all-reduce for C, the reported terms and the non-finite flag of the global batch.
    stats = torch.cat([sums, nonfinite.detach().double().reshape(1)])
    if world.distributed:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    means = (stats[:len(REDUCED_TERMS)] / world.n_shards).tolist()
    reported = dict(zip(REDUCED_TERMS, means))
    regulariser_term = reported.pop("regulariser_term")
    any_nonfinite = stats[-1].item() > 0

    def terms(lambda_: float, finite: bool) -> LossTerms:
        # total: the global batch's objective, for reporting (the rank's own graph is `parts`)
        global_total = torch.tensor(regulariser_term + lambda_ * reported["nll"], dtype=torch.float64)
        return LossTerms(total=global_total, lambda_=float(lambda_),
                         constraint=0.0 if kappa is None else reported["reconstruction"] - kappa**2,
                         finite=finite, **reported)

    c_batch = reported["reconstruction"]
    if any_nonfinite or not math.isfinite(c_batch):
        return state, terms(state.lambda_, False)
    new_state = update_constraint(state, c_batch, cfg, rule)
    parts.total(new_state.lambda_).backward()  # DDP's hooks average the gradients across ranks here
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not _grads_finite(parameters):  # the gradients are all-reduced: every rank decides alike
        optimiser.zero_grad(set_to_none=True)
        return state, terms(state.lambda_, False)
    if not new_state.prior_active:
        for p in model.prior_parameters():
            p.grad = None
    optimiser.step()
    return new_state, terms(new_state.lambda_, True)


def _batch_rows(data: TrainingData, idx: torch.Tensor, binarise: bool, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    xb = data.batch(idx).to(device)
    if binarise:  # dynamic binarisation with the shard's generator, so it too is independent of placement
        xb = torch.bernoulli(xb, generator=generator)
    return xb


def train_data_parallel(
    model: nn.Module,
    ccfg: ConstraintConfig,
    data: TrainingData,
    params: TrainParams,
    seed: int,
    world: World,
    device: torch.device,
    max_steps: int | None = None,
    progress: bool = False,
) -> FitResult:
    """The training loop over global batches; every rank runs it, each on its shards."""
    t0 = time.perf_counter()
    model.to(device)
    objective: nn.Module = ShardedObjective(model)
    if world.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr)
    shuffle = torch.Generator().manual_seed(seed)
    binarise = data.binarise
    data = dataclasses.replace(data, binarise=False)
    state = ConstraintState.initial(ccfg, model.rule)
    n_batches = data.n // params.batch_size
    if n_batches == 0:
        raise ValueError(f"{data.n} training samples make no global batch of {params.batch_size}")
    total_steps = params.epochs * n_batches
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    curves: list[list[float]] = []
    epoch_sums: dict[str, float] = {}
    step = attempts = skipped = consecutive_bad = samples = 0
    activation_step: int | None = 0 if state.prior_active else None
    epoch = 0
    model.train()
    while epoch < params.epochs and step < total_steps:
        perm = torch.randperm(data.n, generator=shuffle)
        epoch_sums = {}
        for b in range(n_batches):
            if step >= total_steps:
                break
            lr = learning_rate(step, total_steps, params)
            for group in optimiser.param_groups:
                group["lr"] = lr
            batch = perm[b * params.batch_size:(b + 1) * params.batch_size]
            generators = [torch.Generator(device=device).manual_seed(shard_seed(seed, attempts, s))
                          for s in range(world.first_shard, world.first_shard + world.shards_per_rank)]
            shards = [_batch_rows(data, idx, binarise, g, device)
                      for idx, g in zip(rank_slices(batch, world), generators)]
            attempts += 1
            new_state, terms = distributed_step(objective, model, optimiser, shards, generators, state, ccfg,
                                                world)
            samples += sum(len(x) for x in shards)
            if not terms.finite:
                skipped += 1
                consecutive_bad += 1
                if consecutive_bad >= params.max_nonfinite:
                    raise RuntimeError(f"{consecutive_bad} non-finite losses or gradients in a row at step {step}")
                continue
            consecutive_bad = 0
            state = new_state
            step += 1
            if activation_step is None and state.prior_active:
                activation_step = step
            total = float(terms.total.detach())
            for key in ("reconstruction", "nll", "regulariser", "elbo"):
                epoch_sums[key] = epoch_sums.get(key, 0.0) + getattr(terms, key) * len(batch)
            epoch_sums["total"] = epoch_sums.get("total", 0.0) + total * len(batch)
            epoch_sums["n"] = epoch_sums.get("n", 0.0) + len(batch)
            if step % params.log_every == 0 or step == total_steps:
                curves.append([step, epoch, lr, total, terms.reconstruction, terms.nll, terms.regulariser,
                               state.lambda_, state.c_hat, terms.constraint, terms.elbo,
                               float(state.prior_active)])
            if progress and world.rank == 0 and step % 50 == 0:
                print(f"step {step}/{total_steps}  lambda {state.lambda_:.4g}  C_hat {state.c_hat:.4g}", flush=True)
        epoch += 1
    n = max(epoch_sums.get("n", 0.0), 1.0)
    return FitResult(model=model, state=state, curves=curves, step=step, epochs=epoch, resumed_from=0,
                     skipped_steps=skipped, prior_activation_step=activation_step,
                     last_epoch_terms={k: v / n for k, v in epoch_sums.items() if k != "n"},
                     seconds=time.perf_counter() - t0, samples=samples)


def check_lock_step(model: nn.Module, state: ConstraintState, world: World) -> None:
    """Raise unless every rank holds the same weights and lambda as rank 0 (bitwise)."""
    if not world.distributed:
        return
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]
                     + [torch.tensor([state.lambda_, state.c_hat], dtype=torch.float64,
                                     device=next(model.parameters()).device)])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    mismatch = torch.tensor([float(not torch.equal(reference, flat))], dtype=torch.float64, device=flat.device)
    dist.all_reduce(mismatch, op=dist.ReduceOp.SUM)
    if mismatch.item() > 0:
        raise RuntimeError(f"{int(mismatch.item())} rank(s) diverged from rank 0 after training")


def world_from_env(n_shards: int | None) -> World:
    """World from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(rank=int(os.environ.get("RANK", "0")), world_size=world_size,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), n_shards=n_shards or world_size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.distributed",
        description="Data-parallel training of one model with DistributedDataParallel; launch with "
                    "`torchrun --nproc_per_node N -m pipelines.distributed ...` (gloo on CPU, nccl on GPUs). "
                    "Without torchrun it trains in one process. Rank 0 writes the outputs of `vhp train`.")
    p.add_argument("--data", required=True, help="zarr group from `vhp prepare`")
    p.add_argument("--params", default="params.yaml", help="params file (base:, train:)")
    p.add_argument("--out", required=True, help="model folder to write (models/<dataset>/<model>)")
    p.add_argument("--dataset", default=None, help="data set name, a key of train.kappa (default: the group's)")
    p.add_argument("--model", default=None, choices=["vhp", "vhp-geco", "iwae", "vae", "vamp"],
                   help="model (default: the first of train.models)")
    p.add_argument("--shards", type=int, default=None,
                   help="pieces of each global batch that draw their own noise (default: the number of "
                        "processes); keep it fixed to compare runs on different numbers of processes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (quick checks)")
    p.add_argument("--progress", action="store_true", help="print lambda and C_hat every 50 steps (rank 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipelines.params import read_yaml, section
    from preprocessing.store import open_dataset

    args = build_parser().parse_args(argv)
    raw = read_yaml(args.params)
    base = section(BaseParams, raw, "base", args.params)
    params = section(TrainParams, raw, "train", args.params)
    world = world_from_env(args.shards)
    device = resolve_device(base.device)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if world.distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        # One process a core unless base.threads says otherwise: ranks share the machine's cores.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        set_threads(base.threads or max(1, (os.cpu_count() or 1) // local_world))
        dataset = open_dataset(Path(args.data))
        name = args.dataset or str(dataset.attrs.get("dataset", Path(args.data).stem))
        model_name = args.model or params.models[0]
        if params.batch_size % world.n_shards:
            raise ValueError(f"train.batch_size ({params.batch_size}) must be a multiple of the shards "
                             f"({world.n_shards})")
        data = load_training_data(dataset, params)
        config = model_config(params, name, model_name, dataset.x_shape, dataset.likelihood)
        ccfg = constraint_config(params, name)
        set_determinism(base.seed)
        model = build_model(config)
        result = train_data_parallel(model, ccfg, data, params, base.seed, world, device,
                                     max_steps=args.max_steps, progress=args.progress)
        check_lock_step(model, result.state, world)
        if world.rank == 0:
            model.to("cpu")
            test_terms = evaluate_elbo(model, dataset, base.seed)
            metrics = write_outputs(result, config, ccfg, params, base.seed, Path(args.out), test_terms, name)
            print(f"{model_name} on {name}: {result.step} steps on {world.world_size} process(es), "
                  f"{world.n_shards} shard(s) a batch, lambda {metrics['final_lambda']:.4g}, "
                  f"{result.seconds:.1f} s; wrote {args.out}")
        if world.distributed:
            dist.barrier()
    finally:
        if world.distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
