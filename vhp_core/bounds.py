"""The importance-weighted bound: log (1/K) sum_k w_k from log-weights, in float64.

Burda et al. (2016, IWAE): for weights w_k = p(x, z_k) / q(z_k|x) with z_k ~ q, the
log of their mean is a stochastic lower bound of log p(x) that does not decrease in
expectation with K. The same combination gives the hierarchical prior's bound F
(METHOD §2) and the test log-likelihood estimate (METHOD §5).
"""

from __future__ import annotations

import math

import torch


def importance_weighted_bound(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """logsumexp(log_w, dim) - log K in float64, K = log_w.shape[dim].

    logsumexp subtracts the maximum first, so log-weights of +-1e4 (whose exponentials
    overflow float64) give a finite result. Differentiable; the caller casts back if it
    trains in a lower precision.
    """
    k = log_w.shape[dim]
    if k < 1:
        raise ValueError("importance_weighted_bound needs at least one log-weight along dim")
    return torch.logsumexp(log_w.to(torch.float64), dim=dim) - math.log(k)
