"""Riemannian geometry of the decoder: Jacobians and the magnification factor.

The decoder mean mu_theta: R^L -> R^D pulls the Euclidean metric of data space
back to the latent space, G(z) = J(z)^T J(z) with J = d mu_theta / dz. The
magnification factor MF(z) = sqrt(det G(z)) is the local volume scaling of that
map (Bishop, Svensen & Williams, "Magnification factors for the SOM and GTM
algorithms", 1997; Chen et al., "Metrics for deep generative models", AISTATS
2018). High MF marks places where decoded outputs change fast, i.e. gaps
between parts of the data manifold (METHOD section 6).

The Jacobian is computed in forward mode (``torch.func.jacfwd``) and batched
with ``torch.func.vmap``: for a latent space of a few dimensions, forward mode
needs L Jacobian-vector products per point instead of D vector-Jacobian products,
and vmap runs them for a whole chunk of points in one pass of the network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacfwd, vmap

Decoder = Callable[[torch.Tensor], torch.Tensor]
"""A decoder mean: (B, L) -> (B, D) or (B, *x_shape); functional (torch.func-safe)."""


def _single_point(decoder: Decoder) -> Callable[[torch.Tensor], torch.Tensor]:
    # The decoder is written for batches; wrapping one point as a batch of one
    # lets any batched decoder (nn.Module or function) be used under vmap.
    def f(z: torch.Tensor) -> torch.Tensor:  # (L,) -> (D,)
        return decoder(z.unsqueeze(0)).reshape(-1)

    return f


def decoder_jacobian(decoder: Decoder, z: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """J(z) = d mu(z) / dz for every row of ``z``.

    z: (B, L). Returns (B, D, L), D the flattened output size. ``chunk_size``
    bounds memory: one chunk holds chunk_size * D * L Jacobian entries plus the
    network's activations for chunk_size * L tangents.
    """
    if z.ndim != 2:
        raise ValueError(f"z must have shape (batch, latent), got {tuple(z.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(z) == 0:
        raise ValueError("z holds no points")
    jac = vmap(jacfwd(_single_point(decoder)))
    with torch.no_grad():
        parts = [jac(chunk) for chunk in torch.split(z, chunk_size)]
    return torch.cat(parts)


def magnification_factor_from_jacobian(jacobian: torch.Tensor) -> torch.Tensor:
    """sqrt(det(J^T J)) for J of shape (..., D, L); computed in float64."""
    j = jacobian.to(torch.float64)
    metric = j.transpose(-1, -2) @ j  # (..., L, L) pull-back metric, positive semi-definite
    # Round-off can make a singular metric's determinant slightly negative.
    return torch.linalg.det(metric).clamp_min(0.0).sqrt()


def magnification_factor(decoder: Decoder, z: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """MF(z) = sqrt(det(J(z)^T J(z))) of the decoder mean at every row of ``z``.

    z: (B, L). Returns (B,) in z's dtype. Works chunk by chunk, so the full
    (B, D, L) Jacobian is never held at once.
    """
    if z.ndim != 2:
        raise ValueError(f"z must have shape (batch, latent), got {tuple(z.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(z) == 0:
        return z.new_zeros((0,))
    jac = vmap(jacfwd(_single_point(decoder)))
    out = []
    with torch.no_grad():
        for chunk in torch.split(z, chunk_size):
            out.append(magnification_factor_from_jacobian(jac(chunk)).to(z.dtype))
    return torch.cat(out)


def latent_grid(
    low: tuple[float, float], high: tuple[float, float], resolution: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A regular resolution x resolution grid over [low, high] in two dimensions.

    Returns (points (resolution**2, 2), xs (resolution,), ys (resolution,)); the
    points run over x fastest, so ``values.reshape(resolution, resolution)`` is
    indexed [y, x] as image libraries expect.
    """
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    xs = torch.linspace(low[0], high[0], resolution, dtype=dtype)
    ys = torch.linspace(low[1], high[1], resolution, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1), xs, ys


def magnification_factor_grid(
    decoder: Decoder,
    low: tuple[float, float],
    high: tuple[float, float],
    resolution: int,
    chunk_size: int = 1024,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MF over a regular 2-D grid: returns (mf (resolution, resolution) indexed [y, x], xs, ys)."""
    points, xs, ys = latent_grid(low, high, resolution, dtype)
    mf = magnification_factor(decoder, points, chunk_size)
    return mf.reshape(resolution, resolution), xs, ys
