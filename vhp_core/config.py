"""Frozen configuration records of a model and of its reconstruction constraint.

`ModelConfig` names the architecture and objective of one of the compared models
(METHOD §5; the names are those of `registry.MODELS`); `ConstraintConfig` holds kappa
and the REWO/GECO hyper-parameters of METHOD §4 (Klushyn et al. 2019, "Learning
Hierarchical Priors in VAEs"; Rezende & Viola 2018, "Taming VAEs"). Both validate their
values on construction so that a bad params.yaml entry fails at the entry point with the
offending field named.

Neither has defaults: their values come from params.yaml (`train.model`,
`train.constraint` and the per-data-set tables, through `pipelines.train.flow`), and a
default here would be a second copy of them that a caller could silently fall back on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .choices import (
    ACTIVATION_NAMES,
    LIKELIHOOD_NAMES,
    NETWORK_NAMES,
    PRECISION_NAMES,
    STD_CALIBRATIONS,
    VARIANTS,
    ActivationName,
    LikelihoodName,
    NetworkName,
    Precision,
    StdCalibration,
    Variant,
)
from .registry import MODEL_NAMES

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

    model: 'vhp' (hierarchical prior, REWO), 'vhp-iw' (hierarchical prior, REWO, outer
    importance-weighted bound with k_iw samples of z), 'vhp-geco' (hierarchical prior, GECO),
    'iwae' (N(0, I) prior, importance-weighted bound with k_iw samples), 'vae' (ELBO),
    'vamp' (VampPrior with n_pseudo pseudo-inputs, ELBO).
    x_shape: shape of one data point, e.g. (62,) or (1, 64, 64).
    hidden: encoder widths; the decoder mirrors them. prior_hidden: widths of the
    hierarchical prior's p_Theta(z|zeta) and q_Phi(zeta|z); () makes both
    linear-Gaussian. k_inner: K zeta samples in the bound F during training. k_iw: samples of z
    in the outer importance-weighted bound ('iwae', 'vhp-iw').
    gaussian_std, learn_std, std_calibration, std_per_dim: the Gaussian decoder's sigma:
    fixed at gaussian_std, learned (a scalar log sigma), or calibrated (sigma^2 = the mean
    squared error, per batch or a moving average, one sigma or one per dimension).
    precision: 'bf16' runs the network layers under autocast on the data's device; densities,
    likelihood sums and logsumexp stay in the parameters' dtype.
    """

    model: str  # a key of registry.MODELS
    x_shape: tuple[int, ...]
    likelihood: LikelihoodName
    latent_dim: int
    network: NetworkName
    hidden: tuple[int, ...]
    activation: ActivationName
    gaussian_std: float
    learn_std: bool
    std_calibration: StdCalibration
    std_per_dim: bool
    zeta_dim: int
    prior_hidden: tuple[int, ...]
    k_inner: int
    k_iw: int
    n_pseudo: int
    precision: Precision

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
        _require(self.std_calibration in STD_CALIBRATIONS, "std_calibration", self.std_calibration,
                 f"one of {STD_CALIBRATIONS}")
        _require(isinstance(self.std_per_dim, bool), "std_per_dim", self.std_per_dim, "a bool")
        _require(not (self.learn_std and self.std_calibration != "none"), "learn_std", self.learn_std,
                 "False when std_calibration is set (sigma is learned or calibrated, not both)")

    @property
    def data_dim(self) -> int:
        """D, the number of data dimensions (product of x_shape)."""
        return math.prod(self.x_shape)


