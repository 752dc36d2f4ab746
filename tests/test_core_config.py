"""ModelConfig / ConstraintConfig validation: bad values fail with the field named."""

from __future__ import annotations

import dataclasses

import pytest

from vhp_core import ConstraintConfig, ModelConfig

BASE = {"model": "vhp", "x_shape": (62,), "likelihood": "gaussian"}


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
        ModelConfig(**{**BASE, field: value})


def test_conv_needs_64x64_images() -> None:
    with pytest.raises(ValueError, match="x_shape"):
        ModelConfig(**{**BASE, "network": "conv"})
    ModelConfig(model="vae", x_shape=(1, 64, 64), likelihood="gaussian", network="conv")


def test_model_config_round_trips_through_asdict_with_lists() -> None:
    config = ModelConfig(**BASE, hidden=(32, 16), prior_hidden=())
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    assert ModelConfig(**as_lists) == config
    assert config.data_dim == 62


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kappa", 0.0),
        ("kappa", -1.0),
        ("kappa", float("inf")),
        ("alpha", 1.0),
        ("alpha", -0.1),
        ("nu", 0.0),
        ("beta", 0.0),
        ("lambda_min", -1.0),
        ("lambda_max", 0.5),
        ("lambda_init", 2e4),
    ],
)
def test_constraint_config_rejects_bad_values(field: str, value: float) -> None:
    kwargs = {"kappa": 1.0, "lambda_min": 0.0 if field != "lambda_max" else 1.0, field: value}
    with pytest.raises(ValueError, match=field):
        ConstraintConfig(**kwargs)
