"""REWO and GECO lambda updates (METHOD §4) for arbitrary sequences of constraint values."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import constraint_configs, constraint_sequences
from vhp_core import ConstraintConfig, ConstraintState, constraint_rule, geco_update, rewo_update, update_constraint


def run(update, cfg: ConstraintConfig, rule: str, cs: list[float]) -> list[ConstraintState]:
    states = [ConstraintState.initial(cfg, rule)]
    for c in cs:
        states.append(update(states[-1], c, cfg))
    return states


@given(cfg=constraint_configs(lambda_init=None), cs=constraint_sequences(), rule=st.sampled_from(["rewo", "geco"]))
def test_lambda_finite_and_clipped(cfg: ConstraintConfig, cs: list[float], rule: str) -> None:
    update = rewo_update if rule == "rewo" else geco_update
    for s in run(update, cfg, rule, cs):
        assert math.isfinite(s.lambda_)
        assert cfg.lambda_min <= s.lambda_ <= cfg.lambda_max


@given(cfg=constraint_configs(), cs=constraint_sequences())
def test_rewo_lambda_monotone_per_regime_and_never_below_one(cfg: ConstraintConfig, cs: list[float]) -> None:
    states = run(rewo_update, cfg, "rewo", cs)
    for before, after in zip(states, states[1:]):
        delta = after.c_hat - cfg.kappa**2
        assert after.lambda_ >= 1.0  # starting from lambda = 1, REWO keeps lambda >= 1
        if delta > 0:  # violated: lambda never decreases
            assert after.lambda_ >= before.lambda_
        else:  # satisfied: lambda moves towards 1 without crossing it
            assert after.lambda_ <= before.lambda_
            if before.lambda_ > 1.0:
                step = cfg.nu * math.tanh(cfg.beta * (before.lambda_ - 1.0)) * delta
                if step < -1e-12:
                    assert after.lambda_ < before.lambda_ or after.lambda_ == 1.0
        if before.prior_active:  # prior_active never returns to False
            assert after.prior_active
        assert after.prior_active == (before.prior_active or delta <= 0)


@given(cfg=constraint_configs(lambda_init=None), cs=constraint_sequences())
def test_rewo_satisfied_never_crosses_one_from_either_side(cfg: ConstraintConfig, cs: list[float]) -> None:
    states = run(rewo_update, cfg, "rewo", cs)
    for before, after in zip(states, states[1:]):
        satisfied = after.c_hat - cfg.kappa**2 <= 0
        inside = cfg.lambda_min <= 1.0 <= cfg.lambda_max
        if satisfied and inside:
            if before.lambda_ >= 1.0:
                assert after.lambda_ >= 1.0
            else:
                assert after.lambda_ <= 1.0


@given(cfg=constraint_configs(), cs=constraint_sequences())
def test_moving_average_first_step_and_recursion(cfg: ConstraintConfig, cs: list[float]) -> None:
    states = run(rewo_update, cfg, "rewo", cs)
    assert states[1].c_hat == cs[0]
    for before, after, c in zip(states[1:], states[2:], cs[1:]):
        assert after.c_hat == pytest.approx(cfg.alpha * before.c_hat + (1 - cfg.alpha) * c)
        assert after.step == before.step + 1


def test_rewo_worked_example() -> None:
    cfg = ConstraintConfig(kappa=1.0, alpha=0.5, nu=0.1, beta=1.0)
    s0 = ConstraintState.initial(cfg, "rewo")
    assert (s0.lambda_, s0.step, s0.prior_active) == (1.0, 0, False)
    s1 = rewo_update(s0, 3.0, cfg)  # C_hat = 3, delta = 2: lambda = exp(0.2)
    assert s1.c_hat == 3.0 and s1.lambda_ == pytest.approx(math.exp(0.2)) and not s1.prior_active
    s2 = rewo_update(s1, 0.0, cfg)  # C_hat = 1.5, delta = 0.5: lambda = exp(0.2 + 0.05)
    assert s2.lambda_ == pytest.approx(math.exp(0.25)) and not s2.prior_active
    s3 = rewo_update(s2, -0.5, cfg)  # C_hat = 0.5, delta = -0.5: satisfied
    expected = math.exp(0.25) * math.exp(0.1 * math.tanh(math.exp(0.25) - 1.0) * -0.5)
    assert s3.lambda_ == pytest.approx(expected) and s3.prior_active


def test_rewo_large_step_stops_at_one() -> None:
    # nu * |delta| large enough that the multiplicative step alone would jump far below 1.
    cfg = ConstraintConfig(kappa=3.0, alpha=0.0, nu=1.0)
    s = ConstraintState.initial(cfg, "rewo")
    s = rewo_update(s, 10.0, cfg)  # delta = 1: lambda = e
    assert s.lambda_ == pytest.approx(math.e)
    s = rewo_update(s, 0.0, cfg)  # delta = -9: e * exp(-9 tanh(e - 1)) < 1, so lambda stops at 1
    assert s.lambda_ == 1.0 and s.prior_active
    s = rewo_update(s, 0.0, cfg)  # at 1, tanh(0) = 0: stays
    assert s.lambda_ == 1.0


def test_geco_moves_both_ways_and_trains_prior_from_start() -> None:
    cfg = ConstraintConfig(kappa=1.0, alpha=0.0, nu=0.5)
    states = run(geco_update, cfg, "geco", [3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    lambdas = [s.lambda_ for s in states]
    assert all(s.prior_active for s in states)
    assert lambdas[2] > lambdas[1] > lambdas[0] == 1.0
    assert lambdas[3] < lambdas[2]
    assert lambdas[-1] < 1.0  # GECO, unlike REWO, goes below 1


@given(cfg=constraint_configs(), cs=constraint_sequences())
def test_geco_direction_follows_delta(cfg: ConstraintConfig, cs: list[float]) -> None:
    states = run(geco_update, cfg, "geco", cs)
    for before, after in zip(states, states[1:]):
        delta = after.c_hat - cfg.kappa**2
        if delta > 0:
            assert after.lambda_ >= before.lambda_
        elif delta < 0:
            assert after.lambda_ <= before.lambda_
        assert after.prior_active


@given(cfg=constraint_configs(lambda_init=None), cs=constraint_sequences())
def test_rule_none_keeps_lambda_one(cfg: ConstraintConfig, cs: list[float]) -> None:
    state = ConstraintState.initial(cfg, "none")
    for c in cs:
        state = update_constraint(state, c, cfg, "none")
        assert state.lambda_ == 1.0 and state.prior_active


def test_constraint_rule_names() -> None:
    assert constraint_rule("vhp") == "rewo"
    assert constraint_rule("vhp-geco") == "geco"
    assert {constraint_rule(m) for m in ("iwae", "vae", "vamp")} == {"none"}
    with pytest.raises(ValueError, match="unknown model"):
        constraint_rule("beta-vae")


def test_non_finite_constraint_value_is_rejected() -> None:
    cfg = ConstraintConfig(kappa=1.0)
    with pytest.raises(ValueError, match="c_batch"):
        rewo_update(ConstraintState.initial(cfg, "rewo"), math.nan, cfg)


def test_state_is_frozen() -> None:
    state = ConstraintState.initial(ConstraintConfig(kappa=1.0), "rewo")
    with pytest.raises(AttributeError):
        state.lambda_ = 2.0  # type: ignore[misc]
    assert replace(state, lambda_=2.0).lambda_ == 2.0
