"""The latent plane the evaluate stage's figures are drawn in, and its extent.

Latent spaces of more than two dimensions are drawn in the plane of their first
two principal components (through the mean of the encoded test data); the MF
heat map is then that of the decoder restricted to this plane. A 2-D latent
space is its own plane. Pure NumPy, but for `LatentPlane.decoder`, which wraps a
model's decoder for the MF grid (pass 1, `record.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def principal_plane(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (L,), basis (L, 2)) of the first two principal components of z.

    Used to draw latent spaces of more than two dimensions: points project to
    (z - mean) @ basis, and a plane point u maps back to mean + basis @ u.
    """
    z = np.asarray(z, dtype=np.float64)
    mean = z.mean(axis=0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:  # L == 1: pad with a zero direction
        basis = np.hstack([basis, np.zeros((len(mean), 2 - basis.shape[1]))])
    return mean, basis


@dataclass(frozen=True)
class LatentPlane:
    """Maps between the latent space and the 2-D plane the figures show (identity for 2-D latents)."""

    mean: np.ndarray  # (L,)
    basis: np.ndarray  # (L, 2), orthonormal columns
    identity: bool

    @classmethod
    def fit(cls, mu: np.ndarray) -> LatentPlane:
        if mu.shape[1] == 2:
            return cls(np.zeros(2), np.eye(2), True)
        mean, basis = principal_plane(mu)
        return cls(mean, basis, False)

    def project(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z) if self.identity else (np.asarray(z) - self.mean) @ self.basis

    def decoder(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Decoder mean as a function of plane coordinates u: (B, 2) -> (B, D)."""
        if self.identity:
            return model.decoder_mean_flat
        mean = torch.as_tensor(self.mean)
        basis = torch.as_tensor(self.basis)

        def on_plane(u: torch.Tensor) -> torch.Tensor:
            return model.decoder_mean_flat(mean.to(u.dtype) + u @ basis.to(u.dtype).T)

        return on_plane

    @property
    def axis_names(self) -> tuple[str, str]:
        return ("z1", "z2") if self.identity else ("PC 1 of E_q[z|x]", "PC 2 of E_q[z|x]")


def extent(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    """(x low, x high, y low, y high) of 2-D points, widened by ``margin`` of their span on each side."""
    low, high = points.min(axis=0), points.max(axis=0)
    pad = np.maximum((high - low) * margin, 1e-3)
    low, high = low - pad, high + pad
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])
