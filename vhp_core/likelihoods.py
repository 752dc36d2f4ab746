"""Decoder likelihoods p_theta(x|z): Bernoulli (from logits) and Gaussian (fixed or learned std).

Each gives, from the decoder output, the log-likelihood log p(x|z) summed over the data
dimensions (what enters the ELBO and the likelihood estimates, METHOD §5) and the
reconstruction error C_theta(x, z) of METHOD §1 averaged over the data dimensions
(Gaussian: squared error; Bernoulli: binary cross-entropy), which is what the
constraint C <= kappa^2 is measured on.

Shapes: x is (..., D) and the decoder output (..., D) with broadcasting between them
(the estimators pair x (B, D) with outputs (S, B, D)); results are (...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .gaussian import LOG_2PI


class Bernoulli(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logits_d)); x in [0, 1] (binary or grey levels)."""

    def terms(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z) summed over dims, C = mean binary cross-entropy over dims)."""
        # x * l - softplus(l) is the stable form of x log s(l) + (1 - x) log(1 - s(l));
        # softplus is a single fused kernel, so this is two passes over the logits.
        log_px = (x * logits).sum(-1) - F.softplus(logits).sum(-1)
        return log_px, -log_px / logits.shape[-1]

    def log_prob(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x|z), summed over the data dimensions."""
        return self.terms(x, logits)[0]

    def reconstruction_error(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """C: binary cross-entropy averaged over the data dimensions."""
        return self.terms(x, logits)[1]

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x|z] = sigmoid(logits)."""
        return torch.sigmoid(logits)


class Gaussian(nn.Module):
    """p(x|z) = N(x; mu(z), std^2 I) with a scalar std, fixed or learned (as log std)."""

    log_std: torch.Tensor

    def __init__(self, std: float = 1.0, learn_std: bool = False) -> None:
        super().__init__()
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"gaussian std must be a finite number > 0, got {std!r}")
        log_std = torch.tensor(math.log(std))
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    def terms(self, x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z) summed over dims, C = mean squared error over dims)."""
        data_dim = mean.shape[-1]
        sq_sum = (x - mean).square().sum(-1)
        log_std = self.log_std.to(mean.dtype)
        log_px = -0.5 * sq_sum * torch.exp(-2.0 * log_std) - data_dim * (log_std + 0.5 * LOG_2PI)
        return log_px, sq_sum / data_dim

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x|z), summed over the data dimensions."""
        return self.terms(x, mean)[0]

    def reconstruction_error(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """C: squared error averaged over the data dimensions."""
        return self.terms(x, mean)[1]

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        """E[x|z] = the decoder output."""
        return mean


Likelihood = Bernoulli | Gaussian


def build_likelihood(name: str, gaussian_std: float = 1.0, learn_std: bool = False) -> Likelihood:
    """The likelihood named 'bernoulli' or 'gaussian'."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(gaussian_std, learn_std)
    raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {name!r}")
