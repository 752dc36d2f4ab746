"""The hierarchical prior's bound F(Theta, Phi; z) against the linear-Gaussian oracle (METHOD §2),
and the float64 importance-weighted bound on extreme log-weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from tests.strategies import (
    DTYPE,
    LinearGaussianPriorCase,
    extreme_log_weights,
    generator,
    linear_gaussian_priors,
    seeds,
    set_linear_gaussian,
)
from vhp_core import HierarchicalPrior, importance_weighted_bound

N_POINTS = 3


def oracle_log_pz(case: LinearGaussianPriorCase, z: torch.Tensor) -> torch.Tensor:
    """log N(z; b, W W^T + diag e^logvar_z), computed by scipy independently of vhp_core."""
    p = {k: v.numpy() for k, v in case.parameters().items()}
    cov = p["w"] @ p["w"].T + np.diag(np.exp(p["logvar_z"]))
    return torch.from_numpy(np.atleast_1d(multivariate_normal(p["b"], cov).logpdf(z.numpy())))


def posterior_proposal(prior: HierarchicalPrior, case: LinearGaussianPriorCase, inflation: float) -> None:
    """Set q_Phi(zeta|z) to the exact posterior mean with isotropic variance inflation * lambda_max(Sigma).

    The true posterior is N(Sigma W^T D^-1 (z - b), Sigma), Sigma = (I + W^T D^-1 W)^-1. For
    zeta_dim = 1 and inflation = 1 this is exact; otherwise it is an over-dispersed proposal
    whose importance weights have finite variance.
    """
    p = case.parameters()
    d_inv = torch.diag(torch.exp(-p["logvar_z"]))
    sigma = torch.linalg.inv(torch.eye(case.zeta_dim, dtype=DTYPE) + p["w"].T @ d_inv @ p["w"])
    a = sigma @ p["w"].T @ d_inv
    var = inflation * torch.linalg.eigvalsh(sigma).max()
    set_linear_gaussian(prior, p["w"], p["b"], p["logvar_z"], a, -a @ p["b"], torch.log(var).repeat(case.zeta_dim))


def repeated_bound(prior: HierarchicalPrior, z: torch.Tensor, k: int, repeats: int, seed: int) -> torch.Tensor:
    """F_K for `repeats` independent draws at each z: (repeats, n)."""
    with torch.no_grad():
        f = prior.log_prob_bound(z.repeat(repeats, 1), k, generator(seed))
    return f.reshape(repeats, z.shape[0])


def mean_and_se(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return f.mean(0), f.std(0) / math.sqrt(f.shape[0])


@settings(max_examples=10)
@given(case=linear_gaussian_priors, seed=seeds)
def test_oracle_matches_exact_log_prob(case: LinearGaussianPriorCase, seed: int) -> None:
    prior = case.build()
    z = prior.sample(N_POINTS, generator(seed)).detach()
    torch.testing.assert_close(prior.exact_log_prob(z).detach(), oracle_log_pz(case, z), rtol=1e-10, atol=1e-10)


@settings(max_examples=10)
@given(case=linear_gaussian_priors, k=st.sampled_from([1, 7, 64]), seed=seeds)
def test_bound_is_exact_when_q_phi_is_the_true_posterior(case: LinearGaussianPriorCase, k: int, seed: int) -> None:
    # With a 1-d zeta the diagonal q_Phi can equal p(zeta|z); then every weight equals p(z)
    # and F_K = log p(z) for every draw and every K (this pins down the -log K).
    case = LinearGaussianPriorCase(case.latent_dim, 1, case.w_scale, case.logvar_low, case.a_scale, case.seed)
    prior = case.build()
    posterior_proposal(prior, case, inflation=1.0)
    z = prior.sample(N_POINTS, generator(seed)).detach()
    f = repeated_bound(prior, z, k, repeats=4, seed=seed + 1)
    torch.testing.assert_close(f, oracle_log_pz(case, z).expand_as(f), rtol=0, atol=1e-9)


@settings(max_examples=15)
@given(case=linear_gaussian_priors, seed=seeds)
def test_bound_below_log_pz_and_non_decreasing_in_k(case: LinearGaussianPriorCase, seed: int) -> None:
    # Random (generally poor) q_Phi: E[F_K] <= log p(z) for every K, and E[F_K] grows with K.
    prior = case.build()
    z = prior.sample(N_POINTS, generator(seed)).detach()
    log_pz = oracle_log_pz(case, z)
    means, ses = [], []
    for k, repeats in ((1, 512), (64, 256), (1024, 48)):
        mean, se = mean_and_se(repeated_bound(prior, z, k, repeats, seed + k))
        assert torch.isfinite(mean).all()
        assert (mean <= log_pz + 4 * se + 1e-9).all(), (k, mean - log_pz, se)
        means.append(mean)
        ses.append(se)
    for (m_small, s_small), (m_large, s_large) in zip(zip(means, ses), zip(means[1:], ses[1:])):
        assert (m_small <= m_large + 4 * torch.sqrt(s_small**2 + s_large**2) + 1e-9).all()


@settings(max_examples=10)
@given(case=linear_gaussian_priors, seed=seeds)
def test_bound_approaches_log_pz_with_k(case: LinearGaussianPriorCase, seed: int) -> None:
    # With a reasonable proposal the gap log p(z) - E[F_K] shrinks like 1/K: at K = 1024 it is
    # within 0.02 nats, and F_64, F_1024 lie below log p(z) + log(64): a bound without -log K fails.
    prior = case.build()
    posterior_proposal(prior, case, inflation=1.5)
    z = prior.sample(N_POINTS, generator(seed)).detach()
    log_pz = oracle_log_pz(case, z)
    means, ses = {}, {}
    for k, repeats in ((1, 512), (64, 128), (1024, 32)):
        means[k], ses[k] = mean_and_se(repeated_bound(prior, z, k, repeats, seed + k))
        assert (means[k] <= log_pz + 4 * ses[k] + 1e-9).all(), (k, means[k] - log_pz, ses[k])
    assert (log_pz - means[1024] <= 0.02).all(), log_pz - means[1024]
    for small, large in ((1, 64), (64, 1024)):
        tolerance = 4 * torch.sqrt(ses[small] ** 2 + ses[large] ** 2) + 1e-9
        assert (means[small] <= means[large] + tolerance).all()


@given(log_w=extreme_log_weights, use_float32=st.booleans())
def test_importance_weighted_bound_finite_for_extreme_log_weights(log_w: list[float], use_float32: bool) -> None:
    t = torch.tensor(log_w, dtype=torch.float32 if use_float32 else torch.float64)
    bound = importance_weighted_bound(t)
    assert bound.dtype == torch.float64
    assert torch.isfinite(bound)
    top = t.double().max()
    # log mean of weights lies between (max weight)/K and the max weight.
    assert top - math.log(len(log_w)) - 1e-9 <= bound <= top + 1e-9


def test_importance_weighted_bound_known_values() -> None:
    log_w = torch.tensor([[1e4, -1e4], [0.0, 0.0], [-1e4, -1e4]], dtype=torch.float64)
    expected = torch.tensor([1e4 - math.log(2), 0.0, -1e4], dtype=torch.float64)
    torch.testing.assert_close(importance_weighted_bound(log_w, dim=1), expected, rtol=0, atol=1e-9)
