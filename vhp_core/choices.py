"""The allowed values of every enumerated setting, each declared once as a `typing.Literal`.

The tuples beside them are derived with `typing.get_args`; `ModelConfig` and
`ConstraintConfig` validate against them, and pipelines/params.py types the params
records with the same Literals, so a value added here is accepted by both. The model
names are not here: they are the keys of the model registry (`vhp_core.registry`).
Torch-free.
"""

from __future__ import annotations

from typing import Literal, get_args

LikelihoodName = Literal["gaussian", "bernoulli"]
NetworkName = Literal["mlp", "conv"]
ActivationName = Literal["tanh", "relu", "elu", "softplus", "leaky_relu", "gelu", "silu", "sigmoid"]
# What a model runs in; a params setting may also say "auto" (precision.resolve_precision).
Precision = Literal["fp32", "bf16"]
PrecisionSetting = Literal["auto", Precision]
# The Gaussian decoder's sigma^2 calibrated to the mean squared error of this batch, or a moving average.
Calibration = Literal["batch", "average"]
StdCalibration = Literal["none", Calibration]  # "none": sigma fixed or learned
RewoVariant = Literal["authors", "earlier"]
# Controls for any model: "warmup" = REWO's reconstruction-only warm-up, then lambda = 1;
# "elbo" = lambda = 1 with the prior learning from step 1 (no warm-up).
ControlVariant = Literal["warmup", "elbo"]
Variant = Literal[RewoVariant, ControlVariant]
Rule = Literal["rewo", "geco", "none"]  # the lambda rule of a model (constraint.py)
Mode = Literal["reconstruction", "lagrangian"]  # what a step optimises (constraint.objective_mode)

LIKELIHOOD_NAMES: tuple[str, ...] = get_args(LikelihoodName)
NETWORK_NAMES: tuple[str, ...] = get_args(NetworkName)
ACTIVATION_NAMES: tuple[str, ...] = get_args(ActivationName)
PRECISION_NAMES: tuple[str, ...] = get_args(Precision)
PRECISION_SETTINGS: tuple[str, ...] = get_args(PrecisionSetting)
CALIBRATIONS: tuple[str, ...] = get_args(Calibration)
STD_CALIBRATIONS: tuple[str, ...] = get_args(StdCalibration)
REWO_VARIANTS: tuple[str, ...] = get_args(RewoVariant)
CONTROL_VARIANTS: tuple[str, ...] = get_args(ControlVariant)
VARIANTS: tuple[str, ...] = get_args(Variant)
RULES: tuple[str, ...] = get_args(Rule)
