"""ModelConfig / ConstraintConfig: no defaults (params.yaml supplies every value), and bad
values fail with the field named."""

from __future__ import annotations

import dataclasses

import pytest

from builders import constraint_config, model_config
from vhp_core import ConstraintConfig, ModelConfig

BASE = {"model": "vhp", "x_shape": (62,), "likelihood": "gaussian"}


@pytest.mark.parametrize(("record", "built"), [(ModelConfig, lambda: model_config(**BASE)),
                                               (ConstraintConfig, constraint_config)])
def test_configs_refuse_construction_without_any_field(record: type, built) -> None:
    # params.yaml is the one source of these values: a default here would be a second one.
    assert [f.name for f in dataclasses.fields(record) if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING] == []
    values = dataclasses.asdict(built())
    for name in values:
        with pytest.raises(TypeError, match=name):
            record(**{k: v for k, v in values.items() if k != name})
    assert record(**values) == built()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "beta-vae"),
        ("likelihood", "poisson"),
        ("network", "transformer"),
        ("activation", "swish2"),
        ("precision", "fp16"),
        ("x_shape", ()),
        ("x_shape", (0, 3)),
        ("latent_dim", 0),
        ("latent_dim", -2),
        ("zeta_dim", 0),
        ("hidden", (64, -1)),
        ("prior_hidden", (0,)),
        ("k_inner", 0),
        ("k_iw", 0),
        ("n_pseudo", 0),
        ("gaussian_std", 0.0),
        ("gaussian_std", float("nan")),
    ],
)
def test_model_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        model_config(**{**BASE, field: value})


def test_conv_needs_64x64_images() -> None:
    with pytest.raises(ValueError, match="x_shape"):
        model_config(**{**BASE, "network": "conv"})
    model_config(model="vae", x_shape=(1, 64, 64), likelihood="gaussian", network="conv")


def test_model_config_round_trips_through_asdict_with_lists() -> None:
    config = model_config(**BASE, hidden=(32, 16), prior_hidden=())
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    assert ModelConfig(**as_lists) == config
    assert config.data_dim == 62


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kappa", 0.0),
        ("kappa", -1.0),
        ("kappa", float("inf")),
        ("kappa", "auto"),
        ("variant", "geco"),
        ("alpha", 1.0),
        ("alpha", -0.1),
        ("nu", 0.0),
        ("tau", 0.0),
        ("tau", float("nan")),
        ("geco_nu", -1.0),
        ("lambda_every", 0),
        ("lambda_every", 2.0),
        ("step_min", 0.0),
        ("step_min", 1.1),
        ("step_max", 0.99),
        ("lambda_min", 0.0),
        ("lambda_min", -1.0),
        ("lambda_max", 1e-7),
        ("lambda_init", 1e9),
        ("lambda_init", 1e-7),
        ("auto_slack", -0.1),
        ("auto_window", 0),
        ("auto_threshold", 1.0),
        ("auto_threshold", -0.01),
        ("auto_max_steps", 0),
        ("auto_max_steps", True),
        ("auto_probe_steps", -1),
        ("auto_probe_share", 0.0),
        ("auto_probe_share", 1.5),
    ],
)
def test_constraint_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        constraint_config(**{"kappa": 1.0, field: value})


def test_params_constraint_is_the_authors() -> None:
    cfg = constraint_config()
    fields = [f.name for f in dataclasses.fields(ConstraintConfig)]
    assert fields == [
        "kappa", "variant", "alpha", "nu", "tau", "lambda_every", "step_min", "step_max", "lambda_min",
        "lambda_max", "lambda_init", "geco_nu", "auto_slack", "auto_window", "auto_threshold", "auto_max_steps",
        "auto_probe_steps", "auto_probe_share",
    ]
    assert (cfg.variant, cfg.alpha, cfg.nu, cfg.tau, cfg.lambda_every) == ("authors", 0.99, 1.0, 100.0, 100)
    assert (cfg.step_min, cfg.step_max, cfg.lambda_min, cfg.lambda_max, cfg.lambda_init) == (0.9, 1.05, 1e-6, 1e8, 1.0)
    constraint_config(kappa=0.1, step_min=1.0, step_max=1.0, auto_slack=0.0, auto_threshold=0.0, lambda_min=1.0,
                      lambda_max=1.0)
