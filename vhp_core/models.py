"""The compared models (METHOD §5) and their objectives, built from a ModelConfig.

All share a Gaussian encoder q_phi(z|x), a decoder p_theta(x|z) and a prior:
- VAE: N(0, I) prior, negative ELBO with the analytic KL.
- IWAE (Burda et al. 2016): N(0, I) prior, negative importance-weighted bound with k_iw samples.
- VampVAE (Tomczak & Welling 2018): VampPrior, negative ELBO with a one-sample KL.
- VHPVAE (Klushyn et al. 2019): hierarchical prior, the Lagrangian of METHOD §3
  (model names 'vhp' with REWO and 'vhp-geco' with GECO).
- VHPIWVAE ('vhp-iw'): hierarchical prior inside an outer importance-weighted bound with
  k_iw samples of z, each with its own F(z) from k_inner zetas; REWO.

The objective is split as  total = regulariser_term + lambda * nll  with nll the batch
mean of -log p(x|z) summed over data dimensions. For VHP the regulariser term is
E[log q_phi(z|x) - F(Theta, Phi; z)] with one reparameterised z per data point and
k_inner zetas per z; so with lambda = 1 the total is exactly the negative ELBO.
The constraint itself is measured on the per-dimension reconstruction error C
(delta = C_hat - kappa^2 drives lambda, METHOD §4); the Lagrangian's -lambda kappa^2
is constant during a gradient step and is left out of `total`. In REWO's initial phase
the objective is `nll` alone (`ObjectiveParts.reconstruction_only`). C does not depend
on a learned Gaussian std; -log p(x|z) does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bounds import importance_weighted_bound
from .config import ModelConfig
from .gaussian import gaussian_kl, log_normal_from_noise, log_standard_normal, reparameterise
from .likelihoods import build_likelihood
from .networks import GaussianEncoder, Network, conv_decoder, conv_encoder, mlp_decoder, mlp_encoder
from .priors import HierarchicalPrior, StandardNormalPrior, VampPrior
from .registry import constraint_rule, model_spec


@dataclass
class LossTerms:
    """Named terms of one forward pass; python floats except `total` (the scalar for backward).

    reconstruction: C, the per-dimension reconstruction error (batch mean).
    nll: -log p(x|z) summed over dimensions (batch mean).
    regulariser: KL (vae, iwae as reported), E[log q - F] (vhp, vhp-iw) or E[log q - log p(z)] (vamp).
    lambda_: the multiplier used in `total`. constraint: C - kappa^2 (0.0 for rule 'none'
    and while kappa is auto and not yet chosen).
    elbo: E[log p(x|z) + log p(z) - log q(z|x)] (F for log p(z) with vhp), batch mean.
    mode: what `total` is, 'lagrangian' (regulariser_term + lambda * nll) or
    'reconstruction' (nll alone: REWO's initial phase, see constraint.objective_mode).
    """

    total: torch.Tensor
    reconstruction: float
    nll: float
    regulariser: float
    lambda_: float
    constraint: float
    elbo: float
    finite: bool = True
    mode: str = "lagrangian"


# The entries of ObjectiveParts.statistics(), in order.
STATISTICS = ("reconstruction", "nll", "regulariser", "elbo", "regulariser_term", "nonfinite")


@dataclass(frozen=True)
class ObjectiveParts:
    """The tensors of one forward pass before lambda is chosen (all scalars, batch means).

    regulariser_term and nll carry gradients; the others are detached, for reporting.
    """

    regulariser_term: torch.Tensor
    nll: torch.Tensor
    reconstruction: torch.Tensor
    regulariser: torch.Tensor
    elbo: torch.Tensor

    def total(self, lambda_: float) -> torch.Tensor:
        """regulariser_term + lambda * nll (the negative ELBO / IWAE bound at lambda = 1)."""
        return self.regulariser_term + lambda_ * self.nll

    def reconstruction_only(self) -> torch.Tensor:
        """nll = E[-log p(x|z)] alone: REWO's initial-phase objective (no KL / prior term)."""
        return self.nll

    def statistics(self) -> torch.Tensor:
        """Detached float64 vector, in the order of STATISTICS: [reconstruction, nll,
        regulariser, elbo, regulariser_term, nonfinite], nonfinite = 1.0 if any of the
        five terms is not finite, else 0.0. One tensor, so that a step needs one host
        sync (and, across processes, one all-reduce) for all of them.
        """
        values = torch.stack(
            [self.reconstruction, self.nll.detach(), self.regulariser, self.elbo, self.regulariser_term.detach()]
        ).double()
        nonfinite = (~torch.isfinite(values).all()).double().reshape(1)
        return torch.cat([values, nonfinite])

    def terms(self, lambda_: float, kappa: float | None, finite: bool = True) -> LossTerms:
        """LossTerms at this lambda; constraint = C - kappa^2, or 0.0 when kappa is None (no constraint)."""
        reconstruction, nll, regulariser, elbo = (
            torch.stack([self.reconstruction, self.nll.detach(), self.regulariser, self.elbo]).double().tolist()
        )
        return LossTerms(
            total=self.total(lambda_),
            reconstruction=reconstruction,
            nll=nll,
            regulariser=regulariser,
            lambda_=float(lambda_),
            constraint=0.0 if kappa is None else reconstruction - kappa**2,
            elbo=elbo,
            finite=finite,
        )


class LatentVariableModel(nn.Module):
    """Encoder q_phi(z|x), decoder p_theta(x|z) and prior p(z); subclasses define the objective."""

    prior: nn.Module

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.network == "mlp":
            self.encoder: GaussianEncoder = mlp_encoder(c.x_shape, c.latent_dim, c.hidden, c.activation, c.precision)
            self.decoder: Network = mlp_decoder(c.x_shape, c.latent_dim, c.hidden, c.activation, c.precision)
        else:
            self.encoder = conv_encoder(c.latent_dim, c.hidden, c.activation, c.precision)
            self.decoder = conv_decoder(c.latent_dim, c.hidden, c.activation, c.precision)
        self.likelihood = build_likelihood(c.likelihood, c.gaussian_std, c.learn_std, c.std_calibration,
                                           c.std_per_dim, c.data_dim)
        self.data_dim = c.data_dim

    @property
    def rule(self) -> str:
        """The lambda rule of this model ('rewo' | 'geco' | 'none')."""
        return constraint_rule(self.config.model)

    def prior_parameters(self) -> list[nn.Parameter]:
        """The prior's own parameters (Theta and Phi, or the pseudo-inputs); empty for N(0, I)."""
        return list(self.prior.parameters())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q_phi(z|x), (B, latent) each; x is (B, *x_shape)."""
        return self.encoder(x)

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """Natural parameters of p_theta(x|z) (logits or mean), (N, D) for z (N, latent)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p_theta(x|z) (Gaussian mean or Bernoulli probabilities), (B, *x_shape)."""
        mean = self.likelihood.mean(self.decoder(z))
        return mean.reshape(*z.shape[:-1], *self.config.x_shape)

    def decoder_mean_flat(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean, (B, D), or (D,) for one z of shape (latent,).

        Functional (torch.func-safe) and always in the parameters' precision, so that
        Jacobians for the magnification factor are not blurred by bf16.
        """
        return self.likelihood.mean(self.decoder.full_precision(z))

    def flatten_data(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *x_shape) -> (B, D)."""
        return x.reshape(x.shape[0], self.data_dim)

    def posterior_sample(
        self, x: torch.Tensor, n: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised z ~ q_phi(z|x) with log q_phi(z|x): (z, log_q, mu, logvar).

        n=None gives z (B, latent) and log_q (B,); otherwise z (n, B, latent) and log_q (n, B).
        """
        mu, logvar = self.encode(x)
        shape = mu.shape if n is None else (n, *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return reparameterise(mu, logvar, eps), log_normal_from_noise(eps, logvar), mu, logvar

    def log_prior(self, z: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """log p(z) per row: exact, or the bound F with k inner samples for the hierarchical prior."""
        return self.prior.log_prob(z, k)

    def objective_parts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveParts:
        """One forward pass of the objective on a batch x (B, *x_shape)."""
        raise NotImplementedError

    def loss(
        self,
        x: torch.Tensor,
        lambda_: float = 1.0,
        kappa: float | None = None,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        """LossTerms of one forward pass at a given lambda (1 => the negative ELBO / IWAE bound)."""
        return self.objective_parts(x, generator).terms(lambda_, kappa)

    def _elbo_parts(self, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        # One z per data point; returns (log p(x|z), C, z, log q, mu, logvar), per row.
        z, log_q, mu, logvar = self.posterior_sample(x, generator=generator)
        log_px, c = self.likelihood.terms(self.flatten_data(x), self.decoder(z))
        return log_px, c, z, log_q, mu, logvar


class VAE(LatentVariableModel):
    """N(0, I) prior; objective KL(q(z|x) || N(0, I)) + lambda * (-log p(x|z)), analytic KL."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.prior = StandardNormalPrior(config.latent_dim)

    def objective_parts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveParts:
        log_px, c, _, _, mu, logvar = self._elbo_parts(x, generator)
        nll = -log_px.mean()
        kl = gaussian_kl(mu, logvar).mean()
        return ObjectiveParts(kl, nll, c.mean().detach(), kl.detach(), -(nll + kl).detach())


class IWAE(LatentVariableModel):
    """N(0, I) prior; objective -IWAE bound with K = k_iw samples (Burda et al. 2016).

    Split as regulariser_term = -bound - nll so that lambda = 1 gives exactly -bound;
    the reported regulariser is the analytic KL, the reported elbo the K-sample mean of log w.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.prior = StandardNormalPrior(config.latent_dim)

    def objective_parts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveParts:
        k = self.config.k_iw
        z, log_q, mu, logvar = self.posterior_sample(x, k, generator)  # (K, B, latent), (K, B)
        batch = x.shape[0]
        out = self.decoder(z.reshape(k * batch, -1)).reshape(k, batch, self.data_dim)
        log_px, c = self.likelihood.terms(self.flatten_data(x), out)  # (K, B)
        log_w = log_px + log_standard_normal(z) - log_q
        bound = importance_weighted_bound(log_w, dim=0).to(log_w.dtype).mean()
        nll = -log_px.mean()
        kl = gaussian_kl(mu, logvar).mean().detach()
        return ObjectiveParts(-bound - nll, nll, c.mean().detach(), kl, log_w.mean().detach())


class VampVAE(LatentVariableModel):
    """VampPrior; objective E[log q(z|x) - log p(z)] + lambda * (-log p(x|z)), one z per data point."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.likelihood == "bernoulli":
            # Tomczak & Welling's initialisation for binary images: dark, nearly equal
            # pseudo-inputs that the data pull apart; grey (0.5) ones start far from
            # every binary datum and cost tens of nats early on.
            self.prior = VampPrior(self.encoder, config.x_shape, config.n_pseudo, 0.05, 0.01, unit_interval=True)
        else:
            self.prior = VampPrior(self.encoder, config.x_shape, config.n_pseudo, 0.0, 0.1)

    def objective_parts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveParts:
        log_px, c, z, log_q, _, _ = self._elbo_parts(x, generator)
        nll = -log_px.mean()
        reg = (log_q - self.prior.log_prob(z)).mean()
        return ObjectiveParts(reg, nll, c.mean().detach(), reg.detach(), -(nll + reg).detach())


class VHPVAE(LatentVariableModel):
    """Hierarchical prior (METHOD §2); objective E[log q(z|x) - F(Theta, Phi; z)] + lambda * (-log p(x|z)).

    F uses K = k_inner reparameterised zetas per z; lambda comes from REWO ('vhp') or GECO ('vhp-geco').
    """

    prior: HierarchicalPrior

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.prior = HierarchicalPrior(
            config.latent_dim, config.zeta_dim, config.prior_hidden, config.activation, config.k_inner, config.precision
        )

    def objective_parts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveParts:
        log_px, c, z, log_q, _, _ = self._elbo_parts(x, generator)
        f_bound = self.prior.log_prob_bound(z, self.config.k_inner, generator)
        nll = -log_px.mean()
        reg = (log_q - f_bound).mean()
        return ObjectiveParts(reg, nll, c.mean().detach(), reg.detach(), -(nll + reg).detach())


class VHPIWVAE(VHPVAE):
    """Hierarchical prior inside an outer importance-weighted bound ('vhp-iw', REWO).

    K = k_iw samples z_k ~ q_phi(z|x), each with its own F(Theta, Phi; z_k) from k_inner
    zetas: log w_k = log p(x|z_k) + F(z_k) - log q(z_k|x), bound = log (1/K) sum_k w_k.
    Split like IWAE, nll = mean over samples of -log p(x|z_k) and regulariser_term =
    -bound - nll, so lambda = 1 gives the negative bound. Reported: regulariser =
    mean of log q - F, elbo = mean of log w; C the mean over samples and batch.
    """

    def objective_parts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveParts:
        k = self.config.k_iw
        z, log_q, _, _ = self.posterior_sample(x, k, generator)  # (K, B, latent), (K, B)
        batch = x.shape[0]
        z_flat = z.reshape(k * batch, -1)
        out = self.decoder(z_flat).reshape(k, batch, self.data_dim)
        log_px, c = self.likelihood.terms(self.flatten_data(x), out)  # (K, B)
        f_bound = self.prior.log_prob_bound(z_flat, self.config.k_inner, generator).reshape(k, batch)
        log_w = log_px + f_bound - log_q
        bound = importance_weighted_bound(log_w, dim=0).to(log_w.dtype).mean()
        nll = -log_px.mean()
        reg = (log_q - f_bound).mean().detach()
        return ObjectiveParts(-bound - nll, nll, c.mean().detach(), reg, log_w.mean().detach())


# The classes that registry.MODELS names, by name.
_CLASSES: dict[str, type[LatentVariableModel]] = {cls.__name__: cls for cls in (VAE, IWAE, VampVAE, VHPVAE, VHPIWVAE)}


def model_class(model_name: str) -> type[LatentVariableModel]:
    """The class that builds `model_name` (registry.MODELS[model_name].model_class)."""
    return _CLASSES[model_spec(model_name).model_class]


def build_model(config: ModelConfig) -> LatentVariableModel:
    """The model named by config.model, with freshly initialised parameters."""
    return model_class(config.model)(config)


__all__ = [
    "IWAE",
    "VAE",
    "STATISTICS",
    "VHPIWVAE",
    "VHPVAE",
    "LatentVariableModel",
    "LossTerms",
    "ObjectiveParts",
    "VampVAE",
    "build_model",
    "model_class",
]
