"""Priors p(z): standard normal, VampPrior, and the learned hierarchical prior of VHP-VAE.

- StandardNormalPrior: N(0, I) (VAE, IWAE).
- VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q_phi(z|u_k) at learned
  pseudo-inputs u_k, through the model's own encoder.
- HierarchicalPrior (Klushyn et al. 2019, METHOD §2): p(z) = int p_Theta(z|zeta) p(zeta)
  dzeta with p(zeta) = N(0, I), p_Theta(z|zeta) a diagonal Gaussian with MLP mean and
  log-variance, and the recognition network q_Phi(zeta|z). log p(z) is bounded by the
  importance-weighted bound F(Theta, Phi; z) with K samples zeta_k ~ q_Phi(zeta|z).
  With prior_hidden == () both conditionals are linear-Gaussian (mean linear in the
  input, log-variance a free vector), so p(z) = N(b, W W^T + diag sigma^2) in closed
  form (`exact_log_prob`), the oracle of the property tests.

Every prior has `log_prob(z, k=None) -> (n,)` and `sample(n, generator=None) -> (n, latent)`;
`k` is the number of inner samples for the hierarchical prior and ignored by the exact ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .bounds import importance_weighted_bound
from .gaussian import log_normal_diag, log_normal_from_noise, log_standard_normal, reparameterise, standard_normal
from .networks import GaussianEncoder, Network, mlp


def _like(module: nn.Module) -> torch.Tensor:
    """A tensor carrying the module's dtype and device (for sampling)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor
    return torch.empty(0)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Carries dtype/device through .to()/.double() for `sample`; not part of checkpoints.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def log_prob(self, z: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Exact log N(z; 0, I) per row; `k` is ignored."""
        return log_standard_normal(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        a = _like(self)
        return torch.randn(n, self.latent_dim, generator=generator, dtype=a.dtype, device=a.device)


class VampPrior(nn.Module):
    """p(z) = 1/K sum_k q_phi(z|u_k) with K learned pseudo-inputs u_k (Tomczak & Welling 2018)."""

    def __init__(
        self,
        encoder: GaussianEncoder,
        x_shape: tuple[int, ...],
        n_pseudo: int,
        init_mean: float = 0.0,
        init_std: float = 0.1,
        unit_interval: bool = False,
    ) -> None:
        super().__init__()
        # The encoder belongs to the model; holding it in a tuple keeps it out of this
        # module's parameters and state_dict (the prior's own parameters are the u_k only).
        self._encoder = (encoder,)
        self.unit_interval = unit_interval
        self.pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(n_pseudo, *x_shape))

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k as the encoder sees them.

        For binary data they are kept in [0, 1] (hardtanh), where the data live: a
        pseudo-input outside that range places its component away from every posterior.
        """
        if self.unit_interval:
            return F.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        return self.pseudo_inputs

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q_phi(z|u_k), (K, latent) each."""
        return self._encoder[0](self.inputs())

    def log_prob(self, z: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Exact log p(z) per row, logsumexp over the K components minus log K; `k` is ignored."""
        mu, logvar = self.components()
        # The (n, K) quadratic forms as matmuls, in float64 so that expanding
        # (z - mu)^2 / var loses nothing to cancellation.
        z64, mu64, logvar64 = z.double(), mu.double(), logvar.double()
        inv_var = torch.exp(-logvar64)  # (K, latent)
        quad = z64.square() @ inv_var.T - 2.0 * z64 @ (mu64 * inv_var).T + (mu64.square() * inv_var).sum(-1)
        log_components = -0.5 * (quad + logvar64.sum(-1) + z.shape[-1] * math.log(2.0 * math.pi))
        return importance_weighted_bound(log_components, dim=-1).to(z.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self.components()
        index = torch.randint(mu.shape[0], (n,), generator=generator, device=mu.device)
        eps = torch.randn(n, mu.shape[1], generator=generator, dtype=mu.dtype, device=mu.device)
        return reparameterise(mu[index], logvar[index], eps)


class GaussianConditional(nn.Module):
    """A diagonal Gaussian conditional N(mu(v), diag exp(logvar(v))).

    With hidden widths, an MLP outputs (mu, logvar). With hidden == () it is
    linear-Gaussian: mu = W v + b and logvar a free vector independent of v, which is
    what makes the marginal of the hierarchical prior Gaussian in closed form.
    """

    def __init__(self, n_in: int, n_out: int, hidden: tuple[int, ...], activation: str, precision: str) -> None:
        super().__init__()
        self.linear = len(hidden) == 0
        if self.linear:
            self.net = Network(nn.Linear(n_in, n_out), precision)
            self.logvar = nn.Parameter(torch.zeros(n_out))
        else:
            self.net = Network(mlp((n_in, *hidden, 2 * n_out), activation), precision)
            self.register_parameter("logvar", None)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(v)
        if self.linear:
            return out, self.logvar.to(out.dtype).expand_as(out)
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar


class HierarchicalPrior(nn.Module):
    """p(z) = int p_Theta(z|zeta) N(zeta; 0, I) dzeta with recognition net q_Phi(zeta|z) (METHOD §2).

    Theta are the parameters of `p_z_given_zeta`, Phi those of `q_zeta_given_z`.
    """

    def __init__(
        self,
        latent_dim: int,
        zeta_dim: int,
        hidden: tuple[int, ...],
        activation: str,
        k_inner: int,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.zeta_dim = zeta_dim
        self.k_inner = k_inner
        self.p_z_given_zeta = GaussianConditional(zeta_dim, latent_dim, hidden, activation, precision)  # Theta
        self.q_zeta_given_z = GaussianConditional(latent_dim, zeta_dim, hidden, activation, precision)  # Phi

    @property
    def linear_gaussian(self) -> bool:
        """True when both conditionals are linear-Gaussian (prior_hidden == ())."""
        return self.p_z_given_zeta.linear and self.q_zeta_given_z.linear

    def log_importance_weights(self, z: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p_Theta(z|zeta_k) + log p(zeta_k) - log q_Phi(zeta_k|z), zeta_k ~ q_Phi(zeta|z); (n, k).

        The zeta_k are reparameterised, so the weights are differentiable in z, Theta and Phi.
        All n*k zetas go through p_Theta in one batch.
        """
        n = z.shape[0]
        mu_q, logvar_q = self.q_zeta_given_z(z)  # (n, zeta)
        eps = standard_normal((n, k, self.zeta_dim), generator, z.dtype, z.device)
        zeta = reparameterise(mu_q.unsqueeze(1), logvar_q.unsqueeze(1), eps)  # (n, k, zeta)
        log_q = log_normal_from_noise(eps, logvar_q.unsqueeze(1))  # (n, k)
        mu_p, logvar_p = self.p_z_given_zeta(zeta.reshape(n * k, self.zeta_dim))
        log_p_z_given_zeta = log_normal_diag(
            z.unsqueeze(1), mu_p.reshape(n, k, self.latent_dim), logvar_p.reshape(n, k, self.latent_dim)
        )
        return log_p_z_given_zeta + log_standard_normal(zeta) - log_q

    def log_prob_bound(self, z: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """F(Theta, Phi; z) = log (1/K) sum_k p_Theta(z|zeta_k) p(zeta_k) / q_Phi(zeta_k|z) per row; (n,).

        A stochastic lower bound of log p(z) for every K >= 1, non-decreasing in K in
        expectation; logsumexp in float64, returned in z's dtype.
        """
        if k < 1:
            raise ValueError(f"k (number of zeta samples) must be >= 1, got {k}")
        return importance_weighted_bound(self.log_importance_weights(z, k, generator), dim=1).to(z.dtype)

    def log_prob(self, z: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """F with K = k (default: k_inner) zeta samples; a stochastic lower bound of log p(z)."""
        return self.log_prob_bound(z, self.k_inner if k is None else k)

    def exact_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Closed-form log p(z) = log N(z; b, W W^T + diag sigma^2); only when prior_hidden == ()."""
        if not self.linear_gaussian:
            raise ValueError("exact_log_prob needs linear-Gaussian conditionals (prior_hidden == ())")
        layer = self.p_z_given_zeta.net.body
        assert isinstance(layer, nn.Linear)
        w = layer.weight.to(z.dtype)  # (latent, zeta)
        b = layer.bias.to(z.dtype)
        cov = w @ w.T + torch.diag(torch.exp(self.p_z_given_zeta.logvar.to(z.dtype)))
        return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """zeta ~ N(0, I), z ~ p_Theta(z|zeta); (n, latent)."""
        a = _like(self)
        zeta = torch.randn(n, self.zeta_dim, generator=generator, dtype=a.dtype, device=a.device)
        mu, logvar = self.p_z_given_zeta(zeta)
        eps = torch.randn(n, self.latent_dim, generator=generator, dtype=a.dtype, device=a.device)
        return reparameterise(mu, logvar, eps)
