"""Data-parallel training with torch DistributedDataParallel (DDP): a launcher around ``train_one``.

    torchrun --standalone --nproc_per_node 2 -m pipelines.distributed \\
        --data data/processed/mocap.zarr --params params.yaml --out models/mocap/vhp --model vhp

Every process (rank) runs the same ``pipelines.train.flow.train_one`` -> ``fit`` ->
``vhp_core.train_step`` as ``vhp train``; this module only supplies the
``StepHooks`` that make it data-parallel:

- ``batch``: the rank takes its shards of every global batch of
  ``train.batch_size`` samples. The global batch is cut into ``--shards`` pieces
  (default: the number of processes); piece s of attempt t draws its
  reparameterisation noise and dynamic binarisation from a generator seeded by
  (seed, t, s). A sample's noise therefore depends on where it sits in the global
  batch and not on how many processes share the work, so one process holding
  both pieces and two processes holding one each end with the same weights up to
  floating-point summation order (tests/test_distributed.py). The last, partial
  batch of an epoch is cut into nearly equal pieces.
- ``forward``: the objective of the rank's shards through the DDP wrapper, so
  DDP's backward hooks average the gradients across ranks.
- ``reduce``: one all-reduce of the step's statistics (C, the reported terms and
  the non-finite flag), so the REWO/GECO state takes the same value on every rank
  and a non-finite batch anywhere skips the step everywhere.
- ``finish``: after the last step, on every rank, one broadcast and one all-reduce:
  the ranks check that they hold rank 0's weights and lambda, and agree whether the
  run is refused (``train.require_constraint``). A refusal is raised on every rank
  together, each ending with the same one-line error (exit status 2), so no rank is
  left waiting in a collective.

Rank 0 writes the resumption checkpoint and the outputs of ``vhp train`` after the
last collective; the other ranks exit without waiting for it. Every rank resumes
from the same checkpoint after an interruption.

Backends: gloo on CPU, nccl when base.device resolves to CUDA (one GPU a process,
cuda:LOCAL_RANK; the data of each rank live on its GPU, the collectives run on the
parameters' device). Based on the PyTorch DDP and torchrun documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.train.data import TrainingData
from pipelines.errors import TrainingError, say_error, user_errors
from pipelines.train.fit import StepHooks
from vhp_core import MODEL_NAMES, ConstraintState, ObjectiveParts


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


def shard_seed(seed: int, attempt: int, shard: int) -> int:
    """Seed of one shard's noise at one attempted global step (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([seed, attempt, shard]).generate_state(1, dtype=np.uint64)[0])


def rank_slices(batch: torch.Tensor, world: World) -> list[torch.Tensor]:
    """This rank's shards of a global batch of indices (nearly equal pieces when it does not divide)."""
    if len(batch) < world.n_shards:
        raise ValueError(f"a global batch of {len(batch)} cannot feed {world.n_shards} shards")
    pieces = torch.tensor_split(batch, world.n_shards)
    return list(pieces[world.first_shard:world.first_shard + world.shards_per_rank])


