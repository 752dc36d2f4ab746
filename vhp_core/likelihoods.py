"""Decoder likelihoods p_theta(x|z): Bernoulli (from logits) and Gaussian (fixed, learned or calibrated std).

The calibrated Gaussian decoder follows sigma-VAE (Rybkin, Daniilidis & Levine 2021,
"Simple and Effective VAE Training with Calibrated Decoders"): sigma^2 is set, not
learned, to its optimum given the current reconstruction, the mean squared error
(detached), per batch or as a bias-corrected moving average, one sigma or one per
data dimension. C does not depend on sigma.

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


CALIBRATIONS = ("none", "batch", "average")
CALIBRATION_ALPHA = 0.99  # moving average of the squared error (bias-corrected, as Adam's moments)
MIN_VARIANCE = 1e-6       # floor of the calibrated sigma^2: a perfect fit must not give log 0


def calibrated_variance(sq_err: torch.Tensor, per_dim: bool) -> torch.Tensor:
    """sigma^2 at its optimum for squared errors sq_err (..., D): their mean, over every
    axis but the last with per_dim (shape (D,)), else over all (shape ()); detached, floored."""
    sq_err = sq_err.detach()
    var = sq_err.reshape(-1, sq_err.shape[-1]).mean(0) if per_dim else sq_err.mean()
    return var.clamp_min(MIN_VARIANCE)


class Gaussian(nn.Module):
    """p(x|z) = N(x; mu(z), diag(std^2)) with std fixed, learned (a scalar log std) or calibrated.

    calibration 'batch': in training, sigma^2 = this batch's mean squared error; 'average':
    sigma^2 = the bias-corrected moving average of it (alpha = CALIBRATION_ALPHA). Either way
    the buffer `log_std` follows the moving average in training and is the sigma used in
    evaluation (model.eval()), the one saved with the weights. per_dim: one sigma per data
    dimension instead of one for all.
    """

    log_std: torch.Tensor

    def __init__(self, std: float = 1.0, learn_std: bool = False, calibration: str = "none",
                 per_dim: bool = False, data_dim: int = 1) -> None:
        super().__init__()
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"gaussian std must be a finite number > 0, got {std!r}")
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if learn_std and calibration != "none":
            raise ValueError("a gaussian std is learned or calibrated, not both")
        self.calibration = calibration
        self.per_dim = per_dim
        shape = (data_dim,) if per_dim else ()
        log_std = torch.full(shape, math.log(std))
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)
        if calibration != "none":
            # the moving average m_t = alpha m_{t-1} + (1 - alpha) e_t started at 0; m_t / (1 - alpha^t)
            self.register_buffer("sq_err_average", torch.zeros(shape, dtype=torch.float64))
            self.register_buffer("calibration_steps", torch.zeros((), dtype=torch.int64))

    def _calibrated_log_std(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        var = calibrated_variance((x - mean).square(), self.per_dim)
        if not bool(torch.isfinite(var).all()):  # a bad batch (skipped by train_step) must not stick
            return 0.5 * torch.log(var)
        with torch.no_grad():
            self.calibration_steps += 1
            self.sq_err_average.mul_(CALIBRATION_ALPHA).add_((1 - CALIBRATION_ALPHA) * var.double())
            average = self.sq_err_average / (1 - CALIBRATION_ALPHA ** self.calibration_steps.double())
            self.log_std.copy_(0.5 * torch.log(average.clamp_min(MIN_VARIANCE)).to(self.log_std.dtype))
        return 0.5 * torch.log(var) if self.calibration == "batch" else self.log_std

    def terms(self, x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z) summed over dims, C = mean squared error over dims)."""
        data_dim = mean.shape[-1]
        sq = (x - mean).square()
        log_std = self.log_std
        if self.calibration != "none" and self.training and torch.is_grad_enabled():
            log_std = self._calibrated_log_std(x, mean)
        log_std = log_std.to(mean.dtype)
        if log_std.dim() == 0:
            log_px = -0.5 * sq.sum(-1) * torch.exp(-2.0 * log_std) - data_dim * (log_std + 0.5 * LOG_2PI)
        else:
            log_px = -0.5 * (sq * torch.exp(-2.0 * log_std)).sum(-1) - (log_std.sum() + 0.5 * data_dim * LOG_2PI)
        return log_px, sq.sum(-1) / data_dim

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x|z), summed over the data dimensions."""
        return self.terms(x, mean)[0]

    def reconstruction_error(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """C: squared error averaged over the data dimensions."""
        return self.terms(x, mean)[1]

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        """E[x|z] = the decoder output."""
        return mean

    def std(self) -> torch.Tensor:
        """sigma in force for evaluation: () or (D,)."""
        return self.log_std.detach().exp()


Likelihood = Bernoulli | Gaussian


def build_likelihood(name: str, gaussian_std: float = 1.0, learn_std: bool = False, calibration: str = "none",
                     per_dim: bool = False, data_dim: int = 1) -> Likelihood:
    """The likelihood named 'bernoulli' or 'gaussian' (std fixed, learned or calibrated)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(gaussian_std, learn_std, calibration, per_dim, data_dim)
    raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {name!r}")
