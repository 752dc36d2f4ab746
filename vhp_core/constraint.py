"""The Lagrange multiplier lambda of the reconstruction constraint: REWO, GECO and the fixed rule.

Pure functions (state, C_ba, config) -> state, exactly METHOD §4. Every rule first updates
the moving average C_hat of the per-dimension reconstruction error C_ba (C_hat = C_ba at
step 1) and counts the step; delta = C_hat - kappa^2.

- REWO, variant 'authors' (Klushyn et al. 2019; the authors' ConstrainedOptimization in
  argmax-ai/deep-variational-bayes-filters, which scales the KL by 1/lambda where we scale
  the reconstruction by lambda). Initial phase: the objective is the reconstruction term
  alone, lambda and the prior stay put; it ends at the first step with C_hat <= kappa^2.
  Constrained phase, for good: every `lambda_every` steps,
      g = 1 (delta > 0)  or  tanh(tau (lambda - 1)) (delta <= 0),
      m = clip(exp(nu g delta), step_min, step_max),  lambda <- clip(lambda m, lambda_min, lambda_max).
- REWO, variant 'earlier' (the earlier reading, an ablation): the Lagrangian from step 1
  with the prior frozen until the constraint is first met; lambda every step by
  exp(nu delta) while violated, by exp(nu tanh(tau (lambda - 1)) delta) while satisfied
  but never crossing 1; no step clip.
- GECO (Rezende & Viola 2018): lambda <- lambda exp(geco_nu delta) every step, both ways;
  the prior learns from step 1.
- 'none' (plain ELBO / IWAE): lambda = 1, the prior always learns; C_hat is still tracked.

kappa = None ('auto') adds a reconstruction-only phase to the constrained rules until
`auto_kappa` has chosen kappa^2 = (1 + auto_slack) C_ae from the plateau of C_hat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from .config import ConstraintConfig

Rule = Literal["rewo", "geco", "none"]
Mode = Literal["reconstruction", "lagrangian"]
RULES = ("rewo", "geco", "none")

# exp() of more than this overflows float64; lambda is clipped to lambda_max anyway.
_MAX_LOG_FACTOR = 700.0


def constraint_rule(model_name: str) -> Rule:
    """The lambda rule of a model: 'vhp', 'vhp-iw' -> 'rewo'; 'vhp-geco' -> 'geco'; 'iwae', 'vae', 'vamp' -> 'none'."""
    if model_name in ("vhp", "vhp-iw"):
        return "rewo"
    if model_name == "vhp-geco":
        return "geco"
    if model_name in ("iwae", "vae", "vamp"):
        return "none"
    raise ValueError(f"unknown model name {model_name!r}")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be 'rewo', 'geco' or 'none', got {rule!r}")


@dataclass(frozen=True)
class ConstraintState:
    """Where the lambda rule stands after `step` steps.

    lambda_: the multiplier. c_hat: moving average of C (0.0 before step 1). step: steps
    seen so far. prior_active: False in the initial phase (the prior Theta, Phi is frozen),
    True in the constrained phase; it never returns to False.
    kappa_sq: kappa^2 in force; None while kappa is 'auto' and not yet chosen.
    c_ae: (auto) the C_hat at which the reconstruction-only phase stopped improving.
    kappa_step: (auto) the step at which kappa was chosen. c_ref: (auto) C_hat at the last
    window boundary of the plateau rule (the first C_hat before the first boundary).
    """

    lambda_: float
    c_hat: float
    step: int
    prior_active: bool
    kappa_sq: float | None
    c_ae: float | None
    kappa_step: int | None
    c_ref: float

    @classmethod
    def initial(cls, cfg: ConstraintConfig, rule: str) -> ConstraintState:
        """State before step 1.

        lambda = lambda_init (1 for 'none'); kappa_sq = kappa^2, or None for kappa = auto.
        The prior starts frozen under REWO (initial phase) and under GECO while kappa is
        still to be chosen; otherwise it is active from the start.
        """
        _check_rule(rule)
        kappa_sq = None if cfg.kappa is None else float(cfg.kappa) ** 2
        if rule == "rewo":
            lambda_, prior_active = float(cfg.lambda_init), False
        elif rule == "geco":
            lambda_, prior_active = float(cfg.lambda_init), kappa_sq is not None
        else:
            lambda_, prior_active = 1.0, True
        return cls(
            lambda_=lambda_,
            c_hat=0.0,
            step=0,
            prior_active=prior_active,
            kappa_sq=kappa_sq,
            c_ae=None,
            kappa_step=None,
            c_ref=0.0,
        )


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


def _tracked(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """The state with C_hat updated by C_ba and the step counted (every rule, every step)."""
    c_hat = moving_average(state.c_hat, _checked(c_batch), cfg.alpha, state.step)
    return replace(state, c_hat=c_hat, step=state.step + 1)


def _scaled(lambda_: float, log_factor: float) -> float:
    return lambda_ * math.exp(min(log_factor, _MAX_LOG_FACTOR))


def _clip(lambda_: float, cfg: ConstraintConfig) -> float:
    return min(max(lambda_, cfg.lambda_min), cfg.lambda_max)


def auto_kappa(state: ConstraintState, cfg: ConstraintConfig) -> ConstraintState:
    """The plateau rule that chooses kappa when cfg.kappa is None (METHOD §4, 'kappa: auto').

    Applied at every step of the reconstruction-only phase while kappa_sq is None, to the
    state after its C_hat update, at step t = state.step:
    - t == 1: the first C_hat becomes the reference c_ref;
    - window: when t is a multiple of auto_window, the relative improvement over the
      window is rel = (c_ref - C_hat) / c_ref. If rel < auto_threshold (improved by less
      than that fraction, or got worse) C_hat has reached its plateau; otherwise
      c_ref <- C_hat and the phase goes on;
    - cap: at t >= auto_max_steps the phase stops whether or not C_hat has levelled off.
    On stopping: c_ae = C_hat, kappa_sq = (1 + auto_slack) * c_ae, kappa_step = t. Since
    C_hat <= kappa_sq, the same step meets the constraint. A state with kappa_sq already
    set is returned unchanged.
    """
    if state.kappa_sq is not None:
        return state
    t, c_hat = state.step, state.c_hat
    if t == 1:
        state = replace(state, c_ref=c_hat)
    plateau = False
    if t > 1 and t % cfg.auto_window == 0:
        # C >= 0, so a zero reference cannot improve further.
        rel = (state.c_ref - c_hat) / state.c_ref if state.c_ref > 0 else 0.0
        plateau = rel < cfg.auto_threshold
        if not plateau:
            state = replace(state, c_ref=c_hat)
    if plateau or t >= cfg.auto_max_steps:
        return replace(state, c_ae=c_hat, kappa_sq=(1.0 + cfg.auto_slack) * c_hat, kappa_step=t)
    return state


def rewo_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """One REWO step, variant 'authors' (METHOD §4), from the batch reconstruction error C_ba.

    Initial phase (prior_active False): kappa is chosen first if it is auto; the phase ends
    at the first step with C_hat <= kappa^2; lambda is not updated, not even at that step.
    Constrained phase: at steps that are multiples of lambda_every, lambda <- clip(lambda m)
    with m = clip(exp(nu g delta), step_min, step_max), g = 1 if delta > 0 else
    tanh(tau (lambda - 1)).
    """
    state = _tracked(state, c_batch, cfg)
    if not state.prior_active:
        state = auto_kappa(state, cfg)
        if state.kappa_sq is not None and state.c_hat <= state.kappa_sq:
            state = replace(state, prior_active=True)
        return state
    if state.step % cfg.lambda_every != 0:
        return state
    assert state.kappa_sq is not None  # chosen before the constrained phase began
    delta = state.c_hat - state.kappa_sq
    g = 1.0 if delta > 0 else math.tanh(cfg.tau * (state.lambda_ - 1.0))
    # Clipping exp(x) to [m_min, m_max] is clipping x to [log m_min, log m_max]: no overflow.
    log_m = min(max(cfg.nu * g * delta, math.log(cfg.step_min)), math.log(cfg.step_max))
    return replace(state, lambda_=_clip(state.lambda_ * math.exp(log_m), cfg))


def earlier_rewo_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """One REWO step, variant 'earlier' (the earlier reading of the paper; an ablation).

    Every step: lambda <- lambda exp(nu delta) while violated (delta > 0); while satisfied
    lambda <- lambda exp(nu tanh(tau (lambda - 1)) delta) but never past 1 (it moves
    towards 1 from either side); no step clip; clip to [lambda_min, lambda_max]. The prior
    is frozen until the first step with delta <= 0, the objective is the Lagrangian
    throughout. With kappa = auto, a reconstruction-only phase comes first and lambda
    starts moving at the step after kappa is chosen.
    """
    state = _tracked(state, c_batch, cfg)
    if state.kappa_sq is None:
        state = auto_kappa(state, cfg)
        if state.kappa_sq is not None:
            state = replace(state, prior_active=state.prior_active or state.c_hat <= state.kappa_sq)
        return state
    delta = state.c_hat - state.kappa_sq
    lam = state.lambda_
    if delta > 0:
        lam = _scaled(lam, cfg.nu * delta)
    else:
        proposal = _scaled(lam, cfg.nu * math.tanh(cfg.tau * (lam - 1.0)) * delta)
        lam = max(proposal, 1.0) if lam >= 1.0 else min(proposal, 1.0)
    return replace(state, lambda_=_clip(lam, cfg), prior_active=state.prior_active or delta <= 0)


def geco_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """One GECO step: lambda <- clip(lambda exp(geco_nu delta)) every step, both ways; prior active.

    With kappa = auto GECO first runs the same reconstruction-only phase as REWO (prior
    frozen, lambda fixed) until `auto_kappa` chooses kappa; from that step on the prior
    learns, and lambda moves from the next step.
    """
    state = _tracked(state, c_batch, cfg)
    if state.kappa_sq is None:
        state = auto_kappa(state, cfg)
        return replace(state, prior_active=state.kappa_sq is not None)
    delta = state.c_hat - state.kappa_sq
    return replace(state, lambda_=_clip(_scaled(state.lambda_, cfg.geco_nu * delta), cfg), prior_active=True)


def fixed_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """Rule 'none': lambda stays 1 and the prior active; C_hat is still tracked for the logs."""
    return replace(_tracked(state, c_batch, cfg), lambda_=1.0, prior_active=True)


def update_constraint(state: ConstraintState, c_batch: float, cfg: ConstraintConfig, rule: str) -> ConstraintState:
    """Dispatch to the update of `rule` ('rewo' by cfg.variant | 'geco' | 'none')."""
    _check_rule(rule)
    if rule == "rewo":
        return rewo_update(state, c_batch, cfg) if cfg.variant == "authors" else earlier_rewo_update(state, c_batch, cfg)
    if rule == "geco":
        return geco_update(state, c_batch, cfg)
    return fixed_update(state, c_batch, cfg)


def objective_mode(state: ConstraintState, cfg: ConstraintConfig, rule: str) -> Mode:
    """What the step after this state's update optimises.

    'reconstruction' (E[-log p(x|z)] alone, no KL / prior term) in the initial phase of
    REWO 'authors' and, for every constrained rule, while kappa is auto and not yet
    chosen; 'lagrangian' (regulariser_term + lambda * nll) otherwise.
    """
    _check_rule(rule)
    if state.prior_active:
        return "lagrangian"
    if (rule == "rewo" and cfg.variant == "authors") or state.kappa_sq is None:
        return "reconstruction"
    return "lagrangian"
