"""One optimisation step of the Lagrangian with the lambda rule of the model (METHOD §3-4).

Order within a step, as in METHOD §4: forward pass; C_ba -> new ConstraintState (lambda,
C_hat, prior_active); total = regulariser_term + lambda * nll with the new lambda;
backward; the prior's parameters (Theta, Phi) lose their gradients while the new state
is not prior_active; then the optimiser step. A non-finite loss or gradient skips the
step and leaves the state where it was, so one bad batch cannot poison lambda or C_hat.
"""

from __future__ import annotations

import math

import torch

from .config import ConstraintConfig
from .constraint import ConstraintState, update_constraint
from .models import LatentVariableModel, LossTerms


def _grads_finite(parameters: list[torch.nn.Parameter]) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    # One reduction over all gradients: the norm is non-finite iff some entry is.
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)))


def train_step(
    model: LatentVariableModel,
    optimiser: torch.optim.Optimizer,
    batch: torch.Tensor,
    state: ConstraintState,
    cfg: ConstraintConfig,
    generator: torch.Generator | None = None,
) -> tuple[ConstraintState, LossTerms]:
    """Forward, lambda update by the model's rule, backward and optimiser step on one batch.

    Returns the new state and the LossTerms at the new lambda. While the new state is not
    prior_active the prior's parameters get no update (their grads are set to None, which
    optimisers skip, so no momentum leaks in either). On a non-finite loss or gradient the
    step is skipped: returns (state unchanged, terms with finite=False).
    """
    rule = model.rule
    kappa = None if rule == "none" else cfg.kappa
    optimiser.zero_grad(set_to_none=True)
    parts = model.objective_parts(batch, generator)
    c_batch = float(parts.reconstruction)
    if not math.isfinite(c_batch):
        return state, parts.terms(state.lambda_, kappa, finite=False)
    new_state = update_constraint(state, c_batch, cfg, rule)
    terms = parts.terms(new_state.lambda_, kappa)
    if not torch.isfinite(terms.total):
        return state, parts.terms(state.lambda_, kappa, finite=False)
    terms.total.backward()
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not _grads_finite(parameters):
        optimiser.zero_grad(set_to_none=True)
        return state, parts.terms(state.lambda_, kappa, finite=False)
    if not new_state.prior_active:
        for p in model.prior_parameters():
            p.grad = None
    optimiser.step()
    return new_state, terms
