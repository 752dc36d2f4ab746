"""The analytic diagonal-Gaussian KL and log-density against torch.distributions."""

from __future__ import annotations

import torch
from hypothesis import given
from torch.distributions import Normal, kl_divergence

from tests.strategies import diagonal_gaussian_pairs
from vhp_core import gaussian_kl, log_normal_diag, log_standard_normal


@given(pair=diagonal_gaussian_pairs())
def test_kl_is_non_negative(pair: tuple[torch.Tensor, ...]) -> None:
    assert (gaussian_kl(*pair) >= 0).all()


@given(pair=diagonal_gaussian_pairs())
def test_kl_is_zero_when_q_equals_p(pair: tuple[torch.Tensor, ...]) -> None:
    mu, logvar, _, _ = pair
    torch.testing.assert_close(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(mu.shape[0], dtype=mu.dtype))


@given(pair=diagonal_gaussian_pairs())
def test_kl_matches_torch_distributions(pair: tuple[torch.Tensor, ...]) -> None:
    mu_q, logvar_q, mu_p, logvar_p = pair
    q = Normal(mu_q, torch.exp(0.5 * logvar_q))
    p = Normal(mu_p, torch.exp(0.5 * logvar_p))
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), kl_divergence(q, p).sum(-1))
    # The default second argument is the standard normal (the VAE's KL term).
    standard = Normal(torch.zeros_like(mu_q), torch.ones_like(mu_q))
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q), kl_divergence(q, standard).sum(-1))


@given(pair=diagonal_gaussian_pairs())
def test_log_normal_matches_torch_distributions(pair: tuple[torch.Tensor, ...]) -> None:
    mu, logvar, x, _ = pair
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(log_normal_diag(x, mu, logvar), expected)
    torch.testing.assert_close(log_standard_normal(x), Normal(0.0, 1.0).log_prob(x).sum(-1))
