"""Frozen configuration records of a model and of its reconstruction constraint.

`ModelConfig` names the architecture and objective of one of the compared models
(METHOD §5); `ConstraintConfig` holds kappa and the REWO/GECO hyper-parameters of
METHOD §4 (Klushyn et al. 2019, "Learning Hierarchical Priors in VAEs"; Rezende &
Viola 2018, "Taming VAEs"). Both validate their values on construction so that a bad
params.yaml entry fails at the entry point with the offending field named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MODEL_NAMES = ("vhp", "vhp-geco", "iwae", "vae", "vamp")
LIKELIHOOD_NAMES = ("gaussian", "bernoulli")
NETWORK_NAMES = ("mlp", "conv")
ACTIVATION_NAMES = ("tanh", "relu", "elu", "softplus", "leaky_relu", "gelu", "silu", "sigmoid")
PRECISION_NAMES = ("fp32", "bf16")
CONV_X_SHAPE = (1, 64, 64)


def _require(condition: bool, field: str, value: Any, requirement: str) -> None:
    if not condition:
        raise ValueError(f"{field} must be {requirement}, got {value!r}")


def _as_int_tuple(value: Any, field: str) -> tuple[int, ...]:
    # YAML and JSON hand sequences over as lists; the frozen record keeps tuples.
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{field} must be a sequence of integers, got {value!r}") from None
    for item in items:
        _require(isinstance(item, int) and not isinstance(item, bool), field, value, "a sequence of integers")
    return items


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and objective of one model (METHOD §5).

    model: 'vhp' (hierarchical prior, REWO), 'vhp-geco' (hierarchical prior, GECO),
    'iwae' (N(0, I) prior, importance-weighted bound with k_iw samples), 'vae' (ELBO),
    'vamp' (VampPrior with n_pseudo pseudo-inputs, ELBO).
    x_shape: shape of one data point, e.g. (62,) or (1, 64, 64).
    hidden: encoder widths; the decoder mirrors them. prior_hidden: widths of the
    hierarchical prior's p_Theta(z|zeta) and q_Phi(zeta|z); () makes both
    linear-Gaussian. k_inner: K zeta samples in the bound F during training.
    precision: 'bf16' runs the network layers under CPU autocast; densities,
    likelihood sums and logsumexp stay in the parameters' dtype.
    """

    model: str
    x_shape: tuple[int, ...]
    likelihood: str
    latent_dim: int = 2
    network: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    gaussian_std: float = 1.0
    learn_std: bool = False
    zeta_dim: int = 2
    prior_hidden: tuple[int, ...] = (256, 256)
    k_inner: int = 16
    k_iw: int = 10
    n_pseudo: int = 100
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_shape", _as_int_tuple(self.x_shape, "x_shape"))
        object.__setattr__(self, "hidden", _as_int_tuple(self.hidden, "hidden"))
        object.__setattr__(self, "prior_hidden", _as_int_tuple(self.prior_hidden, "prior_hidden"))
        _require(self.model in MODEL_NAMES, "model", self.model, f"one of {MODEL_NAMES}")
        _require(self.likelihood in LIKELIHOOD_NAMES, "likelihood", self.likelihood, f"one of {LIKELIHOOD_NAMES}")
        _require(self.network in NETWORK_NAMES, "network", self.network, f"one of {NETWORK_NAMES}")
        _require(self.activation in ACTIVATION_NAMES, "activation", self.activation, f"one of {ACTIVATION_NAMES}")
        _require(self.precision in PRECISION_NAMES, "precision", self.precision, f"one of {PRECISION_NAMES}")
        _require(
            len(self.x_shape) >= 1 and all(d >= 1 for d in self.x_shape),
            "x_shape",
            self.x_shape,
            "a non-empty tuple of positive sizes",
        )
        if self.network == "conv":
            _require(self.x_shape == CONV_X_SHAPE, "x_shape", self.x_shape, f"{CONV_X_SHAPE} for network='conv'")
        _require(all(w >= 1 for w in self.hidden), "hidden", self.hidden, "a tuple of positive widths")
        _require(all(w >= 1 for w in self.prior_hidden), "prior_hidden", self.prior_hidden, "a tuple of positive widths")
        for name in ("latent_dim", "zeta_dim", "k_inner", "k_iw", "n_pseudo"):
            value = getattr(self, name)
            _require(_is_positive_int(value), name, value, "a positive integer")
        _require(
            _is_finite_number(self.gaussian_std) and self.gaussian_std > 0,
            "gaussian_std",
            self.gaussian_std,
            "a finite number > 0",
        )
        _require(isinstance(self.learn_std, bool), "learn_std", self.learn_std, "a bool")

    @property
    def data_dim(self) -> int:
        """D, the number of data dimensions (product of x_shape)."""
        return math.prod(self.x_shape)


@dataclass(frozen=True)
class ConstraintConfig:
    """The reconstruction constraint E[C] <= kappa^2 and the lambda update (METHOD §4).

    kappa: tolerance on the per-dimension reconstruction error C (C <= kappa^2).
    alpha: moving-average factor of C_hat. nu: step size of the multiplicative
    lambda update per unit of C. beta: slope of the tanh that slows REWO's descent
    of lambda towards 1. lambda_min, lambda_max: clip range of lambda (guards against
    exponential blow-up). lambda_init: lambda at step 0.
    """

    kappa: float
    alpha: float = 0.99
    nu: float = 0.01
    beta: float = 1.0
    lambda_min: float = 0.0
    lambda_max: float = 1e4
    lambda_init: float = 1.0

    def __post_init__(self) -> None:
        for name in ("kappa", "alpha", "nu", "beta", "lambda_min", "lambda_max", "lambda_init"):
            value = getattr(self, name)
            _require(_is_finite_number(value), name, value, "a finite number")
        _require(self.kappa > 0, "kappa", self.kappa, "> 0")
        _require(0 <= self.alpha < 1, "alpha", self.alpha, "in [0, 1)")
        _require(self.nu > 0, "nu", self.nu, "> 0")
        _require(self.beta > 0, "beta", self.beta, "> 0")
        _require(self.lambda_min >= 0, "lambda_min", self.lambda_min, ">= 0")
        _require(self.lambda_max >= self.lambda_min, "lambda_max", self.lambda_max, f">= lambda_min ({self.lambda_min})")
        _require(
            self.lambda_min <= self.lambda_init <= self.lambda_max,
            "lambda_init",
            self.lambda_init,
            f"in [lambda_min, lambda_max] = [{self.lambda_min}, {self.lambda_max}]",
        )
