"""The lambda rules of METHOD §4 (REWO 'authors' and 'earlier', GECO, none) and the auto-kappa
plateau rule, for arbitrary sequences of constraint values."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import constraint_config
from tests.strategies import (
    constraint_configs,
    constraint_sequences,
    mixed_constraint_sequences,
    phased_constraint_sequences,
    plateau_sequences,
    rules,
)
from vhp_core import (
    ConstraintConfig,
    ConstraintState,
    auto_kappa,
    constraint_rule,
    earlier_rewo_update,
    objective_mode,
    probe_kappa_sq,
    rewo_update,
    update_constraint,
)

REL = 1e-12  # float64 round-off allowance on products of a few factors
# The rules are cheap pure functions: explore more sequences than the profile's default.
MANY = settings(max_examples=100)


def run(cfg: ConstraintConfig, rule: str, cs: list[float]) -> list[ConstraintState]:
    """The states before step 1 and after every step of `cs`."""
    states = [ConstraintState.initial(cfg, rule)]
    for c in cs:
        states.append(update_constraint(states[-1], c, cfg, rule))
    return states


def steps(cfg: ConstraintConfig, rule: str, cs: list[float]) -> list[tuple[ConstraintState, ConstraintState]]:
    states = run(cfg, rule, cs)
    return list(zip(states, states[1:]))


def inside(value: float, cfg: ConstraintConfig) -> bool:
    """Strictly inside the clip range of lambda (so the clip did not act)."""
    return cfg.lambda_min < value < cfg.lambda_max


# --- every rule -----------------------------------------------------------------------


@MANY
@given(cfg=constraint_configs(lambda_init=None), cs=mixed_constraint_sequences(), rule=rules)
def test_lambda_finite_and_clipped(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    for s in run(cfg, rule, cs):
        assert math.isfinite(s.lambda_) and math.isfinite(s.c_hat)
        assert cfg.lambda_min <= s.lambda_ <= cfg.lambda_max


@given(cfg=constraint_configs(lambda_init=None), cs=mixed_constraint_sequences(), rule=rules)
def test_phase_never_returns_and_steps_count(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    for before, after in steps(cfg, rule, cs):
        assert after.step == before.step + 1
        if before.prior_active:
            assert after.prior_active
        if before.kappa_sq is not None:  # kappa, once in force, stays
            assert after.kappa_sq == before.kappa_sq
        if after.prior_active and rule != "none":  # the constrained phase needs a kappa
            assert after.kappa_sq is not None


@given(cfg=constraint_configs(), cs=mixed_constraint_sequences(), rule=rules)
def test_moving_average_first_step_and_recursion(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    states = run(cfg, rule, cs)
    assert states[1].c_hat == cs[0]
    for before, after, c in zip(states[1:], states[2:], cs[1:]):
        assert after.c_hat == pytest.approx(cfg.alpha * before.c_hat + (1 - cfg.alpha) * c)


@given(cfg=constraint_configs(lambda_init=None), cs=mixed_constraint_sequences(), rule=rules)
def test_objective_mode(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    for s in run(cfg, rule, cs):
        mode = objective_mode(s, cfg, rule)
        if s.prior_active:
            assert mode == "lagrangian"
        elif s.kappa_sq is None or (rule == "rewo" and cfg.variant == "authors"):
            assert mode == "reconstruction"
        else:  # the earlier reading: Lagrangian with a frozen prior
            assert rule == "rewo" and cfg.variant == "earlier" and mode == "lagrangian"


@given(cfg=constraint_configs(lambda_init=None, kappa="auto"), cs=mixed_constraint_sequences(), rule=st.sampled_from(["rewo", "geco"]))
def test_lambda_and_prior_wait_for_auto_kappa(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    # Until kappa is chosen lambda does not move; the prior stays frozen until kappa is chosen
    # (GECO: from that step on; REWO: once C_hat <= kappa^2) or the probe begins.
    for before, after in steps(cfg, rule, cs):
        if before.kappa_sq is None:
            assert after.lambda_ == before.lambda_
            if after.kappa_sq is None and after.probe_step is None:
                assert not after.prior_active
            if rule == "geco":
                assert after.prior_active == (after.kappa_sq is not None)
            else:
                assert after.prior_active == (after.kappa_sq is not None and after.c_hat <= after.kappa_sq)


# --- REWO, the authors' rule ------------------------------------------------------------


@MANY
@given(cfg=constraint_configs(lambda_init=None, variant="authors"), cs=mixed_constraint_sequences())
def test_rewo_initial_phase_keeps_lambda(cfg: ConstraintConfig, cs: list[float]) -> None:
    for before, after in steps(cfg, "rewo", cs):
        if not before.prior_active:  # initial phase, including the step that ends it
            assert after.lambda_ == before.lambda_ == cfg.lambda_init
            assert after.prior_active == (after.kappa_sq is not None and after.c_hat <= after.kappa_sq)


@MANY
@given(cfg=constraint_configs(lambda_init=None, variant="authors"), cs=phased_constraint_sequences())
def test_rewo_lambda_changes_only_on_update_steps(cfg: ConstraintConfig, cs: list[float]) -> None:
    for before, after in steps(cfg, "rewo", cs):
        if after.lambda_ != before.lambda_:
            assert before.prior_active and after.step % cfg.lambda_every == 0


@MANY
@given(cfg=constraint_configs(lambda_init=None, variant="authors"), cs=phased_constraint_sequences())
def test_rewo_step_factor_within_clip(cfg: ConstraintConfig, cs: list[float]) -> None:
    for before, after in steps(cfg, "rewo", cs):
        if inside(after.lambda_, cfg):  # away from the clip bounds the ratio is the step m
            m = after.lambda_ / before.lambda_
            assert cfg.step_min * (1 - REL) <= m <= cfg.step_max * (1 + REL)


@MANY
@given(cfg=constraint_configs(lambda_init=None, variant="authors"), cs=phased_constraint_sequences())
def test_rewo_direction_and_return_to_one(cfg: ConstraintConfig, cs: list[float]) -> None:
    # Violated: lambda does not decrease. Satisfied: it moves towards 1 from either side.
    # The authors' rule has no stop at 1, so within one step of 1 it may overshoot, by less
    # than one clipped step: |log lambda| never grows beyond max(its value, the largest step).
    largest_step = max(-math.log(cfg.step_min), math.log(cfg.step_max))
    for before, after in steps(cfg, "rewo", cs):
        if not (before.prior_active and after.step % cfg.lambda_every == 0):
            continue
        delta = after.c_hat - after.kappa_sq
        lam0, lam1 = before.lambda_, after.lambda_
        if delta > 0:
            assert lam1 >= lam0
        elif lam0 > 1.0:
            assert lam1 <= lam0
        elif lam0 < 1.0:
            assert lam1 >= lam0
        else:
            assert lam1 == 1.0
        if delta <= 0:
            assert abs(math.log(lam1)) <= max(abs(math.log(lam0)), largest_step) + REL
            if abs(math.log(lam0)) >= largest_step:  # more than a step away: no overshoot
                assert abs(math.log(lam1)) <= abs(math.log(lam0)) + REL


def test_rewo_worked_example() -> None:
    cfg = constraint_config(kappa=1.0, alpha=0.5, nu=1.0, tau=2.0, lambda_every=2, step_min=0.9, step_max=1.05)
    s0 = ConstraintState.initial(cfg, "rewo")
    assert (s0.lambda_, s0.step, s0.prior_active, s0.kappa_sq) == (1.0, 0, False, 1.0)
    assert objective_mode(s0, cfg, "rewo") == "reconstruction"
    s1 = rewo_update(s0, 3.0, cfg)  # C_hat = 3 > 1: initial phase goes on
    assert (s1.c_hat, s1.lambda_, s1.prior_active) == (3.0, 1.0, False)
    s2 = rewo_update(s1, 0.0, cfg)  # C_hat = 1.5: still violated, and no lambda update in this phase
    assert (s2.c_hat, s2.lambda_, s2.prior_active) == (1.5, 1.0, False)
    s3 = rewo_update(s2, 0.0, cfg)  # C_hat = 0.75 <= 1: the constrained phase begins, lambda unchanged
    assert (s3.c_hat, s3.lambda_, s3.prior_active) == (0.75, 1.0, True)
    assert objective_mode(s3, cfg, "rewo") == "lagrangian"
    s4 = rewo_update(s3, 2.25, cfg)  # step 4, C_hat = 1.5, delta = 0.5: m = clip(e^0.5) = 1.05
    assert s4.c_hat == 1.5 and s4.lambda_ == pytest.approx(1.05)
    s5 = rewo_update(s4, 1.5, cfg)  # step 5: no update step
    assert s5.lambda_ == s4.lambda_
    s6 = rewo_update(s5, 0.5, cfg)  # step 6, C_hat = 1.0, delta = 0: g = tanh(2 * 0.05), m = 1
    assert s6.lambda_ == s5.lambda_
    s8 = rewo_update(rewo_update(s6, 0.9, cfg), 0.9, cfg)  # step 8, C_hat = 0.925, delta = -0.075
    m = math.exp(1.0 * math.tanh(2.0 * 0.05) * -0.075)
    assert 0.9 < m < 1.0 and s8.lambda_ == pytest.approx(1.05 * m)


def test_rewo_large_delta_takes_clipped_steps_and_never_overflows() -> None:
    cfg = constraint_config(kappa=1.0, alpha=0.0, lambda_every=1)
    s = replace(ConstraintState.initial(cfg, "rewo"), prior_active=True)
    for _ in range(3):
        s = rewo_update(s, 1e300, cfg)  # nu * delta = 1e300: exp would overflow
    assert s.lambda_ == pytest.approx(1.05**3)
    s = replace(s, lambda_=cfg.lambda_max)
    assert rewo_update(s, 1e300, cfg).lambda_ == cfg.lambda_max


def test_rewo_phase_switch_is_at_c_hat_not_c_batch() -> None:
    cfg = constraint_config(kappa=1.0, alpha=0.9)
    s = rewo_update(ConstraintState.initial(cfg, "rewo"), 10.0, cfg)
    s = rewo_update(s, 0.0, cfg)  # C_ba = 0 but C_hat = 9
    assert not s.prior_active and s.c_hat == pytest.approx(9.0)


# --- REWO, the earlier reading ----------------------------------------------------------


@MANY
@given(cfg=constraint_configs(lambda_init=None, variant="earlier", kappa="fixed"), cs=phased_constraint_sequences())
def test_earlier_rewo_invariants(cfg: ConstraintConfig, cs: list[float]) -> None:
    one_inside = cfg.lambda_min <= 1.0 <= cfg.lambda_max
    for before, after in steps(cfg, "rewo", cs):
        delta = after.c_hat - cfg.kappa**2
        lam0, lam1 = before.lambda_, after.lambda_
        assert after.prior_active == (before.prior_active or delta <= 0)  # prior frozen until first met
        if delta > 0:
            assert lam1 >= lam0
            if inside(lam1, cfg):  # every step, unclipped: exactly exp(nu delta)
                assert lam1 == pytest.approx(lam0 * math.exp(cfg.nu * delta), rel=1e-9)
        else:  # towards 1 without crossing it: |log lambda| never grows
            assert abs(math.log(lam1)) <= abs(math.log(lam0)) + REL
            if one_inside:
                assert (lam0 >= 1.0) == (lam1 >= 1.0) or lam1 == 1.0


def test_earlier_rewo_worked_example() -> None:
    cfg = constraint_config(kappa=1.0, variant="earlier", alpha=0.5, nu=0.1, tau=1.0)
    s0 = ConstraintState.initial(cfg, "rewo")
    assert objective_mode(s0, cfg, "rewo") == "lagrangian" and not s0.prior_active
    s1 = earlier_rewo_update(s0, 3.0, cfg)  # C_hat = 3, delta = 2: lambda = exp(0.2), prior frozen
    assert s1.lambda_ == pytest.approx(math.exp(0.2)) and not s1.prior_active
    s2 = earlier_rewo_update(s1, 0.0, cfg)  # C_hat = 1.5, delta = 0.5
    assert s2.lambda_ == pytest.approx(math.exp(0.25)) and not s2.prior_active
    s3 = earlier_rewo_update(s2, -0.5, cfg)  # C_hat = 0.5, delta = -0.5: satisfied, prior on
    expected = math.exp(0.25) * math.exp(0.1 * math.tanh(math.exp(0.25) - 1.0) * -0.5)
    assert s3.lambda_ == pytest.approx(expected) and s3.prior_active
    assert update_constraint(s2, -0.5, cfg, "rewo") == s3


def test_earlier_rewo_large_step_stops_at_one() -> None:
    cfg = constraint_config(kappa=3.0, variant="earlier", alpha=0.0, nu=1.0, tau=1.0)
    s = earlier_rewo_update(ConstraintState.initial(cfg, "rewo"), 10.0, cfg)  # delta = 1: lambda = e
    assert s.lambda_ == pytest.approx(math.e)
    s = earlier_rewo_update(s, 0.0, cfg)  # delta = -9: e * exp(-9 tanh(e - 1)) < 1, stops at 1
    assert s.lambda_ == 1.0 and s.prior_active
    assert earlier_rewo_update(s, 0.0, cfg).lambda_ == 1.0


# --- GECO and the fixed rule ------------------------------------------------------------


@MANY
@given(cfg=constraint_configs(lambda_init=None), cs=phased_constraint_sequences())
def test_geco_invariants(cfg: ConstraintConfig, cs: list[float]) -> None:
    for before, after in steps(cfg, "geco", cs):
        if before.kappa_sq is None:
            continue  # reconstruction-only phase of kappa = auto (test_lambda_and_prior_wait_for_auto_kappa)
        assert after.prior_active
        delta = after.c_hat - after.kappa_sq
        if inside(after.lambda_, cfg):  # every step, both directions, exactly exp(geco_nu delta)
            assert after.lambda_ == pytest.approx(before.lambda_ * math.exp(cfg.geco_nu * delta), rel=1e-9)
        if delta > 0:
            assert after.lambda_ >= before.lambda_
        elif delta < 0:
            assert after.lambda_ <= before.lambda_


def test_geco_moves_both_ways_and_below_one() -> None:
    cfg = constraint_config(kappa=1.0, alpha=0.0, geco_nu=0.5)
    states = run(cfg, "geco", [3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    lambdas = [s.lambda_ for s in states]
    assert all(s.prior_active for s in states)
    assert lambdas[2] > lambdas[1] > lambdas[0] == 1.0
    assert lambdas[3] < lambdas[2]
    assert lambdas[-1] < 1.0  # GECO, unlike REWO, goes below 1


@given(cfg=constraint_configs(lambda_init=None), cs=mixed_constraint_sequences())
def test_rule_none_keeps_lambda_one(cfg: ConstraintConfig, cs: list[float]) -> None:
    for s in run(cfg, "none", cs):
        assert s.lambda_ == 1.0 and s.prior_active and s.kappa_step is None


# --- kappa: auto ------------------------------------------------------------------------


@given(
    c0=st.floats(0.1, 10.0),
    flat_from=st.integers(0, 40),
    window=st.integers(1, 8),
    threshold=st.floats(0.001, 0.49),
    slack=st.floats(0.0, 1.0),
    cap=st.integers(1, 80),
    rule=st.sampled_from(["rewo", "geco"]),
    variant=st.sampled_from(["authors", "earlier"]),
)
def test_auto_kappa_stops_at_the_plateau_or_the_cap(
    c0: float, flat_from: int, window: int, threshold: float, slack: float, cap: int, rule: str, variant: str
) -> None:
    # C_t = c0 * 0.5^min(t, flat_from): halves every step, then flat. The plateau rule compares
    # the means of consecutive windows of `window` steps; a window pair holding a halving
    # improves by >= 50% > threshold (for window 1: one halving; longer windows: the mean of
    # halving values halves too, or the earlier window holds larger ones), an all-flat pair by 0.
    # It therefore stops at the first boundary t = k window, k >= 2, whose earlier window
    # (steps t - 2 window + 1 .. t - window) lies in the flat part; or at the cap.
    cfg = constraint_config(
        kappa=None, variant=variant, alpha=0.0, auto_window=window, auto_threshold=threshold,
        auto_slack=slack, auto_max_steps=cap,
    )
    plateau = next(t for t in range(2 * window, 10_000, window) if t - 2 * window + 1 >= flat_from)
    expected = min(plateau, cap)
    cs = [c0 * 0.5 ** min(t, flat_from) for t in range(1, expected + 5)]
    states = run(cfg, rule, cs)
    chosen = [s for s in states if s.kappa_sq is not None]
    assert chosen[0].step == chosen[0].kappa_step == expected
    assert chosen[0].kappa_sq == pytest.approx((1 + slack) * chosen[0].c_ae, rel=REL)
    if expected == plateau:
        assert chosen[0].c_ae == pytest.approx(cs[expected - 1], rel=REL)  # the flat value
    assert all(s.kappa_sq == chosen[0].kappa_sq and s.kappa_step == expected for s in chosen)
    assert all(s.lambda_ == cfg.lambda_init for s in states[: expected + 1])


def test_auto_kappa_never_decides_at_the_first_window() -> None:
    # A flat C from step 1: the first window has no predecessor to compare with, so the
    # plateau is found at the second boundary (200 with the default window), not at 100.
    s = run(constraint_config(kappa=None), "rewo", [0.7] * 300)
    assert s[-1].kappa_step == 200 and s[-1].c_ae == pytest.approx(0.7, rel=REL)
    assert all(t.kappa_sq is None for t in s[:200])


@given(cfg=constraint_configs(kappa="auto"), cs=constraint_sequences(min_size=60, max_size=80))
def test_auto_kappa_cap(cfg: ConstraintConfig, cs: list[float]) -> None:
    # Any sequence: C_ae is found at the cap at the latest; without a probe
    # kappa^2 = (1 + slack) C_ae, with C_ae a mean of recent C_ba (within their range).
    states = run(cfg, "rewo", cs)
    s = states[cfg.auto_max_steps]
    assert s.kappa_step is not None and s.kappa_step <= cfg.auto_max_steps
    at = states[s.kappa_step]
    assert at.c_ae is not None and at.kappa_sq == pytest.approx((1 + cfg.auto_slack) * at.c_ae, rel=REL)
    assert min(cs[: at.step]) * (1 - REL) <= at.c_ae <= max(cs[: at.step]) * (1 + REL)
    assert all(t.kappa_sq is None for t in states[: s.kappa_step])


def test_auto_kappa_exponential_decay_with_the_authors_defaults() -> None:
    # C = 0.1 + exp(-t / 30). Window means of 100 steps: 1-100: 0.1 + 0.288, 101-200: 0.1 +
    # 0.0178, 201-300: 0.1 + 0.0006, 301-400: 0.1 + 0.00002. Relative improvements: 200: 70%,
    # 300: 15%, 400: 0.6% < 1%: kappa is chosen at 400; a cap of 250 stops the phase at 250.
    cs = [0.1 + math.exp(-t / 30) for t in range(1, 701)]
    s = run(constraint_config(kappa=None, alpha=0.0), "rewo", cs)[-1]
    assert s.kappa_step == 400 and s.prior_active
    assert s.c_ae == pytest.approx(sum(cs[300:400]) / 100, rel=1e-9)
    assert s.kappa_sq == pytest.approx(1.2 * s.c_ae, rel=REL)
    capped = run(constraint_config(kappa=None, alpha=0.0, auto_max_steps=250), "rewo", cs)[-1]
    # at the cap: the last 50 steps completed by the mean of the window 101-200
    assert capped.kappa_step == 250
    assert capped.c_ae == pytest.approx((sum(cs[200:250]) + 50 * sum(cs[100:200]) / 100) / 100, rel=1e-9)


@settings(max_examples=200)
@given(seq=plateau_sequences())
def test_auto_kappa_lands_near_the_plateau_whatever_the_first_batch(seq: tuple[list[float], float]) -> None:
    # C_1 from 1000x above the plateau to 1000x below (the untrained model), then C goes
    # geometrically to the plateau within 150 steps and stays there up to +-5% batch
    # noise (tests.strategies.plateau_sequences). With the authors' defaults (alpha 0.99, window 100, threshold 1%,
    # slack 0.2, cap 500) kappa^2 / 1.2 must land within a factor 1.1 of the plateau.
    # (The stale moving average, C_hat started at C_1, misses by far: at step 200 it
    # still weighs C_1 by 0.99^199 = 13%.)
    cs, plateau = seq
    s = run(constraint_config(kappa=None), "rewo", cs)[-1]
    assert s.kappa_sq is not None and s.kappa_step is not None and s.kappa_step <= 500
    assert plateau / 1.1 <= s.kappa_sq / 1.2 <= plateau * 1.1


@given(cfg=constraint_configs(kappa="fixed"), cs=mixed_constraint_sequences(), rule=rules)
def test_fixed_kappa_is_kept(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    for s in run(cfg, rule, cs):
        assert s.kappa_sq == cfg.kappa**2 and s.c_ae is None and s.kappa_step is None


def test_auto_kappa_leaves_a_chosen_kappa() -> None:
    cfg = constraint_config(kappa=None, auto_max_steps=1)
    s = rewo_update(ConstraintState.initial(cfg, "rewo"), 2.0, cfg)
    assert (s.kappa_step, s.c_ae, s.kappa_sq) == (1, 2.0, pytest.approx(2.4))
    assert auto_kappa(replace(s, step=100, c_hat=0.1), cfg).kappa_sq == s.kappa_sq


# --- names, errors, records ---------------------------------------------------------------


def test_constraint_rule_names() -> None:
    assert {constraint_rule(m) for m in ("vhp", "vhp-iw")} == {"rewo"}
    assert constraint_rule("vhp-geco") == "geco"
    assert {constraint_rule(m) for m in ("iwae", "vae", "vamp")} == {"none"}
    with pytest.raises(ValueError, match="unknown model"):
        constraint_rule("beta-vae")


def test_non_finite_constraint_value_is_rejected() -> None:
    cfg = constraint_config(kappa=1.0)
    for rule in ("rewo", "geco", "none"):
        with pytest.raises(ValueError, match="c_batch"):
            update_constraint(ConstraintState.initial(cfg, rule), math.nan, cfg, rule)
    with pytest.raises(ValueError, match="rule"):
        update_constraint(ConstraintState.initial(cfg, "rewo"), 1.0, cfg, "beta")


def test_initial_states() -> None:
    fixed, auto = constraint_config(kappa=0.5, lambda_init=2.0), constraint_config(kappa=None, lambda_init=2.0)
    assert ConstraintState.initial(fixed, "rewo") == ConstraintState(2.0, 0.0, 0, False, 0.25, None, None, lambda_peak=2.0)
    assert ConstraintState.initial(fixed, "geco").prior_active
    assert not ConstraintState.initial(auto, "geco").prior_active
    assert ConstraintState.initial(auto, "none") == ConstraintState(1.0, 0.0, 0, True, None, None, None, lambda_peak=1.0)


def test_state_is_frozen() -> None:
    state = ConstraintState.initial(constraint_config(kappa=1.0), "rewo")
    with pytest.raises(AttributeError):
        state.lambda_ = 2.0  # type: ignore[misc]
    assert replace(state, lambda_=2.0).lambda_ == 2.0


# --- a constraint that binds: slack, probe and the diagnostics ------------------------------


def _plateau_then(c_after: float, n_after: int) -> list[float]:
    # C_ba = 1 for 300 steps (C_ae = 1, found at step 200), then c_after.
    return [1.0] * 300 + [c_after] * n_after


def test_two_slacks_give_different_lambda_trajectories_where_the_constraint_binds() -> None:
    # After the plateau the error settles at 1.3: slack 0.1 puts kappa^2 = 1.1 below it (the
    # constraint binds, lambda climbs by the clipped factors), slack 0.5 puts it at 1.5 above
    # it (met throughout, lambda stays 1). The ablation rows can therefore differ.
    cs = _plateau_then(1.3, 2000)
    tight = run(constraint_config(kappa=None, auto_slack=0.1), "rewo", cs)
    loose = run(constraint_config(kappa=None, auto_slack=0.5), "rewo", cs)
    assert tight[-1].kappa_sq == pytest.approx(1.1) and loose[-1].kappa_sq == pytest.approx(1.5)
    assert [s.lambda_ for s in tight] != [s.lambda_ for s in loose]
    assert tight[-1].lambda_ > 1.5 and all(s.lambda_ == 1.0 for s in loose)
    assert tight[-1].violated > 0 and loose[-1].violated == 0
    # two slacks that both bind still differ: the step size grows with delta
    looser = run(constraint_config(kappa=None, auto_slack=0.2, nu=0.1), "rewo", cs)
    tighter = run(constraint_config(kappa=None, auto_slack=0.05, nu=0.1), "rewo", cs)
    assert tighter[-1].lambda_ > looser[-1].lambda_ > 1.0


def test_probe_places_kappa_between_c_ae_and_the_probe_error() -> None:
    # C_ae = 1 (plateau, step 200); the probe (100 steps at lambda = 1, prior on) sees C = 1.4:
    # kappa^2 = 1 + min(0.2 * 1, 0.5 * 0.4) = 1.2. C then stays at 1.4 for 1000 steps (lambda
    # climbs) and falls to 1.0 (lambda drifts back to 1).
    cfg = constraint_config(kappa=None, auto_probe_steps=100, auto_probe_share=0.5)
    cs = [1.0] * 200 + [1.4] * 1100 + [1.0] * 3000
    states = run(cfg, "rewo", cs)
    start = next(s for s in states if s.probe_step is not None)
    assert start.step == start.probe_step == 200 and start.c_ae == pytest.approx(1.0) and start.prior_active
    assert start.kappa_sq is None and objective_mode(start, cfg, "rewo") == "lagrangian"
    chosen = next(s for s in states if s.kappa_sq is not None)
    assert chosen.kappa_step == 300 and chosen.c_probe == pytest.approx(1.4)
    assert chosen.kappa_sq == pytest.approx(1.2)
    assert all(s.lambda_ == 1.0 for s in states[:301])
    end = states[-1]
    assert end.lambda_peak > 1.3 and 1300 <= end.lambda_peak_step <= 1500
    assert end.lambda_ == pytest.approx(1.0, abs=0.05) and end.lambda_ < end.lambda_peak / 1.2
    assert 0 < end.violated < end.updates
    # share 0.1 puts kappa^2 at 1.04: a different trajectory from the same errors
    other = run(replace(cfg, auto_probe_share=0.1), "rewo", cs)
    assert other[-1].kappa_sq == pytest.approx(1.04)
    assert [s.lambda_ for s in other] != [s.lambda_ for s in states]


@given(c_ae=st.floats(0.01, 10.0), c_probe=st.floats(0.0, 100.0), slack=st.floats(0.0, 1.0),
       share=st.floats(0.01, 1.0))
def test_probe_kappa_is_reachable_and_no_looser_than_the_slack(c_ae: float, c_probe: float, slack: float,
                                                               share: float) -> None:
    cfg = constraint_config(kappa=None, auto_slack=slack, auto_probe_share=share)
    k = probe_kappa_sq(c_ae, c_probe, cfg)
    assert k <= (1 + slack) * c_ae * (1 + REL)
    if c_probe > c_ae:
        assert c_ae < k or slack == 0.0 or k == c_ae  # above C_ae whenever the gap is representable
        assert k <= c_probe
    else:
        assert k == pytest.approx((1 + slack) * c_ae, rel=REL)


@MANY
@given(cfg=constraint_configs(lambda_init=None), cs=mixed_constraint_sequences(), rule=rules)
def test_lambda_diagnostics(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    # updates count the lambda updates, violated those with C_hat > kappa^2; the peak is the
    # largest lambda seen (lambda_init before any update) at the step it was reached.
    states = run(cfg, rule, cs)
    for before, after in zip(states, states[1:]):
        assert after.updates - before.updates in (0, 1)
        assert after.violated - before.violated in (0, 1) and after.violated <= after.updates
        if after.violated > before.violated:
            assert after.kappa_sq is not None and after.c_hat > after.kappa_sq
        if after.lambda_ != before.lambda_:
            assert after.updates == before.updates + 1
    end = states[-1]
    assert end.lambda_peak == max(s.lambda_ for s in states)
    assert states[end.lambda_peak_step].lambda_ == end.lambda_peak
