"""Diagonal Gaussian densities: log N, reparameterised sampling and the analytic KL.

Every density of the model is a diagonal Gaussian N(mu, diag exp(logvar)): the
encoder q_phi(z|x), the conditionals p_Theta(z|zeta) and q_Phi(zeta|z) of the
hierarchical prior and the standard-normal priors. The KL is the closed form of
Kingma & Welling (2014, appendix B) generalised to a non-standard second argument.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """N(0, I) noise of `shape` on `device`, drawn on the generator's device.

    A CPU generator driving a GPU computation draws on the CPU and copies the noise over,
    so the same generator gives the same draws on every device (how the CPU and GPU
    log-likelihoods are compared number for number).
    """
    if generator is not None and generator.device.type != torch.device(device).type:
        return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def log_normal_diag(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, diag exp(logvar)), summed over the last dimension (broadcasting)."""
    sq = (x - mu).square() * torch.exp(-logvar)
    return -0.5 * (sq + logvar + LOG_2PI).sum(-1)


def log_standard_normal(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I), summed over the last dimension."""
    return -0.5 * (x.square() + LOG_2PI).sum(-1)


def log_normal_from_noise(eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(mu + exp(logvar / 2) * eps; mu, diag exp(logvar)) from the standard noise eps.

    Exact and cheaper than `log_normal_diag` for a reparameterised sample, and free of
    the cancellation in x - mu when the variance is tiny.
    """
    return -0.5 * (eps.square() + logvar + LOG_2PI).sum(-1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """mu + sigma * eps with sigma = exp(logvar / 2) (the reparameterisation trick)."""
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(
    mu_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mu_p: torch.Tensor | None = None,
    logvar_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p)), summed over the last dim.

    mu_p, logvar_p default to the standard normal, which gives the VAE's KL term.
    """
    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
    if logvar_p is None:
        logvar_p = torch.zeros_like(logvar_q)
    log_ratio = logvar_q - logvar_p
    mahalanobis = (mu_q - mu_p).square() * torch.exp(-logvar_p)
    # expm1(r) - r = e^r - 1 - r >= 0 without the cancellation of e^r - 1 near r = 0.
    return 0.5 * (torch.expm1(log_ratio) - log_ratio + mahalanobis).sum(-1)