class ShardedObjective(nn.Module):
    """forward(shards, generators) -> the objective's parts averaged over this rank's shards.

    Wrapping this (and not the model) in DDP makes the objective the output of
    DDP's forward, so its backward hooks fire and average the gradients across
    ranks. Each shard uses its own generator for every random draw.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, shards: list[torch.Tensor], generators: list[torch.Generator]) -> ObjectiveParts:
        parts = [self.model.objective_parts(x, g) for x, g in zip(shards, generators)]
        if len(parts) == 1:
            return parts[0]
        return ObjectiveParts(*(torch.stack([getattr(p, f.name) for p in parts]).mean()
                                for f in dataclasses.fields(ObjectiveParts)))


def data_parallel_hooks(model: nn.Module, data: TrainingData, world: World, seed: int,
                        device: torch.device) -> StepHooks:
    """The StepHooks that make ``fit`` data-parallel for this rank."""
    binarise = data.binarise
    # binarised per shard below; on a GPU the rows live there (no host copy a step)
    rows_of = dataclasses.replace(data.on_device(device), binarise=False)
    objective: nn.Module = ShardedObjective(model)
    if world.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        # the prior takes no gradient in REWO's initial phase: its parameters are unused there
        objective = DistributedDataParallel(objective, device_ids=device_ids, find_unused_parameters=True)

    def batch(_: TrainingData, idx: torch.Tensor, attempt: int):
        shards, generators = [], []
        for s, rows in zip(range(world.first_shard, world.first_shard + world.shards_per_rank),
                           rank_slices(idx, world)):
            g = torch.Generator(device=device).manual_seed(shard_seed(seed, attempt, s))
            xb = rows_of.batch(rows).to(device)
            # dynamic binarisation with the shard's generator, so it too is independent of placement
            shards.append(torch.bernoulli(xb, generator=g) if binarise else xb)
            generators.append(g)
        return shards, generators

    def reduce(stats: torch.Tensor) -> torch.Tensor:
        if world.distributed:
            stats = stats.clone()
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            stats = stats / world.world_size
        return stats

    def finish(model: nn.Module, state: ConstraintState, refuse: bool) -> bool:
        return finish_together(model, state, refuse, world)

    return StepHooks(batch=batch, forward=objective, reduce=reduce, main=world.rank == 0, finish=finish)


def finish_together(model: nn.Module, state: ConstraintState, refuse: bool, world: World) -> bool:
    """On every rank after the last step: True when any rank refuses the run.

    Raises TrainingError on every rank unless all hold the same weights and lambda as
    rank 0 (bitwise). Two collectives on the parameters' device (a broadcast, then one
    all-reduce of the mismatch and refusal flags), which every rank reaches before
    anything else can fail, so no rank waits for one that has left.
    """
    if not world.distributed:
        return refuse
    device = next(model.parameters()).device
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]
                     + [torch.tensor([state.lambda_, state.c_hat], dtype=torch.float64, device=device)])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    flags = torch.tensor([float(not torch.equal(reference, flat)), float(refuse)], dtype=torch.float64,
                         device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    mismatched, refusing = (int(v) for v in flags.tolist())
    if mismatched:
        raise TrainingError(f"{mismatched} rank(s) diverged from rank 0 after training")
    return refusing > 0


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
                    "Without torchrun it trains in one process. Same loop, checkpoints and outputs as "
                    "`vhp train`; an interrupted run started again resumes from its last checkpoint.")
    p.add_argument("--data", required=True, help="zarr group from `vhp prepare`")
    p.add_argument("--params", default="params.yaml", help="params file (base:, train:)")
    p.add_argument("--out", required=True, help="model folder to write (models/<dataset>/<model>)")
    p.add_argument("--checkpoints", default=None,
                   help="resumption checkpoint folder (default: checkpoints/<dataset>/<model>-ddp)")
    p.add_argument("--dataset", default=None, help="data set name, a key of train.kappa (default: the group's)")
    p.add_argument("--model", default=None, choices=MODEL_NAMES,
                   help="model (default: the first of train.models)")
    p.add_argument("--shards", type=int, default=None,
                   help="pieces of each global batch that draw their own noise (default: the number of "
                        "processes); keep it fixed to compare runs on different numbers of processes")
    p.add_argument("--progress", action="store_true", help="show a progress bar (rank 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipelines.params import BaseParams, TrainParams, read_yaml, section
    from pipelines.runtime import resolve_device, set_threads
    from pipelines.train.flow import open_training_set, train_one

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
        dataset, _ = open_training_set(Path(args.data), params)
        name = args.dataset or str(dataset.attrs.get("dataset", Path(args.data).stem))
        model_name = args.model or params.models[0]
        checkpoints = Path(args.checkpoints or Path("checkpoints") / name / f"{model_name}-ddp")
        if world.rank == 0:
            checkpoints.mkdir(parents=True, exist_ok=True)

        def hooks(model: nn.Module, data: TrainingData) -> StepHooks:
            return data_parallel_hooks(model, data, world, base.seed, device)

        result, metrics = train_one(name, model_name, Path(args.data), Path(args.out),
                                    checkpoints / "checkpoint.pt", params, base.seed, str(device),
                                    progress=args.progress, hooks=hooks)
        if metrics is not None:
            (checkpoints / "checkpoint.pt").unlink(missing_ok=True)
            print(f"{model_name} on {name}: {result.step} steps on {world.world_size} process(es), "
                  f"{world.n_shards} shard(s) a batch, lambda {metrics['final_lambda']:.4g}, "
                  f"{result.seconds:.1f} s; wrote {args.out}")
    except user_errors() as err:
        # every rank that meets it says so in the same one line (a refusal is decided together)
        say_error(f"vhp distributed: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        return 2
    finally:
        if world.distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
