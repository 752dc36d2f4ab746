"""vhp_core: VAEs with learned hierarchical priors (VHP-VAE) trained with REWO, in pure torch.

Based on A. Klushyn, N. Chen, R. Kurle, B. Cseke, P. van der Smagt, "Learning
Hierarchical Priors in VAEs", NeurIPS 2019; the specification is docs/METHOD.md.
"""

from .bounds import importance_weighted_bound
from .config import ConstraintConfig, ModelConfig
from .constraint import (
    ConstraintState,
    constraint_rule,
    fixed_update,
    geco_update,
    moving_average,
    rewo_update,
    update_constraint,
)
from .estimators import log_likelihood
from .gaussian import gaussian_kl, log_normal_diag, log_standard_normal
from .likelihoods import Bernoulli, Gaussian, build_likelihood
from .models import IWAE, VAE, VHPVAE, LatentVariableModel, LossTerms, ObjectiveParts, VampVAE, build_model
from .networks import network_autocast
from .priors import GaussianConditional, HierarchicalPrior, StandardNormalPrior, VampPrior
from .training import train_step

from .geometry import (
    decoder_jacobian,
    latent_grid,
    magnification_factor,
    magnification_factor_from_jacobian,
    magnification_factor_grid,
)

__all__ = [
    "IWAE",
    "VAE",
    "VHPVAE",
    "Bernoulli",
    "ConstraintConfig",
    "ConstraintState",
    "Gaussian",
    "GaussianConditional",
    "HierarchicalPrior",
    "LatentVariableModel",
    "LossTerms",
    "ModelConfig",
    "ObjectiveParts",
    "StandardNormalPrior",
    "VampPrior",
    "VampVAE",
    "build_likelihood",
    "decoder_jacobian",
    "latent_grid",
    "magnification_factor",
    "magnification_factor_from_jacobian",
    "magnification_factor_grid",
    "build_model",
    "constraint_rule",
    "fixed_update",
    "gaussian_kl",
    "geco_update",
    "importance_weighted_bound",
    "log_likelihood",
    "log_normal_diag",
    "log_standard_normal",
    "moving_average",
    "network_autocast",
    "rewo_update",
    "train_step",
    "update_constraint",
]
