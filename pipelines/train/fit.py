"""The training loop: one ``fit`` for one process and for data-parallel training.

``fit`` runs ``vhp_core.train_step`` over epochs of shuffled batches with the
learning-rate schedule, a progress bar, atomic resumption checkpoints and the
non-finite guard. What differs between one process and DDP is a small
``StepHooks`` record (how a rank takes its share of a global batch, the
DDP-wrapped forward pass, and the all-reduce of the step's statistics), so
data-parallel training gets checkpoint/resume, the last partial batch and the
same errors as a single process.

Resumption: the checkpoint holds weights, optimiser, RNG states, the constraint
state (lambda, C_hat, the phase and, with ``kappa: auto``, the chosen kappa),
the epoch permutation and the curves so far, tagged with a fingerprint of the
config and the data. A rerun with the same fingerprint continues at the
checkpoint's step and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from pipelines.checkpoint import CheckpointError, atomic_torch_save, config_to_dict, load_payload
from pipelines.train.data import TrainingData
from pipelines.params import TrainParams
from pipelines.train.validation import Selection, Validation
from pipelines.errors import NonFiniteTrainingError, TrainingError
from vhp_core import ConstraintConfig, ConstraintState, ModelConfig, constraint_rule, train_step
from vhp_core.training import restore_rng_states, rng_states

CURVE_COLUMNS = (
    "step", "epoch", "lr", "total", "reconstruction", "nll", "regulariser",
    "lambda", "c_hat", "constraint", "elbo", "prior_active",
)


def learning_rate(step: int, total_steps: int, params: TrainParams) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then the schedule."""
    base = params.lr
    if params.warmup_steps and step < params.warmup_steps:
        return base * (step + 1) / params.warmup_steps
    if params.lr_schedule == "constant" or total_steps <= params.warmup_steps:
        return base
    progress = (step - params.warmup_steps) / max(1, total_steps - params.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    floor = params.lr_min_factor
    if params.lr_schedule == "cosine":
        return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    # step: drop to the floor in three equal decades of training
    drops = min(int(progress * 3), 3)
    return base * floor ** (drops / 3)


def total_steps(n: int, params: TrainParams) -> int:
    """Optimiser steps of a run: every epoch ends with its last, possibly partial, batch."""
    return params.epochs * math.ceil(n / params.batch_size)


def fingerprint(config: ModelConfig, ccfg: ConstraintConfig, params: TrainParams, seed: int, data_id: str) -> str:
    blob = json.dumps(
        {"config": config_to_dict(config), "constraint": dataclasses.asdict(ccfg),
         "train": dataclasses.asdict(params), "seed": seed, "data": data_id},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StepHooks:
    """What data-parallel training changes in a step; the defaults are one process.

    batch(data, idx, attempt) -> (batch, generator): this process's share of the
    global batch ``idx`` and the noise generator(s) it draws from (``attempt``
    counts the batches tried, skipped ones included, so noise is reproducible).
    forward and reduce are handed to ``vhp_core.train_step``. ``main`` is the
    process that writes checkpoints and shows progress. finish(model, state, refuse)
    runs on every process once the last step is done and returns whether any process
    refuses the run (data-parallel: a collective that also checks the processes agree).
    """

    batch: Callable[[TrainingData, torch.Tensor, int], tuple[Any, Any]] | None = None
    forward: Callable[..., Any] | None = None
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    main: bool = True
    finish: Callable[[torch.nn.Module, ConstraintState, bool], bool] | None = None


@dataclass
class FitResult:
    model: torch.nn.Module
    state: ConstraintState
    curves: list[list[float]]
    step: int
    epochs: int
    resumed_from: int
    skipped_steps: int
    prior_activation_step: int | None
    best_c_hat: float
    last_epoch_terms: dict[str, float]
    seconds: float
    samples: int
    selection: Selection = dataclasses.field(default_factory=Selection)  # val history; model = its best


@dataclass
class _Progress:
    """Everything a checkpoint carries besides weights and optimiser."""

    state: ConstraintState
    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    attempts: int = 0
    perm: torch.Tensor | None = None
    curves: list[list[float]] = dataclasses.field(default_factory=list)
    skipped: int = 0
    activation_step: int | None = None
    best_c_hat: float = math.inf
    epoch_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    selection: Selection = dataclasses.field(default_factory=Selection)


def _save(path: Path, model, optimiser, config, ccfg, fp: str, gen: torch.Generator, p: _Progress,
          device: torch.device) -> None:
    atomic_torch_save(path, {
        "format": 2,
        "config": config_to_dict(config),
        "constraint_config": dataclasses.asdict(ccfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimiser": optimiser.state_dict(),
        "constraint_state": dataclasses.asdict(p.state),
        "step": p.step, "epoch": p.epoch, "batch_index": p.batch_index, "attempts": p.attempts,
        "perm": p.perm,
        "selection": p.selection.to_dict(),
        **rng_states(device),  # the CPU generator, and the CUDA ones when training there
        "shuffle_rng": gen.get_state(),
        "curves": p.curves,
        "fingerprint": fp,
        "skipped_steps": p.skipped,
        "prior_activation_step": -1 if p.activation_step is None else p.activation_step,
        "best_c_hat": p.best_c_hat,
        "epoch_sums": p.epoch_sums,
    })


def _resume(path: Path, fp: str, model, optimiser, gen: torch.Generator, device) -> _Progress | None:
    if not path.exists():
        return None
    try:
        ck = load_payload(path)
    except CheckpointError as err:
        raise TrainingError(f"{err}; delete it to start afresh") from err
    if ck.get("fingerprint") != fp or ck.get("format") != 2:
        print(f"{path}: config or data changed since this checkpoint; starting afresh")
        return None
    model.load_state_dict(ck["state_dict"])
    model.to(device)
    optimiser.load_state_dict(ck["optimiser"])
    try:
        restore_rng_states(ck, device)
    except ValueError as err:
        raise TrainingError(f"{path}: {err}; delete it to start afresh") from err
    gen.set_state(ck["shuffle_rng"])
    return _Progress(
        state=ConstraintState(**ck["constraint_state"]),
        step=int(ck["step"]), epoch=int(ck["epoch"]), batch_index=int(ck["batch_index"]),
        attempts=int(ck["attempts"]), perm=ck["perm"], curves=[list(r) for r in ck["curves"]],
        skipped=int(ck["skipped_steps"]),
        activation_step=None if ck["prior_activation_step"] < 0 else int(ck["prior_activation_step"]),
        best_c_hat=float(ck["best_c_hat"]), epoch_sums=dict(ck["epoch_sums"]),
        selection=Selection.from_dict(ck.get("selection")),
    )


def iterate_batches(perm: torch.Tensor, batch_size: int, start: int) -> Iterator[tuple[int, torch.Tensor]]:
    n_batches = math.ceil(len(perm) / batch_size)
    for b in range(start, n_batches):
        yield b, perm[b * batch_size:(b + 1) * batch_size]


def _default_batch(data: TrainingData, idx: torch.Tensor, attempt: int) -> tuple[torch.Tensor, None]:
    return data.batch(idx), None


class _Interrupted(Exception):
    pass


def fit(
    model: torch.nn.Module,
    config: ModelConfig,
    ccfg: ConstraintConfig,
    data: TrainingData,
    params: TrainParams,
    seed: int,
    checkpoint_path: Path,
    progress: bool = True,
    stop_after_steps: int | None = None,
    device: torch.device | str = "cpu",
    hooks: StepHooks = StepHooks(),
    on_progress: Callable[[int, int, ConstraintState], None] | None = None,
    validation: Validation | None = None,
) -> FitResult:
    """Train ``model`` on ``data``; resume from ``checkpoint_path`` when it matches.

    ``stop_after_steps`` ends the loop early (as an interruption would), leaving
    the last checkpoint behind; it exists for tests and for time-boxed runs.
    ``on_progress(step, total_steps, state)`` is called at every percent of the run
    (the Prefect flow turns it into a progress artifact).
    ``validation`` scores the val split every ``validation.every`` steps; a run that ends
    (not one stopped early) leaves the model at its best val ELBO among the steps where
    the bound was the model's own (``pipelines.train.validation``).
    """
    t0 = time.perf_counter()
    fp = fingerprint(config, ccfg, params, seed, data.data_id)
    device = torch.device(device)
    model.to(device)
    data = data.on_device(device)  # on a GPU: small sets live there, streamed batches come pinned
    # fused: one kernel for the whole update (Adam is a quarter of a small step on CPU)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr, fused=True)
    gen = torch.Generator().manual_seed(seed)
    checkpoint_path = Path(checkpoint_path)
    p = _resume(checkpoint_path, fp, model, optimiser, gen, device)
    resumed_from = 0 if p is None else p.step
    if p is None:
        p = _Progress(state=ConstraintState.initial(ccfg, constraint_rule(config.model)))
        p.activation_step = 0 if p.state.prior_active else None
    make_batch = hooks.batch or _default_batch
    steps = total_steps(data.n, params)
    bar = tqdm(total=steps, initial=p.step, disable=not (progress and hooks.main), unit="step",
               desc=f"train {config.model}", mininterval=1.0, dynamic_ncols=True)
    consecutive_bad = samples = 0
    model.train()
    try:
        while p.epoch < params.epochs:
            if p.batch_index == 0 or p.perm is None:
                p.perm = data.epoch_permutation(gen)
                p.epoch_sums = {}
            order = p.perm.to(data.device)  # indices where the rows are: no host copy a step
            for b, idx in iterate_batches(order, params.batch_size, p.batch_index):
                lr = learning_rate(p.step, steps, params)
                for group in optimiser.param_groups:
                    group["lr"] = lr
                batch, generator = make_batch(data, idx, p.attempts)
                if isinstance(batch, torch.Tensor):
                    batch = batch.to(device, non_blocking=True)
                p.attempts += 1
                new_state, terms = train_step(model, optimiser, batch, p.state, ccfg, generator,
                                              forward=hooks.forward, reduce=hooks.reduce)
                samples += len(idx)
                p.batch_index = b + 1
                if not terms.finite:
                    p.skipped += 1
                    consecutive_bad += 1
                    if consecutive_bad >= params.max_nonfinite:
                        raise NonFiniteTrainingError(
                            f"{consecutive_bad} non-finite losses or gradients in a row at step {p.step}; "
                            f"training stopped, last good checkpoint kept at {checkpoint_path}")
                    continue
                consecutive_bad = 0
                p.state = new_state
                p.step += 1
                p.best_c_hat = min(p.best_c_hat, p.state.c_hat)
                if p.activation_step is None and p.state.prior_active:
                    p.activation_step = p.step
                total = float(terms.total.detach())
                values = {"total": total, "reconstruction": terms.reconstruction, "nll": terms.nll,
                          "regulariser": terms.regulariser, "elbo": terms.elbo}
                for key, value in values.items():
                    p.epoch_sums[key] = p.epoch_sums.get(key, 0.0) + float(value) * len(idx)
                p.epoch_sums["n"] = p.epoch_sums.get("n", 0.0) + len(idx)
                if p.step % params.log_every == 0 or p.step == steps:
                    p.curves.append([
                        p.step, p.epoch, lr, total, terms.reconstruction, terms.nll, terms.regulariser,
                        p.state.lambda_, p.state.c_hat, terms.constraint, terms.elbo, float(p.state.prior_active),
                    ])
                bar.update(1)
                if p.step % 20 == 0:
                    bar.set_postfix(lam=f"{p.state.lambda_:.3g}", C=f"{p.state.c_hat:.3g}",
                                    prior="on" if p.state.prior_active else "off", refresh=False)
                if on_progress is not None and hooks.main and p.step % max(1, steps // 100) == 0:
                    on_progress(p.step, steps, p.state)
                if validation is not None and hooks.main and validation.due(p.step, p.step == steps):
                    validation.consider(p.selection, p.step, model, p.state, constraint_rule(config.model))
                if p.step % params.checkpoint_every == 0 and hooks.main:
                    _save(checkpoint_path, model, optimiser, config, ccfg, fp, gen, p, device)
                if stop_after_steps is not None and p.step >= stop_after_steps:
                    raise _Interrupted()
            p.epoch += 1
            p.batch_index = 0
        if p.selection.best_state is not None and hooks.main:
            model.load_state_dict(p.selection.best_state)
    except _Interrupted:
        pass
    finally:
        bar.close()
    n = max(p.epoch_sums.get("n", 0.0), 1.0)
    return FitResult(model=model, state=p.state, curves=p.curves, step=p.step, epochs=p.epoch,
                     resumed_from=resumed_from, skipped_steps=p.skipped, prior_activation_step=p.activation_step,
                     best_c_hat=p.best_c_hat,
                     last_epoch_terms={k: v / n for k, v in p.epoch_sums.items() if k != "n"},
                     seconds=time.perf_counter() - t0, samples=samples, selection=p.selection)
