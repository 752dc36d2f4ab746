"""The control variants of the lambda rule: 'warmup' (REWO's warm-up, then lambda = 1) and 'elbo'
(lambda = 1 and the prior learning from step 1), for any model; they let bench/claims.py attribute a
win of vhp over iwae to the prior or to the warm-up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from strategies import mixed_constraint_sequences
from builders import constraint_config
from vhp_core import ConstraintConfig
from vhp_core.constraint import ConstraintState, objective_mode, rewo_update, update_constraint

CFG = dict(kappa=None, auto_window=10, auto_threshold=0.01, auto_max_steps=60, auto_probe_steps=0)


def _run(values: list[float], cfg: ConstraintConfig, rule: str) -> list[ConstraintState]:
    state = ConstraintState.initial(cfg, rule)
    states = []
    for c in values:
        state = update_constraint(state, c, cfg, rule)
        states.append(state)
    return states


@pytest.mark.parametrize("rule", ["rewo", "none", "geco"])
def test_warmup_ends_where_rewo_ends_its_initial_phase_and_lambda_stays_one(rule: str) -> None:
    values = [1.0 / (1 + t) + 0.05 for t in range(1500)]
    warm = _run(values, constraint_config(variant="warmup", **CFG), rule)
    authors_cfg = constraint_config(variant="authors", **CFG)
    state, rewo = ConstraintState.initial(authors_cfg, "rewo"), []
    for c in values:
        state = rewo_update(state, c, authors_cfg)
        rewo.append(state)
    first = next(i for i, s in enumerate(rewo) if s.prior_active)
    assert next(i for i, s in enumerate(warm) if s.prior_active) == first
    assert warm[first].kappa_sq == pytest.approx(rewo[first].kappa_sq)
    cfg = constraint_config(variant="warmup", **CFG)
    assert all(objective_mode(s, cfg, rule) == "reconstruction" for s in warm[:first])
    assert all(objective_mode(s, cfg, rule) == "lagrangian" and s.lambda_ == 1.0 for s in warm[first:])


@settings(deadline=None)
@given(values=mixed_constraint_sequences())
def test_elbo_variant_is_lambda_one_with_the_prior_on_from_step_one(values: list[float]) -> None:
    cfg = constraint_config(variant="elbo", **CFG)
    assert ConstraintState.initial(cfg, "rewo").prior_active
    for state in _run(values, cfg, "rewo"):
        assert state.lambda_ == 1.0 and state.prior_active
        assert objective_mode(state, cfg, "rewo") == "lagrangian"


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="variant"):
        constraint_config(kappa=None, variant="warm")
