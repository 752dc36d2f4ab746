"""One optimisation step with the lambda rule of the model (METHOD §3-4).

Order within a step: forward pass; the batch statistics (C_ba and the reported terms,
averaged over processes by the `reduce` hook); C_ba -> new ConstraintState; the
objective the new state calls for (constraint.objective_mode): the reconstruction term
alone in REWO's initial phase, else regulariser_term + lambda * nll with the new lambda;
backward; the prior's parameters (Theta, Phi) lose their gradients while the new state is
not prior_active; then the optimiser step. A non-finite loss or gradient skips the step
and leaves the state where it was, so one bad batch cannot poison lambda or C_hat.

The same function is the step of one process and of data-parallel training: the DDP
launcher passes `forward` (its DDP-wrapped module, whose forward returns ObjectiveParts,
so that DDP's hooks average the gradients) and `reduce` (an all-reduce mean of the
statistics vector, so that every process sees the global batch's C and takes the same
lambda step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .config import ConstraintConfig
from .constraint import ConstraintState, objective_mode, update_constraint
from .models import STATISTICS, LatentVariableModel, LossTerms, ObjectiveParts

Forward = Callable[[torch.Tensor, "torch.Generator | None"], ObjectiveParts]
Reduce = Callable[[torch.Tensor], torch.Tensor]


def grads_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True iff every gradient entry of `parameters` is finite (parameters without a grad are skipped).

    One reduction over all gradients, hence one host sync: the total norm is non-finite
    iff some entry is.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)))


def _loss_terms(
    total: torch.Tensor, stats: list[float], lambda_: float, kappa_sq: float | None, finite: bool, mode: str
) -> LossTerms:
    # stats: ObjectiveParts.statistics() as floats, in the order of STATISTICS.
    reconstruction, nll, regulariser, elbo = stats[:4]
    return LossTerms(
        total=total,
        reconstruction=reconstruction,
        nll=nll,
        regulariser=regulariser,
        lambda_=float(lambda_),
        constraint=0.0 if kappa_sq is None else reconstruction - kappa_sq,
        elbo=elbo,
        finite=finite,
        mode=mode,
    )


def train_step(
    model: LatentVariableModel,
    optimiser: torch.optim.Optimizer,
    batch: torch.Tensor,
    state: ConstraintState,
    cfg: ConstraintConfig,
    generator: torch.Generator | None = None,
    *,
    forward: Forward | None = None,
    reduce: Reduce | None = None,
) -> tuple[ConstraintState, LossTerms]:
    """Forward, lambda update by the model's rule, backward and optimiser step on one batch.

    forward(batch, generator) -> ObjectiveParts: default model.objective_parts.
    reduce(stats) -> stats: the float64 vector of ObjectiveParts.statistics() (this
    process's batch means and non-finite flag) averaged over processes; default identity.
    C_ba for the lambda rule and every float of the returned LossTerms come from the
    reduced vector; LossTerms.total is this process's scalar that was back-propagated.

    Returns the new state and the LossTerms at the new lambda (mode 'reconstruction' or
    'lagrangian'; total detached). While the new state is not prior_active the prior's
    parameters get no update (their grads are set to None, which optimisers skip, so no
    momentum leaks in either). On a non-finite loss (on any process) or gradient the step
    is skipped: returns (state unchanged, terms with finite=False).
    """
    rule = model.rule
    forward = model.objective_parts if forward is None else forward
    optimiser.zero_grad(set_to_none=True)
    parts = forward(batch, generator)
    stats_tensor = parts.statistics()
    if reduce is not None:
        stats_tensor = reduce(stats_tensor)
    stats = stats_tensor.tolist()  # the step's one host sync for C and the reported terms

    def terms(total: torch.Tensor, s: ConstraintState, finite: bool, mode: str) -> LossTerms:
        kappa_sq = None if rule == "none" else s.kappa_sq
        if reduce is not None:  # report the objective of the whole (all-process) batch, not this process's share
            nll, regulariser_term = stats[STATISTICS.index("nll")], stats[STATISTICS.index("regulariser_term")]
            value = nll if mode == "reconstruction" else regulariser_term + s.lambda_ * nll
            total = torch.tensor(value, dtype=torch.float64)
        return _loss_terms(total.detach(), stats, s.lambda_, kappa_sq, finite, mode)

    if stats[-1] > 0:  # some process's batch gave a non-finite term
        return state, terms(parts.total(state.lambda_), state, False, objective_mode(state, cfg, rule))
    new_state = update_constraint(state, stats[0], cfg, rule)
    mode = objective_mode(new_state, cfg, rule)
    total = parts.reconstruction_only() if mode == "reconstruction" else parts.total(new_state.lambda_)
    if forward is not None and mode == "reconstruction":
        # Data-parallel: DDP waits for a gradient of every parameter its outputs reach, the
        # prior's too; a zero-weighted full objective gives them one (exact zeros, dropped below).
        total = total + 0.0 * parts.total(new_state.lambda_)
    total.backward()
    if not grads_finite(p for p in model.parameters() if p.requires_grad):
        optimiser.zero_grad(set_to_none=True)
        return state, terms(total, state, False, mode)
    if not new_state.prior_active:
        for p in model.prior_parameters():
            p.grad = None
    optimiser.step()
    return new_state, terms(total, new_state, True, mode)


def rng_states(device: torch.device | str) -> dict[str, object]:
    """The generators a training step draws from: the CPU's, and every CUDA device's when training on CUDA.

    Plain tensors (a list of them for CUDA), so a checkpoint holding them still loads with
    ``torch.load(weights_only=True)``. Resuming with `restore_rng_states` continues the same
    noise stream, so a resumed run ends with the weights of an uninterrupted one.
    """
    cuda = torch.device(device).type == "cuda"
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if cuda else []}


def restore_rng_states(states: dict[str, object], device: torch.device | str) -> None:
    """Put back the generators saved by `rng_states` (the CUDA ones when resuming on CUDA).

    Raises ValueError when the saved CUDA states do not match this machine's devices.
    """
    torch.set_rng_state(states["torch_rng"])  # type: ignore[arg-type]
    cuda_states = list(states.get("cuda_rng") or [])  # type: ignore[call-overload]
    if torch.device(device).type == "cuda" and cuda_states:
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(f"the RNG states of {len(cuda_states)} CUDA device(s) were saved, "
                             f"this machine has {torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(cuda_states)
