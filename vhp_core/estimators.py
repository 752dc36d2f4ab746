"""Test log-likelihood by importance sampling (METHOD §5; Burda et al. 2016, Rezende et al. 2014).

    log p(x) ~= logsumexp_s [ log p(x|z_s) + log p(z_s) - log q(z_s|x) ] - log S,  z_s ~ q(z|x)

For the hierarchical prior log p(z_s) is itself the inner importance-weighted estimate
with K_eval zetas per z_s (`n_inner`). Its exponential is an unbiased estimate of p(z_s),
so the product with p(x|z_s) / q(z_s|x) is an unbiased estimate of p(x) and the outer
log stays a stochastic lower bound of log p(x).

Vectorised over samples and data points: a pass evaluates up to `chunk` latent samples
(samples x rows) through the decoder at once, and the hierarchical prior sees at most
`chunk` zeta rows at once, so memory is bounded independently of S, K_eval and B. The
per-row result is accumulated with a running logsumexp in float64. The default chunk
depends on the device (`default_chunk`): on the CPU it keeps a pass's activations
(chunk x width floats) within the caches, where larger passes make the element-wise work
(activations, softplus, sums) memory-bound without making the matmuls faster; on a GPU
a pass is as large as a quarter of the free device memory allows (at most
`GPU_MAX_CHUNK` rows), so kernel launches are few and memory still bounded. With the
same chunk, a CPU generator gives the same draws on a GPU (`gaussian.standard_normal`),
so the CPU and GPU estimates agree up to float rounding (tests/test_gpu.py).

Fast path (the default): the fp32 MLPs run as `inference_mlp.InferenceMLP`, tanh layers as
one addmm and one in-place sigmoid with the tanh's affine factors folded into the
weights. It computes the same function; `reference=True` runs the ordinary layers
instead, and tests/test_core_fast_paths.py holds the two within 1e-3 nats.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch

from .bounds import importance_weighted_bound
from .gaussian import log_normal_from_noise, reparameterise, standard_normal
from .models import LatentVariableModel
from .inference_mlp import inference_layers
from .priors import HierarchicalPrior

DEFAULT_CHUNK = 2048  # latent samples a pass on the CPU
GPU_MAX_CHUNK = 2**18  # latent samples a pass on a GPU, at most


def default_chunk(model: LatentVariableModel, device: torch.device | str) -> int:
    """Latent samples per pass on `device`: DEFAULT_CHUNK on the CPU; on a GPU as many as fit
    a quarter of its free memory (the bytes of a row estimated from the model's widths), between
    DEFAULT_CHUNK and GPU_MAX_CHUNK."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_CHUNK
    config = model.config
    widths = 2 * sum(config.hidden) + 6 * config.data_dim + 8 * config.latent_dim
    if isinstance(model.prior, HierarchicalPrior):
        widths = max(widths, 2 * sum(config.prior_hidden) + 8 * (config.latent_dim + config.zeta_dim))
    free, _ = torch.cuda.mem_get_info(device)
    rows = (free // 4) // (4 * widths)
    return int(max(DEFAULT_CHUNK, min(GPU_MAX_CHUNK, rows)))


def _log_prior(
    model: LatentVariableModel, z: torch.Tensor, n_inner: int, chunk: int, generator: torch.Generator | None
) -> torch.Tensor:
    """log p(z) per row in float64: exact, or the nested estimate for the hierarchical prior."""
    prior = model.prior
    if not isinstance(prior, HierarchicalPrior):
        return model.log_prior(z).double()
    step = max(1, chunk // n_inner)
    parts = [
        importance_weighted_bound(prior.log_importance_weights(z[i : i + step], n_inner, generator), dim=1)
        for i in range(0, z.shape[0], step)
    ]
    return torch.cat(parts)


@torch.no_grad()
def log_likelihood(
    model: LatentVariableModel,
    x: torch.Tensor,
    n_samples: int,
    n_inner: int | None = None,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
    reference: bool = False,
) -> torch.Tensor:
    """Importance-sampling estimate of log p(x) per row, float64 (B,); x is (B, *x_shape).

    n_samples: S samples z_s ~ q(z|x) per data point. n_inner: K_eval zetas per z_s for
    the hierarchical prior (default: the model's k_inner); ignored by exact priors.
    chunk: at most this many latent samples (and, for the hierarchical prior, zeta rows)
    per pass; bounds memory, not the result (default: `default_chunk` of x's device).
    generator: on x's device, or a CPU generator (the draws are then made on the CPU and
    copied, the same on every device). reference: run the networks' ordinary layers
    instead of the fast inference passes (same numbers up to float rounding).
    """
    return log_likelihood_and_elbo(model, x, n_samples, n_inner, chunk, generator, reference).log_px


class LikelihoodEstimate(NamedTuple):
    """Per-row figures of one importance-sampling pass, float64 (B,) each.

    log_px: the log-likelihood estimate. elbo: the mean of the same S log-weights, an
    unbiased estimate of the ELBO (with the K_eval-sample F for the hierarchical prior),
    so that log-likelihood and ELBO stand on the same points and samples; elbo_se: its
    standard error over the S samples (0 for S = 1).
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    elbo_se: torch.Tensor


@torch.no_grad()
def log_likelihood_and_elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    n_samples: int,
    n_inner: int | None = None,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
    reference: bool = False,
) -> LikelihoodEstimate:
    """`log_likelihood`, and the ELBO per row from the same log-weights (arguments as there)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if chunk is None:
        chunk = default_chunk(model, x.device)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    k_inner = model.config.k_inner if n_inner is None else n_inner
    if k_inner < 1:
        raise ValueError(f"n_inner must be >= 1, got {n_inner}")
    result = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    moments = torch.zeros(2, x.shape[0], dtype=torch.float64, device=x.device)  # sums of log w and (log w)^2
    with contextlib.nullcontext() if reference else inference_layers(model):
        _estimate(model, x, n_samples, k_inner, chunk, generator, result, moments)
    mean = moments[0] / n_samples
    var = (moments[1] / n_samples - mean.square()).clamp_min(0.0) * (n_samples / max(n_samples - 1, 1))
    return LikelihoodEstimate(result, mean, (var / n_samples).sqrt())


def _estimate(
    model: LatentVariableModel, x: torch.Tensor, n_samples: int, k_inner: int, chunk: int,
    generator: torch.Generator | None, result: torch.Tensor, moments: torch.Tensor,
) -> None:
    batch = x.shape[0]
    rows_per_pass = min(batch, chunk)
    samples_per_pass = max(1, chunk // rows_per_pass)
    for r0 in range(0, batch, rows_per_pass):
        x_rows = x[r0 : r0 + rows_per_pass]
        rows = x_rows.shape[0]
        x_flat = model.flatten_data(x_rows)
        mu, logvar = model.encode(x_rows)
        running = torch.full((rows,), -math.inf, dtype=torch.float64, device=x.device)
        for s0 in range(0, n_samples, samples_per_pass):
            s = min(samples_per_pass, n_samples - s0)
            eps = standard_normal((s, *mu.shape), generator, mu.dtype, mu.device)
            z = reparameterise(mu, logvar, eps)  # (s, rows, latent)
            log_q = log_normal_from_noise(eps, logvar)  # (s, rows)
            z_flat = z.reshape(s * rows, -1)
            out = model.decoder_output(z_flat).reshape(s, rows, -1)
            log_px = model.likelihood.log_prob(x_flat, out)  # (s, rows)
            log_pz = _log_prior(model, z_flat, k_inner, chunk, generator).reshape(s, rows)
            log_w = log_px.double() + log_pz - log_q.double()
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
            moments[0, r0 : r0 + rows] += log_w.sum(dim=0)
            moments[1, r0 : r0 + rows] += log_w.square().sum(dim=0)
        result[r0 : r0 + rows] = running - math.log(n_samples)


__all__ = ["DEFAULT_CHUNK", "GPU_MAX_CHUNK", "LikelihoodEstimate", "default_chunk", "importance_weighted_bound",
           "log_likelihood", "log_likelihood_and_elbo"]
