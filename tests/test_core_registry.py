"""The model registry and the enumerations: every registered model builds, trains a step and
has a rule; what the registry says of a model is what its class does, and what its class does
is what METHOD §5 says of the model (a table of this test's own, not read from the registry)."""

from __future__ import annotations

import typing

import pytest
import torch

from builders import constraint_config, model_config
from pipelines import params as pipeline_params
from tests.strategies import generator
from vhp_core import (
    HIERARCHICAL_MODELS,
    MODEL_NAMES,
    MODELS,
    RULES,
    ConstraintState,
    HierarchicalPrior,
    StandardNormalPrior,
    VampPrior,
    build_model,
    constraint_rule,
    model_class,
    train_step,
)
from vhp_core import choices
from vhp_core.activations import ACTIVATIONS


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_builds_trains_a_step_and_has_a_rule(name: str) -> None:
    spec = MODELS[name]
    assert spec.rule in RULES and constraint_rule(name) == spec.rule
    torch.manual_seed(0)
    model = build_model(model_config(model=name, x_shape=(6,), likelihood="gaussian", hidden=(8,), prior_hidden=(8,),
                                     k_inner=3, k_iw=2, n_pseudo=3))
    assert type(model) is model_class(name) and type(model).__name__ == spec.model_class
    assert model.rule == spec.rule
    assert isinstance(model.prior, HierarchicalPrior) == spec.hierarchical == (name in HIERARCHICAL_MODELS)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = constraint_config(kappa=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    state, terms = train_step(model, optimiser, torch.randn(5, 6, generator=generator(0)),
                              ConstraintState.initial(cfg, spec.rule), cfg, generator(1))
    assert terms.finite and state.step == 1
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters(), strict=True))


# METHOD §5, written down independently of vhp_core.registry: name -> (prior, importance-weighted
# outer bound over k_iw samples of z, lambda rule). A registry entry naming the wrong class
# (iwae built as VAE, vhp-iw as VHPVAE, vamp as VAE) fails the test below.
METHOD_MODELS = {
    "vhp": (HierarchicalPrior, False, "rewo"),
    "vhp-iw": (HierarchicalPrior, True, "rewo"),
    "vhp-geco": (HierarchicalPrior, False, "geco"),
    "iwae": (StandardNormalPrior, True, "none"),
    "vae": (StandardNormalPrior, False, "none"),
    "vamp": (VampPrior, False, "none"),
}


def _objective(name: str, k_iw: int) -> float:
    torch.manual_seed(0)  # the same weights whatever k_iw (it shapes no parameter)
    model = build_model(model_config(model=name, x_shape=(6,), likelihood="gaussian", hidden=(8,), prior_hidden=(8,),
                                     k_inner=3, k_iw=k_iw, n_pseudo=3)).double()
    x = torch.randn(5, 6, generator=generator(2), dtype=torch.float64)
    with torch.no_grad():
        return float(model.objective_parts(x, generator(3)).total(1.0))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_builds_what_the_method_says(name: str) -> None:
    assert set(METHOD_MODELS) == set(MODEL_NAMES), "a new model needs its METHOD §5 entry in this test"
    prior, importance_weighted, rule = METHOD_MODELS[name]
    torch.manual_seed(0)
    model = build_model(model_config(model=name, x_shape=(6,), likelihood="gaussian", hidden=(8,), prior_hidden=(8,),
                                     k_inner=3, k_iw=2, n_pseudo=3))
    assert type(model.prior) is prior and model.rule == rule
    # The outer bound: k_iw changes the objective only where it is importance-weighted over z.
    assert (_objective(name, 1) != _objective(name, 4)) is importance_weighted


def test_unknown_model_names_are_refused_everywhere() -> None:
    for refuse in (constraint_rule, model_class, lambda n: model_config(model=n)):
        with pytest.raises(ValueError, match="beta-vae"):
            refuse("beta-vae")


def test_enumerations_are_their_literals() -> None:
    # Each tuple is derived from its Literal; the activation layers cover exactly the allowed names.
    assert choices.VARIANTS == choices.REWO_VARIANTS + choices.CONTROL_VARIANTS
    assert choices.PRECISION_SETTINGS == ("auto", *choices.PRECISION_NAMES)
    assert choices.STD_CALIBRATIONS == ("none", *choices.CALIBRATIONS)
    assert tuple(ACTIVATIONS) == choices.ACTIVATION_NAMES
    # The params records are typed with the same Literals, so the reader checks the same values.
    hints = typing.get_type_hints(pipeline_params.TrainParams)
    assert hints["precision"] is choices.PrecisionSetting
    assert typing.get_type_hints(pipeline_params.ConstraintParams)["variant"] is choices.Variant
    assert typing.get_type_hints(pipeline_params.ModelParams)["activation"] is choices.ActivationName
    assert typing.get_type_hints(pipeline_params.CalibrationParams)["variant"] is choices.Calibration
    assert hints["network"] == dict[str, choices.NetworkName]
