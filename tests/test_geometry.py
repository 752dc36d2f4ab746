"""Magnification factor: closed forms for linear decoders, agreement with autograd for networks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vhp_core.geometry import (
    decoder_jacobian,
    latent_grid,
    magnification_factor,
    magnification_factor_from_jacobian,
    magnification_factor_grid,
)


def _linear(latent: int, out: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(latent, out).double()


@given(latent=st.integers(1, 4), extra=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_linear_decoder_mf_is_sqrt_det_wtw_everywhere(latent: int, extra: int, seed: int) -> None:
    decoder = _linear(latent, latent + extra, seed)
    z = torch.randn(17, latent, dtype=torch.float64) * 5
    mf = magnification_factor(decoder, z, chunk_size=4)
    w = decoder.weight.detach()
    expected = torch.sqrt(torch.det(w.T @ w))
    assert mf.shape == (17,)
    torch.testing.assert_close(mf, expected.expand(17), rtol=1e-9, atol=1e-12)


def test_rank_deficient_decoder_has_zero_mf() -> None:
    decoder = _linear(2, 10, 0)
    with torch.no_grad():
        decoder.weight[:, 1] = 2.0 * decoder.weight[:, 0]  # both latent directions decode alike
    mf = magnification_factor(decoder, torch.randn(5, 2, dtype=torch.float64))
    assert torch.all(mf >= 0) and torch.all(mf < 1e-6)


def test_scaled_identity_mf_is_scale_to_the_latent_dim() -> None:
    scale = 3.0
    mf = magnification_factor(lambda z: scale * z, torch.randn(6, 3, dtype=torch.float64))
    torch.testing.assert_close(mf, torch.full((6,), scale**3, dtype=torch.float64))


def test_network_jacobian_matches_autograd() -> None:
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 7)).double()
    z = torch.randn(9, 2, dtype=torch.float64)
    jac = decoder_jacobian(net, z, chunk_size=4)
    assert jac.shape == (9, 7, 2)
    for i in range(len(z)):
        expected = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], z[i])
        torch.testing.assert_close(jac[i], expected)
    torch.testing.assert_close(
        magnification_factor(net, z), magnification_factor_from_jacobian(jac), rtol=1e-10, atol=1e-14
    )


def test_image_shaped_decoder_output_is_flattened() -> None:
    decoder = _linear(2, 12, 3)
    mf_flat = magnification_factor(decoder, torch.randn(4, 2, dtype=torch.float64))
    mf_image = magnification_factor(lambda z: decoder(z).reshape(-1, 1, 3, 4), torch.randn(4, 2, dtype=torch.float64))
    torch.testing.assert_close(mf_flat, mf_image)


def test_grid_is_indexed_y_then_x() -> None:
    points, xs, ys = latent_grid((0.0, 10.0), (1.0, 20.0), 5)
    assert points.shape == (25, 2)
    grid = points.reshape(5, 5, 2)
    torch.testing.assert_close(grid[0, :, 0], xs)
    torch.testing.assert_close(grid[:, 0, 1], ys)
    # MF of a decoder that stretches only far along x: the grid shows it column-wise.
    mf, _, _ = magnification_factor_grid(lambda z: torch.stack([z[:, 0] ** 2, z[:, 1]], 1), (0.0, 0.0), (1.0, 1.0), 5)
    torch.testing.assert_close(mf[0], 2 * xs.to(mf.dtype))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch, latent"):
        magnification_factor(lambda z: z, torch.zeros(3))
    with pytest.raises(ValueError, match="chunk_size"):
        magnification_factor(lambda z: z, torch.zeros(3, 2), chunk_size=0)


def test_empty_batch() -> None:
    assert magnification_factor(lambda z: z, torch.zeros(0, 2)).shape == (0,)


def test_float32_input_gives_float32_output() -> None:
    mf = magnification_factor(torch.nn.Linear(2, 5), torch.randn(3, 2))
    assert mf.dtype == torch.float32 and math.isfinite(float(mf.sum()))
