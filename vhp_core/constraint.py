"""The Lagrange multiplier lambda of the reconstruction constraint: REWO and GECO updates.

Pure functions of (state, C_ba, config), exactly METHOD §4:
- GECO (Rezende & Viola 2018): lambda <- lambda * exp(nu * delta), both directions,
  prior trained from step 1.
- REWO (Klushyn et al. 2019): the same while the constraint is violated (delta > 0);
  once satisfied, lambda moves towards 1 by exp(nu * tanh(beta (lambda - 1)) * delta)
  and never crosses 1; the prior learns only from the first satisfied step on.
- 'none' (plain ELBO / IWAE): lambda fixed at 1, prior always trained.
delta = C_hat - kappa^2, with C_hat the moving average of the per-dimension
reconstruction error C_ba (C_hat = C_ba at the first step). lambda is clipped to
[lambda_min, lambda_max] after every update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .config import ConstraintConfig

Rule = Literal["rewo", "geco", "none"]

# exp() of more than this overflows float64; lambda is clipped to lambda_max anyway.
_MAX_LOG_FACTOR = 700.0


def constraint_rule(model_name: str) -> Rule:
    """The lambda rule of a model: 'vhp' -> 'rewo', 'vhp-geco' -> 'geco', others -> 'none'."""
    if model_name == "vhp":
        return "rewo"
    if model_name == "vhp-geco":
        return "geco"
    if model_name in ("iwae", "vae", "vamp"):
        return "none"
    raise ValueError(f"unknown model name {model_name!r}")


@dataclass(frozen=True)
class ConstraintState:
    """lambda_ (the multiplier), c_hat (moving average of C), step (updates so far), prior_active."""

    lambda_: float
    c_hat: float
    step: int
    prior_active: bool

    @classmethod
    def initial(cls, cfg: ConstraintConfig, rule: str) -> ConstraintState:
        """State before step 1: lambda_init (1 for 'none'); prior active from the start unless REWO."""
        if rule == "rewo":
            return cls(lambda_=float(cfg.lambda_init), c_hat=0.0, step=0, prior_active=False)
        if rule == "geco":
            return cls(lambda_=float(cfg.lambda_init), c_hat=0.0, step=0, prior_active=True)
        if rule == "none":
            return cls(lambda_=1.0, c_hat=0.0, step=0, prior_active=True)
        raise ValueError(f"rule must be 'rewo', 'geco' or 'none', got {rule!r}")


def moving_average(c_hat: float, c_batch: float, alpha: float, step: int) -> float:
    """C_hat after a step: C_ba at the first step (step == 0), else alpha C_hat + (1 - alpha) C_ba."""
    if step == 0:
        return float(c_batch)
    return alpha * c_hat + (1.0 - alpha) * c_batch


def _checked(c_batch: float) -> float:
    c = float(c_batch)
    if not math.isfinite(c):
        raise ValueError(f"c_batch (the batch reconstruction error) must be finite, got {c_batch!r}")
    return c


def _scaled(lambda_: float, log_factor: float) -> float:
    return lambda_ * math.exp(min(log_factor, _MAX_LOG_FACTOR))


def _clip(lambda_: float, cfg: ConstraintConfig) -> float:
    return min(max(lambda_, cfg.lambda_min), cfg.lambda_max)


def rewo_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """One REWO step (METHOD §4) from the batch reconstruction error C_ba."""
    c_hat = moving_average(state.c_hat, _checked(c_batch), cfg.alpha, state.step)
    delta = c_hat - cfg.kappa**2
    lam = state.lambda_
    if delta > 0:
        lam = _scaled(lam, cfg.nu * delta)
    else:
        proposal = _scaled(lam, cfg.nu * math.tanh(cfg.beta * (lam - 1.0)) * delta)
        lam = max(proposal, 1.0) if lam >= 1.0 else min(proposal, 1.0)
    return ConstraintState(
        lambda_=_clip(lam, cfg),
        c_hat=c_hat,
        step=state.step + 1,
        prior_active=state.prior_active or delta <= 0,
    )


def geco_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """One GECO step: lambda <- clip(lambda * exp(nu * delta)); the prior is always active."""
    c_hat = moving_average(state.c_hat, _checked(c_batch), cfg.alpha, state.step)
    delta = c_hat - cfg.kappa**2
    return ConstraintState(
        lambda_=_clip(_scaled(state.lambda_, cfg.nu * delta), cfg),
        c_hat=c_hat,
        step=state.step + 1,
        prior_active=True,
    )


def fixed_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """Rule 'none': lambda stays 1 and the prior active; C_hat is still tracked for the logs."""
    c_hat = moving_average(state.c_hat, _checked(c_batch), cfg.alpha, state.step)
    return ConstraintState(lambda_=1.0, c_hat=c_hat, step=state.step + 1, prior_active=True)


def update_constraint(state: ConstraintState, c_batch: float, cfg: ConstraintConfig, rule: str) -> ConstraintState:
    """Dispatch to the update of `rule` ('rewo' | 'geco' | 'none')."""
    if rule == "rewo":
        return rewo_update(state, c_batch, cfg)
    if rule == "geco":
        return geco_update(state, c_batch, cfg)
    if rule == "none":
        return fixed_update(state, c_batch, cfg)
    raise ValueError(f"rule must be 'rewo', 'geco' or 'none', got {rule!r}")
