"""The model registry and the enumerations: every registered model builds, trains a step and
has a rule; what the registry says of a model is what its class does."""

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
