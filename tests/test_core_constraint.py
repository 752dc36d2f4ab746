"""The lambda rules of METHOD §4 (REWO 'authors' and 'earlier', GECO, none) and the auto-kappa
plateau rule, for arbitrary sequences of constraint values."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import (
    constraint_configs,
    constraint_sequences,
    mixed_constraint_sequences,
    phased_constraint_sequences,
    rules,
)
from vhp_core import (
    ConstraintConfig,
    ConstraintState,
    auto_kappa,
    constraint_rule,
    earlier_rewo_update,
    geco_update,
    objective_mode,
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
    # Until kappa is chosen every constrained rule is in the reconstruction-only phase; the step
    # that chooses it meets the constraint (C_hat <= (1 + slack) C_hat) and does not move lambda.
    for before, after in steps(cfg, rule, cs):
        if before.kappa_sq is None:
            assert after.lambda_ == before.lambda_
            assert after.prior_active == (after.kappa_sq is not None)


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
    cfg = ConstraintConfig(kappa=1.0, alpha=0.5, nu=1.0, tau=2.0, lambda_every=2, step_min=0.9, step_max=1.05)
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
    cfg = ConstraintConfig(kappa=1.0, alpha=0.0, lambda_every=1)
    s = replace(ConstraintState.initial(cfg, "rewo"), prior_active=True)
    for _ in range(3):
        s = rewo_update(s, 1e300, cfg)  # nu * delta = 1e300: exp would overflow
    assert s.lambda_ == pytest.approx(1.05**3)
    s = replace(s, lambda_=cfg.lambda_max)
    assert rewo_update(s, 1e300, cfg).lambda_ == cfg.lambda_max


def test_rewo_phase_switch_is_at_c_hat_not_c_batch() -> None:
    cfg = ConstraintConfig(kappa=1.0, alpha=0.9)
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
    cfg = ConstraintConfig(kappa=1.0, variant="earlier", alpha=0.5, nu=0.1, tau=1.0)
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
    cfg = ConstraintConfig(kappa=3.0, variant="earlier", alpha=0.0, nu=1.0, tau=1.0)
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
    cfg = ConstraintConfig(kappa=1.0, alpha=0.0, geco_nu=0.5)
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
    # C_t = c0 * 0.5^min(t, flat_from): halves every step, then flat. alpha = 0, so C_hat = C_t.
    # A window holding a halving improves by >= 50% > threshold; an all-flat one by 0 < threshold.
    # The plateau rule therefore stops at the first boundary t (a multiple of the window, t >= 2)
    # whose reference (the previous boundary, or step 1) lies in the flat part: max(t - window, 1)
    # >= flat_from; or at the cap if that comes first.
    cfg = ConstraintConfig(
        kappa=None, variant=variant, alpha=0.0, auto_window=window, auto_threshold=threshold,
        auto_slack=slack, auto_max_steps=cap,
    )
    plateau = next(t for t in range(window, 10_000, window) if t >= 2 and max(t - window, 1) >= flat_from)
    expected = min(plateau, cap)
    cs = [c0 * 0.5 ** min(t, flat_from) for t in range(1, expected + 5)]
    states = run(cfg, rule, cs)
    chosen = [s for s in states if s.kappa_sq is not None]
    assert chosen[0].step == chosen[0].kappa_step == expected
    c_ae = cs[expected - 1]
    assert chosen[0].c_ae == c_ae and chosen[0].kappa_sq == pytest.approx((1 + slack) * c_ae, rel=REL)
    assert chosen[0].prior_active  # the same step meets the constraint
    assert all(s.kappa_sq == chosen[0].kappa_sq and s.kappa_step == expected for s in chosen)
    assert all(s.lambda_ == cfg.lambda_init for s in states[: expected + 1])


@given(cfg=constraint_configs(kappa="auto"), cs=constraint_sequences(min_size=60, max_size=80))
def test_auto_kappa_cap(cfg: ConstraintConfig, cs: list[float]) -> None:
    # Any sequence: kappa is chosen at the cap at the latest, as (1 + slack) * C_hat of that step.
    states = run(cfg, "rewo", cs)
    s = states[cfg.auto_max_steps]
    assert s.kappa_step is not None and s.kappa_step <= cfg.auto_max_steps
    at = states[s.kappa_step]
    assert at.c_ae == at.c_hat and at.kappa_sq == pytest.approx((1 + cfg.auto_slack) * at.c_hat, rel=REL)
    assert all(t.kappa_sq is None for t in states[: s.kappa_step])


def test_auto_kappa_exponential_decay_with_the_authors_defaults() -> None:
    # C = 0.1 + exp(-t / 30), alpha = 0 (C_hat = C). Relative improvement over the windows of
    # 100 steps: 1 -> 100: 87%, 100 -> 200: 25%, 200 -> 300: 1.2%, 300 -> 400: 0.04% < 1%.
    # With the default window (100), threshold (1%) and cap (500) kappa is chosen at 400;
    # a cap of 250 stops the phase at 250.
    cs = [0.1 + math.exp(-t / 30) for t in range(1, 701)]
    s = run(ConstraintConfig(kappa=None, alpha=0.0), "rewo", cs)[-1]
    assert s.kappa_step == 400 and s.prior_active
    assert s.c_ae == cs[399] and s.kappa_sq == pytest.approx(1.2 * cs[399], rel=REL)
    capped = run(ConstraintConfig(kappa=None, alpha=0.0, auto_max_steps=250), "rewo", cs)[-1]
    assert capped.kappa_step == 250 and capped.c_ae == cs[249]


@given(cfg=constraint_configs(kappa="fixed"), cs=mixed_constraint_sequences(), rule=rules)
def test_fixed_kappa_is_kept(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    for s in run(cfg, rule, cs):
        assert s.kappa_sq == cfg.kappa**2 and s.c_ae is None and s.kappa_step is None


def test_auto_kappa_leaves_a_chosen_kappa() -> None:
    cfg = ConstraintConfig(kappa=None, auto_max_steps=1)
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
    cfg = ConstraintConfig(kappa=1.0)
    for rule in ("rewo", "geco", "none"):
        with pytest.raises(ValueError, match="c_batch"):
            update_constraint(ConstraintState.initial(cfg, rule), math.nan, cfg, rule)
    with pytest.raises(ValueError, match="rule"):
        update_constraint(ConstraintState.initial(cfg, "rewo"), 1.0, cfg, "beta")


def test_initial_states() -> None:
    fixed, auto = ConstraintConfig(kappa=0.5, lambda_init=2.0), ConstraintConfig(kappa=None, lambda_init=2.0)
    assert ConstraintState.initial(fixed, "rewo") == ConstraintState(2.0, 0.0, 0, False, 0.25, None, None, 0.0)
    assert ConstraintState.initial(fixed, "geco").prior_active
    assert not ConstraintState.initial(auto, "geco").prior_active
    assert ConstraintState.initial(auto, "none") == ConstraintState(1.0, 0.0, 0, True, None, None, None, 0.0)


def test_state_is_frozen() -> None:
    state = ConstraintState.initial(ConstraintConfig(kappa=1.0), "rewo")
    with pytest.raises(AttributeError):
        state.lambda_ = 2.0  # type: ignore[misc]
    assert replace(state, lambda_=2.0).lambda_ == 2.0
