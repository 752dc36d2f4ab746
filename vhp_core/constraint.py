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
- Controls (cfg.variant, any model): 'warmup' = REWO's reconstruction-only warm-up, then
  lambda = 1 for good; 'elbo' = lambda = 1 with the prior learning from step 1.

kappa = None ('auto') adds a reconstruction-only phase to the constrained rules until
`auto_kappa` has found C_ae, the plateau of the window means of C_ba (an estimate that
has forgotten the untrained model, unlike C_hat, which weighs the first batch alpha^t).
kappa^2 = (1 + auto_slack) C_ae, or, for REWO 'authors' with auto_probe_steps > 0, from a
short probe at lambda = 1 with the prior learning (`probe_kappa_sq`): kappa^2 is placed
between C_ae and the probe's error, where the constraint can bind.

Every rule also counts its lambda updates, those made while the constraint was violated
(delta > 0), and the largest lambda and its step: the diagnostics of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .choices import CONTROL_VARIANTS, RULES, Mode
from .config import ConstraintConfig

# exp() of more than this overflows float64; lambda is clipped to lambda_max anyway.
_MAX_LOG_FACTOR = 700.0


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


@dataclass(frozen=True)
class ConstraintState:
    """Where the lambda rule stands after `step` steps.

    lambda_: the multiplier. c_hat: moving average of C (0.0 before step 1). step: steps
    seen so far. prior_active: False in the initial phase (the prior Theta, Phi is frozen),
    True in the constrained phase; it never returns to False.
    kappa_sq: kappa^2 in force; None while kappa is 'auto' and not yet chosen.
    c_ae: (auto) the C_hat at which the reconstruction-only phase stopped improving.
    kappa_step: (auto) the step at which kappa was chosen.
    window_sum, window_n: sum and count of C_ba in the current window of auto_window steps
    (steps 1..W, W+1..2W, ...); window_mean, window_prev: means of the last two complete
    windows (None before there are any). probe_sum, probe_n: (auto, REWO 'authors' with a
    probe) sum and count of C_ba since the probe began at probe_step; c_probe: its mean when
    it ended.
    updates, violated: lambda updates so far and those made with delta > 0.
    lambda_peak, lambda_peak_step: the largest lambda so far and the step it was reached
    (lambda_init and step 0 before any update).
    """

    lambda_: float
    c_hat: float
    step: int
    prior_active: bool
    kappa_sq: float | None
    c_ae: float | None
    kappa_step: int | None
    window_sum: float = 0.0
    window_n: int = 0
    window_mean: float | None = None
    window_prev: float | None = None
    probe_step: int | None = None
    probe_sum: float = 0.0
    probe_n: int = 0
    c_probe: float | None = None
    updates: int = 0
    violated: int = 0
    lambda_peak: float = 0.0
    lambda_peak_step: int = 0

    @classmethod
    def initial(cls, cfg: ConstraintConfig, rule: str) -> ConstraintState:
        """State before step 1.

        lambda = lambda_init (1 for 'none'); kappa_sq = kappa^2, or None for kappa = auto.
        The prior starts frozen under REWO (initial phase) and under GECO while kappa is
        still to be chosen; otherwise it is active from the start.
        """
        _check_rule(rule)
        kappa_sq = None if cfg.kappa is None else float(cfg.kappa) ** 2
        if cfg.variant in CONTROL_VARIANTS:  # lambda fixed at 1; 'warmup' starts with the warm-up
            lambda_, prior_active = 1.0, cfg.variant == "elbo"
        elif rule == "rewo":
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
            lambda_peak=lambda_,
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


def window_means(
    window_sum: float, window_n: int, window_mean: float | None, window_prev: float | None,
    c_batch: float, window: int,
) -> tuple[float, int, float | None, float | None]:
    """Add C_ba to the current window; on its last step shift (mean, prev) <- (new mean, mean)."""
    window_sum, window_n = window_sum + c_batch, window_n + 1
    if window_n == window:
        return 0.0, 0, window_sum / window, window_mean
    return window_sum, window_n, window_mean, window_prev


