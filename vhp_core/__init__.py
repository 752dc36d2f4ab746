"""vhp_core: VAEs with learned hierarchical priors (VHP-VAE) trained with REWO, in pure torch.

Based on A. Klushyn, N. Chen, R. Kurle, B. Cseke, P. van der Smagt, "Learning
Hierarchical Priors in VAEs", NeurIPS 2019; the specification is docs/METHOD.md.
"""

from .bounds import importance_weighted_bound
from .choices import REWO_VARIANTS, RULES
from .config import ConstraintConfig, ModelConfig
from .constraint import (
    ConstraintState,
    auto_kappa,
    probe_kappa_sq,
    earlier_rewo_update,
    fixed_update,
    geco_update,
    moving_average,
    objective_mode,
    rewo_update,
    update_constraint,
)
from .estimators import log_likelihood
from .gaussian import gaussian_kl, log_normal_diag, log_standard_normal
from .likelihoods import Bernoulli, Gaussian, build_likelihood
from .models import (
    IWAE,
    STATISTICS,
    VAE,
    VHPIWVAE,
    VHPVAE,
    LatentVariableModel,
    LossTerms,
    ObjectiveParts,
    VampVAE,
    build_model,
    model_class,
)
from .precision import network_autocast
from .priors import GaussianConditional, HierarchicalPrior, StandardNormalPrior, VampPrior
from .registry import HIERARCHICAL_MODELS, MODEL_NAMES, MODELS, ModelSpec, constraint_rule, model_spec
from .training import grads_finite, train_step

from .geometry import (
    decoder_jacobian,
    latent_grid,
    magnification_factor,
    magnification_factor_from_jacobian,
    magnification_factor_grid,
)

__all__ = [
    "Bernoulli",
    "ConstraintConfig",
    "ConstraintState",
    "Gaussian",
    "GaussianConditional",
    "HIERARCHICAL_MODELS",
    "HierarchicalPrior",
    "IWAE",
    "LatentVariableModel",
    "LossTerms",
    "MODELS",
    "MODEL_NAMES",
    "ModelConfig",
    "ModelSpec",
    "ObjectiveParts",
    "REWO_VARIANTS",
    "RULES",
    "STATISTICS",
    "StandardNormalPrior",
    "VAE",
    "VHPIWVAE",
    "VHPVAE",
    "VampPrior",
    "VampVAE",
    "auto_kappa",
    "probe_kappa_sq",
    "build_likelihood",
    "build_model",
    "constraint_rule",
    "decoder_jacobian",
    "earlier_rewo_update",
    "fixed_update",
    "gaussian_kl",
    "geco_update",
    "grads_finite",
    "importance_weighted_bound",
    "latent_grid",
    "log_likelihood",
    "log_normal_diag",
    "log_standard_normal",
    "magnification_factor",
    "magnification_factor_from_jacobian",
    "magnification_factor_grid",
    "model_class",
    "model_spec",
    "moving_average",
    "network_autocast",
    "objective_mode",
    "rewo_update",
    "train_step",
    "update_constraint",
]