@dataclass(frozen=True)
class ConstraintConfig:
    """The reconstruction constraint E[C] <= kappa^2 and the lambda rules of METHOD §4.

    params.yaml's `train.constraint` holds the authors' values (argmax-ai/deep-variational-bayes-filters,
    ConstrainedOptimization); the ablations of METHOD §4 are reached by changing fields.

    kappa: tolerance on the per-dimension reconstruction error C (C_hat <= kappa^2), or
        None for 'auto': kappa^2 = (1 + auto_slack) * C_ae, chosen by the plateau rule
        of `constraint.auto_kappa` from the C_hat that the reconstruction-only phase reaches.
    variant: REWO variant, 'authors' (initial reconstruction-only phase, then clipped
        lambda steps every lambda_every steps) or 'earlier' (the earlier reading: Lagrangian
        from step 1, lambda updated every step by exp(nu * delta), no step clip).
    alpha: moving-average factor of C_hat (C_hat <- alpha C_hat + (1 - alpha) C_ba).
    nu: REWO step size of log lambda per unit of delta = C_hat - kappa^2.
    tau: slope of tanh(tau (lambda - 1)) that brings lambda back to 1 while satisfied.
    lambda_every: REWO ('authors') updates lambda only at steps that are multiples of this.
    step_min, step_max: clip range of REWO's ('authors') multiplicative step m.
    lambda_min, lambda_max: clip range of lambda itself, for every rule.
    lambda_init: lambda before step 1 (rules 'rewo' and 'geco'; 'none' keeps lambda = 1).
    geco_nu: GECO's step size of log lambda per unit of delta (both directions, every step).
    auto_slack: kappa^2 = (1 + auto_slack) * C_ae when kappa is None.
    auto_window: the plateau rule compares C_hat every auto_window steps.
    auto_threshold: plateau when C_hat improved by less than this fraction over a window.
    auto_max_steps: the reconstruction-only phase of kappa = None stops at this step at the
        latest (the pipeline sets it from a fraction of the run length).
    auto_probe_steps: REWO 'authors' with kappa = None: after C_ae, the prior learns at
        lambda = lambda_init for this many steps, and kappa^2 is placed between C_ae and the
        probe's mean C (`constraint.probe_kappa_sq`); 0: no probe, kappa^2 = (1 + auto_slack) C_ae.
    auto_probe_share: where kappa^2 sits between C_ae (0) and the probe's C (1), capped by the slack.
    """

    kappa: float | None
    variant: Variant
    alpha: float
    nu: float
    tau: float
    lambda_every: int
    step_min: float
    step_max: float
    lambda_min: float
    lambda_max: float
    lambda_init: float
    geco_nu: float
    auto_slack: float
    auto_window: int
    auto_threshold: float
    auto_max_steps: int
    auto_probe_steps: int
    auto_probe_share: float

    def __post_init__(self) -> None:
        if self.kappa is not None:
            _require(_is_finite_number(self.kappa) and self.kappa > 0, "kappa", self.kappa, "None (auto) or a finite number > 0")
        _require(self.variant in VARIANTS, "variant", self.variant, f"one of {VARIANTS}")
        for name in (
            "alpha", "nu", "tau", "step_min", "step_max", "lambda_min", "lambda_max", "lambda_init",
            "geco_nu", "auto_slack", "auto_threshold",
        ):
            value = getattr(self, name)
            _require(_is_finite_number(value), name, value, "a finite number")
        for name in ("lambda_every", "auto_window", "auto_max_steps"):
            value = getattr(self, name)
            _require(_is_positive_int(value), name, value, "a positive integer")
        _require(0 <= self.alpha < 1, "alpha", self.alpha, "in [0, 1)")
        for name in ("nu", "tau", "geco_nu"):
            value = getattr(self, name)
            _require(value > 0, name, value, "> 0")
        _require(0 < self.step_min <= 1, "step_min", self.step_min, "in (0, 1]")
        _require(self.step_max >= 1, "step_max", self.step_max, ">= 1")
        _require(self.lambda_min > 0, "lambda_min", self.lambda_min, "> 0")
        _require(self.lambda_max >= self.lambda_min, "lambda_max", self.lambda_max, f">= lambda_min ({self.lambda_min})")
        _require(
            self.lambda_min <= self.lambda_init <= self.lambda_max,
            "lambda_init",
            self.lambda_init,
            f"in [lambda_min, lambda_max] = [{self.lambda_min}, {self.lambda_max}]",
        )
        _require(self.auto_slack >= 0, "auto_slack", self.auto_slack, ">= 0")
        _require(isinstance(self.auto_probe_steps, int) and not isinstance(self.auto_probe_steps, bool)
                 and self.auto_probe_steps >= 0, "auto_probe_steps", self.auto_probe_steps, "an integer >= 0")
        _require(_is_finite_number(self.auto_probe_share) and 0 < self.auto_probe_share <= 1,
                 "auto_probe_share", self.auto_probe_share, "in (0, 1]")
        _require(0 <= self.auto_threshold < 1, "auto_threshold", self.auto_threshold, "in [0, 1)")