def _tracked(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """The state with C_hat and the window means updated by C_ba and the step counted (every rule, every step)."""
    c = _checked(c_batch)
    c_hat = moving_average(state.c_hat, c, cfg.alpha, state.step)
    ws, wn, wm, wp = window_means(state.window_sum, state.window_n, state.window_mean, state.window_prev,
                                  c, cfg.auto_window)
    state = replace(state, c_hat=c_hat, step=state.step + 1, window_sum=ws, window_n=wn, window_mean=wm,
                    window_prev=wp)
    if state.probe_step is not None and state.kappa_sq is None:
        state = replace(state, probe_sum=state.probe_sum + c, probe_n=state.probe_n + 1)
    return state


def _lambda_moved(state: ConstraintState, lambda_: float, delta: float) -> ConstraintState:
    """The state after a lambda update with constraint value delta: new lambda, counters and peak."""
    peak = lambda_ > state.lambda_peak
    return replace(
        state, lambda_=lambda_, updates=state.updates + 1, violated=state.violated + (delta > 0),
        lambda_peak=lambda_ if peak else state.lambda_peak,
        lambda_peak_step=state.step if peak else state.lambda_peak_step,
    )


def recent_mean(state: ConstraintState, window: int) -> float:
    """About the mean of the last `window` values of C_ba: the current partial window
    completed by the last complete window's mean (the partial mean before there is one)."""
    if state.window_mean is None:
        return state.window_sum / max(state.window_n, 1)
    return (state.window_sum + (window - state.window_n) * state.window_mean) / window


def _scaled(lambda_: float, log_factor: float) -> float:
    return lambda_ * math.exp(min(log_factor, _MAX_LOG_FACTOR))


def _clip(lambda_: float, cfg: ConstraintConfig) -> float:
    return min(max(lambda_, cfg.lambda_min), cfg.lambda_max)


def auto_kappa(state: ConstraintState, cfg: ConstraintConfig, probe: bool = False) -> ConstraintState:
    """The plateau rule that finds C_ae when cfg.kappa is None (METHOD §4, 'kappa: auto').

    Applied at every step of the reconstruction-only phase while C_ae is unknown, to the
    state after its update by C_ba, at step t = state.step. The estimate is the mean of
    C_ba over windows of auto_window steps, which holds nothing of the untrained model
    once a window has passed (C_hat, a moving average started at the first batch, still
    weighs it alpha^t):
    - plateau: when a window completes and there is a previous one, rel = (prev - mean) /
      prev; rel < auto_threshold (improved by less than that fraction, or got worse) is the
      plateau. The first decision is therefore at t = 2 auto_window, never at the first window;
    - cap: at t >= auto_max_steps the phase stops whether or not C has levelled off
      (C_ae is then the mean of about the last window, `recent_mean`).
    On stopping, c_ae is set and, without `probe` (REWO 'authors' asks for one when
    auto_probe_steps > 0), kappa_sq = (1 + auto_slack) c_ae and kappa_step = t. With a probe,
    probe_step = t and kappa waits for `probe_kappa_sq`. A state with c_ae set is returned unchanged.
    """
    if state.c_ae is not None or state.kappa_sq is not None:
        return state
    t = state.step
    plateau = False
    if state.window_n == 0 and state.window_prev is not None and state.window_mean is not None:
        prev, mean = state.window_prev, state.window_mean
        # C >= 0, so a zero reference cannot improve further.
        rel = (prev - mean) / prev if prev > 0 else 0.0
        plateau = rel < cfg.auto_threshold
    if not (plateau or t >= cfg.auto_max_steps):
        return state
    c_ae = state.window_mean if plateau else recent_mean(state, cfg.auto_window)
    assert c_ae is not None
    if probe:
        return replace(state, c_ae=c_ae, probe_step=t)
    return replace(state, c_ae=c_ae, kappa_sq=(1.0 + cfg.auto_slack) * c_ae, kappa_step=t)


def probe_kappa_sq(c_ae: float, c_probe: float, cfg: ConstraintConfig) -> float:
    """kappa^2 from C_ae and the mean C of a probe at lambda = 1 with the prior learning.

    kappa^2 = C_ae + min(auto_slack C_ae, auto_probe_share (C_probe - C_ae)) when the probe's
    error is above C_ae: between the autoencoder's error and the one the unconstrained bound
    settles at, so that lambda rises above 1 and holds reconstruction while the prior learns;
    never looser than the slack rule, and above C_ae, hence reachable. When the probe does
    not raise C above C_ae the constraint cannot bind anyway: (1 + auto_slack) C_ae.
    """
    gap = c_probe - c_ae
    if gap <= 0:
        return (1.0 + cfg.auto_slack) * c_ae
    return c_ae + min(cfg.auto_slack * c_ae, cfg.auto_probe_share * gap)


def rewo_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """One REWO step, variant 'authors' (METHOD §4), from the batch reconstruction error C_ba.

    Initial phase (prior_active False): kappa is chosen first if it is auto; the phase ends
    at the first step with C_hat <= kappa^2; lambda is not updated, not even at that step.
    With kappa auto and auto_probe_steps > 0, the probe comes between: once C_ae is found the
    prior learns at lambda = lambda_init (not updated) for auto_probe_steps steps, then
    kappa^2 = probe_kappa_sq(C_ae, mean C of the probe) and the constrained phase goes on.
    Constrained phase: at steps that are multiples of lambda_every, lambda <- clip(lambda m)
    with m = clip(exp(nu g delta), step_min, step_max), g = 1 if delta > 0 else
    tanh(tau (lambda - 1)).
    """
    state = _tracked(state, c_batch, cfg)
    if not state.prior_active:
        state = auto_kappa(state, cfg, probe=cfg.auto_probe_steps > 0)
        if state.probe_step is not None and state.kappa_sq is None:
            return replace(state, prior_active=True)  # the probe: lambda fixed, the prior learns
        if state.kappa_sq is not None and state.c_hat <= state.kappa_sq:
            state = replace(state, prior_active=True)
        return state
    if state.kappa_sq is None:  # probing (kappa: auto with auto_probe_steps > 0)
        if state.probe_n >= cfg.auto_probe_steps:
            assert state.c_ae is not None
            c_probe = state.probe_sum / state.probe_n
            state = replace(state, c_probe=c_probe, kappa_sq=probe_kappa_sq(state.c_ae, c_probe, cfg),
                            kappa_step=state.step)
        return state
    if state.step % cfg.lambda_every != 0:
        return state
    delta = state.c_hat - state.kappa_sq
    g = 1.0 if delta > 0 else math.tanh(cfg.tau * (state.lambda_ - 1.0))
    # Clipping exp(x) to [m_min, m_max] is clipping x to [log m_min, log m_max]: no overflow.
    log_m = min(max(cfg.nu * g * delta, math.log(cfg.step_min)), math.log(cfg.step_max))
    return _lambda_moved(state, _clip(state.lambda_ * math.exp(log_m), cfg), delta)


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
    return replace(_lambda_moved(state, _clip(lam, cfg), delta), prior_active=state.prior_active or delta <= 0)


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
    return replace(_lambda_moved(state, _clip(_scaled(state.lambda_, cfg.geco_nu * delta), cfg), delta),
                   prior_active=True)


def fixed_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """Rule 'none': lambda stays 1 and the prior active; C_hat is still tracked for the logs."""
    return replace(_tracked(state, c_batch, cfg), lambda_=1.0, prior_active=True)


def warmup_update(state: ConstraintState, c_batch: float, cfg: ConstraintConfig) -> ConstraintState:
    """Variant 'warmup' (a control, any model): REWO's reconstruction-only initial phase, kappa
    chosen as REWO chooses it (no probe), then lambda = 1 for good: the plain ELBO / IWAE
    objective after the same warm-up as vhp. lambda never moves."""
    state = _tracked(state, c_batch, cfg)
    if state.prior_active:
        return state
    state = auto_kappa(state, cfg)
    return replace(state, prior_active=state.kappa_sq is not None and state.c_hat <= state.kappa_sq)


def update_constraint(state: ConstraintState, c_batch: float, cfg: ConstraintConfig, rule: str) -> ConstraintState:
    """Dispatch to the update of `rule` ('rewo' by cfg.variant | 'geco' | 'none')."""
    _check_rule(rule)
    if cfg.variant == "elbo":  # control: lambda = 1 and the prior learning from step 1, any model
        return fixed_update(state, c_batch, cfg)
    if cfg.variant == "warmup":
        return warmup_update(state, c_batch, cfg)
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
    if (rule == "rewo" and cfg.variant == "authors") or cfg.variant == "warmup" or state.kappa_sq is None:
        return "reconstruction"
    return "lagrangian"
