"""The importance-sampling log-likelihood estimate (METHOD §5) on linear-Gaussian models.

A linear decoder x = W z + b + s * noise with z ~ N(m, C) has log p(x) = log N(x; W m + b,
W C W^T + s^2 I) in closed form; for the VAE m = 0, C = I, and for VHP with
prior_hidden == () the prior is N(b_p, W_p W_p^T + diag sigma^2). The oracle is computed
with scipy, independently of vhp_core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from builders import model_config
from tests.strategies import DTYPE, generator, seeds, set_linear_gaussian, uniform
from vhp_core import build_model, log_likelihood
from vhp_core.models import LatentVariableModel


@dataclass(frozen=True)
class LinearCase:
    """Decoder W entries in [-1, 1], b in [-1, 1], std s; prior (VHP) W_p in [-1, 1], b_p in [-1, 1],
    logvar in [-1, 0]; n_points data points drawn from the model."""

    model: str
    data_dim: int
    latent_dim: int
    zeta_dim: int
    std: float
    seed: int
    n_points: int = 3


linear_cases = st.builds(
    LinearCase,
    model=st.sampled_from(["vae", "vhp"]),
    data_dim=st.integers(1, 5),
    latent_dim=st.integers(1, 3),
    zeta_dim=st.integers(1, 2),
    std=st.floats(0.3, 1.5),
    seed=seeds,
)


def _linear(module: torch.nn.Module) -> torch.nn.Linear:
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 1
    return layers[0]


def build_linear(case: LinearCase) -> tuple[LatentVariableModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model with linear decoder (and linear prior), its latent prior (mean, cov), and data x."""
    config = model_config(
        model=case.model,
        x_shape=(case.data_dim,),
        likelihood="gaussian",
        latent_dim=case.latent_dim,
        zeta_dim=case.zeta_dim,
        hidden=(),
        prior_hidden=(),
        gaussian_std=case.std,
        std_calibration="none",  # the closed-form log p(x) holds for this fixed sigma
    )
    model = build_model(config).to(DTYPE)
    gen = generator(case.seed)
    w = uniform(gen, (case.data_dim, case.latent_dim), -1.0, 1.0)
    b = uniform(gen, (case.data_dim,), -1.0, 1.0)
    with torch.no_grad():
        _linear(model.decoder).weight.copy_(w)
        _linear(model.decoder).bias.copy_(b)
    prior_mean = torch.zeros(case.latent_dim, dtype=DTYPE)
    prior_cov = torch.eye(case.latent_dim, dtype=DTYPE)
    if case.model == "vhp":
        w_p = uniform(gen, (case.latent_dim, case.zeta_dim), -1.0, 1.0)
        prior_mean = uniform(gen, (case.latent_dim,), -1.0, 1.0)
        logvar = uniform(gen, (case.latent_dim,), -1.0, 0.0)
        prior_cov = w_p @ w_p.T + torch.diag(torch.exp(logvar))
        zeros = torch.zeros(case.zeta_dim, case.latent_dim, dtype=DTYPE)
        set_linear_gaussian(model.prior, w_p, prior_mean, logvar, zeros, torch.zeros(case.zeta_dim, dtype=DTYPE), torch.zeros(case.zeta_dim, dtype=DTYPE))
        # q_Phi: mean of the true posterior p(zeta|z), isotropic variance 1.5 * its largest eigenvalue
        # (exact when zeta_dim = 1 and inflation 1).
        d_inv = torch.diag(torch.exp(-logvar))
        sigma = torch.linalg.inv(torch.eye(case.zeta_dim, dtype=DTYPE) + w_p.T @ d_inv @ w_p)
        a = sigma @ w_p.T @ d_inv
        var = torch.linalg.eigvalsh(sigma).max()
        set_linear_gaussian(model.prior, w_p, prior_mean, logvar, a, -a @ prior_mean, torch.log(var).repeat(case.zeta_dim))
    z = prior_mean + torch.randn(case.n_points, case.latent_dim, generator=gen, dtype=DTYPE) @ torch.linalg.cholesky(prior_cov).T
    x = z @ w.T + b + case.std * torch.randn(case.n_points, case.data_dim, generator=gen, dtype=DTYPE)
    return model, prior_mean, prior_cov, x


def oracle_log_px(model: LatentVariableModel, prior_mean: torch.Tensor, prior_cov: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    w = _linear(model.decoder).weight.detach().numpy()
    b = _linear(model.decoder).bias.detach().numpy()
    s2 = math.exp(2 * model.likelihood.log_std.item())
    mean = w @ prior_mean.numpy() + b
    cov = w @ prior_cov.numpy() @ w.T + s2 * np.eye(len(b))
    return torch.from_numpy(np.atleast_1d(multivariate_normal(mean, cov).logpdf(x.numpy())))


def set_posterior_encoder(
    model: LatentVariableModel, prior_mean: torch.Tensor, prior_cov: torch.Tensor, inflation: float
) -> None:
    """q(z|x): the true posterior mean (linear in x), isotropic variance inflation * lambda_max(cov)."""
    w = _linear(model.decoder).weight.detach()
    b = _linear(model.decoder).bias.detach()
    s2 = math.exp(2 * model.likelihood.log_std.item())
    prior_precision = torch.linalg.inv(prior_cov)
    cov = torch.linalg.inv(prior_precision + w.T @ w / s2)
    gain = cov @ w.T / s2  # (latent, D)
    offset = cov @ (prior_precision @ prior_mean - w.T @ b / s2)
    latent = w.shape[1]
    log_var = math.log(inflation * torch.linalg.eigvalsh(cov).max().item())
    with torch.no_grad():
        layer = _linear(model.encoder)
        layer.weight.zero_()
        layer.weight[:latent].copy_(gain)
        layer.bias[:latent].copy_(offset)
        layer.bias[latent:].fill_(log_var)


@settings(max_examples=12)
@given(case=linear_cases, s=st.sampled_from([1, 5, 13]), chunk=st.sampled_from([1, 3, 7, 10_000]))
def test_exact_with_true_posteriors(case: LinearCase, s: int, chunk: int) -> None:
    # 1-d latent and zeta: the diagonal proposals can be the exact posteriors, every log-weight
    # equals log p(x), and the estimate is exact for any S, K_eval and chunking.
    case = LinearCase(case.model, case.data_dim, 1, 1, case.std, case.seed)
    model, m, c, x = build_linear(case)
    set_posterior_encoder(model, m, c, inflation=1.0)
    est = log_likelihood(model, x, n_samples=s, n_inner=3, chunk=chunk, generator=generator(case.seed))
    torch.testing.assert_close(est, oracle_log_px(model, m, c, x), rtol=0, atol=1e-9)


@settings(max_examples=8)
@given(case=linear_cases, radius=st.floats(0.5, 2.0), inflation=st.floats(1.0, 2.0))
def test_vae_estimate_close_at_5000_samples(case: LinearCase, radius: float, inflation: float) -> None:
    # Decoder W = radius * (orthonormal columns): the posterior is isotropic, so a diagonal q with
    # the true mean and inflated variance is a proposal with bounded weight variance.
    latent = min(case.latent_dim, case.data_dim)
    case = LinearCase("vae", case.data_dim, latent, 1, case.std, case.seed)
    model, m, c, _ = build_linear(case)
    gen = generator(case.seed + 3)
    q, _ = torch.linalg.qr(torch.randn(case.data_dim, latent, generator=gen, dtype=DTYPE))
    with torch.no_grad():
        _linear(model.decoder).weight.copy_(radius * q)
    x = model.decoder(torch.randn(case.n_points, latent, generator=gen, dtype=DTYPE)).detach()
    x = x + case.std * torch.randn(x.shape, generator=gen, dtype=DTYPE)
    set_posterior_encoder(model, m, c, inflation=inflation)
    est = log_likelihood(model, x, n_samples=5000, generator=generator(case.seed + 1))
    assert est.dtype == torch.float64
    # Stated tolerance: 0.05 nats at S = 5000 (about 5 standard errors for this proposal).
    assert ((est - oracle_log_px(model, m, c, x)).abs() <= 0.05).all()


# --- the nested VHP estimate in 1-4 latent dimensions ---------------------------------------


@dataclass(frozen=True)
class DiagonalPosteriorCase:
    """A linear-Gaussian VHP model whose two true posteriors are diagonal Gaussians.

    Prior: p(z|zeta) = N(W_p zeta + b_p, diag sigma^2) with W_p = diag(sigma) Q_p diag(s), Q_p
    orthonormal columns (latent x zeta, zeta_dim <= latent_dim), s in [0.3, 1.5], b_p in [-1, 1],
    log sigma^2 in [-1, 0]: W_p^T diag(sigma^-2) W_p = diag(s^2), so p(zeta|z) has the diagonal
    covariance diag(1 / (1 + s^2)). Decoder: x = W z + b + std * noise with W^T W = std^2 (Lambda -
    P), P the prior precision, Lambda = diag(g * lambda_max(P)), g in [1.2, 3], b in [-1, 1]: p(z|x)
    has the diagonal covariance Lambda^-1. The proposals q(z|x) and q_Phi(zeta|z) have the true
    posterior means and variances inflated per dimension by factors in [1, max_inflation].
    """

    latent_dim: int
    zeta_dim: int
    extra_data_dims: int
    std: float
    max_inflation: float
    seed: int
    n_points: int = 3

    def build(self) -> tuple[LatentVariableModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(model, prior mean, prior cov, x, outer inflation factors, inner inflation factors)."""
        lat, zeta, data = self.latent_dim, self.zeta_dim, self.latent_dim + self.extra_data_dims
        config = model_config(
            model="vhp", x_shape=(data,), likelihood="gaussian", latent_dim=lat, zeta_dim=zeta,
            hidden=(), prior_hidden=(), gaussian_std=self.std, std_calibration="none",
        )
        model = build_model(config).to(DTYPE)
        gen = generator(self.seed)
        q_p, _ = torch.linalg.qr(torch.randn(lat, zeta, generator=gen, dtype=DTYPE))
        s = uniform(gen, (zeta,), 0.3, 1.5)
        b_p = uniform(gen, (lat,), -1.0, 1.0)
        logvar = uniform(gen, (lat,), -1.0, 0.0)
        sigma = torch.exp(0.5 * logvar)
        w_p = sigma[:, None] * q_p * s
        inner_var = 1.0 / (1.0 + s.square())  # diag of cov(zeta | z)
        a = inner_var[:, None] * (w_p.T / sigma.square())  # posterior mean of zeta: a (z - b_p)
        f_in = uniform(gen, (zeta,), 1.0, self.max_inflation)
        set_linear_gaussian(model.prior, w_p, b_p, logvar, a, -a @ b_p, torch.log(f_in * inner_var))
        prior_cov = w_p @ w_p.T + torch.diag(sigma.square())
        precision = torch.linalg.inv(prior_cov)
        lam = uniform(gen, (lat,), 1.2, 3.0) * torch.linalg.eigvalsh(precision).max()
        m = math.exp(2 * model.likelihood.log_std.item()) * (torch.diag(lam) - precision)
        rotation, _ = torch.linalg.qr(torch.randn(data, lat, generator=gen, dtype=DTYPE))
        w = rotation @ torch.linalg.cholesky(m).T  # W^T W = m
        b = uniform(gen, (data,), -1.0, 1.0)
        f_out = uniform(gen, (lat,), 1.0, self.max_inflation)
        s2 = math.exp(2 * model.likelihood.log_std.item())  # the model's own (float32-initialised) std
        with torch.no_grad():
            _linear(model.decoder).weight.copy_(w)
            _linear(model.decoder).bias.copy_(b)
            encoder = _linear(model.encoder)
            encoder.weight.zero_()
            encoder.weight[:lat].copy_((w.T / s2) / lam[:, None])
            encoder.bias[:lat].copy_((precision @ b_p - w.T @ b / s2) / lam)
            encoder.bias[lat:].copy_(torch.log(f_out / lam))
        z = b_p + torch.randn(self.n_points, lat, generator=gen, dtype=DTYPE) @ torch.linalg.cholesky(prior_cov).T
        x = z @ w.T + b + self.std * torch.randn(self.n_points, data, generator=gen, dtype=DTYPE)
        return model, b_p, prior_cov, x, f_out, f_in


def relative_weight_variance(inflation: torch.Tensor) -> float:
    """Var_q(w) / E_q(w)^2 for w = N(v; m, diag t) / N(v; m, diag f t), v ~ N(m, diag f t), f >= 1."""
    return float(torch.prod(inflation / torch.sqrt(2 * inflation - 1)) - 1)


diagonal_posterior_cases = st.builds(
    DiagonalPosteriorCase,
    latent_dim=st.integers(1, 4),
    zeta_dim=st.integers(1, 4),
    extra_data_dims=st.integers(0, 2),
    std=st.floats(0.3, 1.5),
    max_inflation=st.floats(1.0, 1.5),
    seed=seeds,
).map(lambda c: replace(c, zeta_dim=min(c.zeta_dim, c.latent_dim)))


@settings(max_examples=10)
@given(case=diagonal_posterior_cases, s=st.sampled_from([1, 4, 13]), k=st.sampled_from([1, 3, 16]), chunk=st.sampled_from([1, 7, 10_000]))
def test_vhp_nested_estimate_exact_with_true_posteriors(case: DiagonalPosteriorCase, s: int, k: int, chunk: int) -> None:
    # Both proposals are the exact posteriors: every inner weight equals p(z), every outer one
    # p(x), and the estimate is log p(x) for any S, K_eval and chunking, in 1-4 latent dimensions.
    model, m, c, x, _, _ = replace(case, max_inflation=1.0).build()
    est = log_likelihood(model, x, n_samples=s, n_inner=k, chunk=chunk, generator=generator(case.seed))
    torch.testing.assert_close(est, oracle_log_px(model, m, c, x), rtol=0, atol=1e-9)


@settings(max_examples=8)
@given(case=diagonal_posterior_cases)
def test_vhp_nested_estimate_close_at_5000_samples(case: DiagonalPosteriorCase) -> None:
    # Proposals inflated by known factors: the weights' relative variances rho_out (z) and rho_in
    # (zeta) are known in closed form, hence the standard error of the nested estimate,
    #   Var(p_hat / p) = ((1 + rho_out)(1 + rho_in / K) - 1) / S,  se(log p_hat) ~ sqrt of it.
    # Tolerance: 5 se plus the log's bias se^2 / 2. (At most about 0.04 nats here, against the
    # log K = 2.8 nats that a missing -log K in the inner bound would add.)
    n_samples, n_inner = 5000, 16
    model, m, c, x, f_out, f_in = case.build()
    est = log_likelihood(model, x, n_samples=n_samples, n_inner=n_inner, generator=generator(case.seed + 1))
    rho_out, rho_in = relative_weight_variance(f_out), relative_weight_variance(f_in)
    se = math.sqrt(((1 + rho_out) * (1 + rho_in / n_inner) - 1) / n_samples)
    tolerance = 5 * se + se**2 / 2 + 1e-9
    error = (est - oracle_log_px(model, m, c, x)).abs()
    assert (error <= tolerance).all(), (error, tolerance)


@settings(max_examples=8)
@given(case=linear_cases, w_scale=st.floats(0.1, 1.0), logvar=st.floats(-1.5, 0.5))
def test_estimate_below_log_px_in_expectation(case: LinearCase, w_scale: float, logvar: float) -> None:
    # A poor (random linear) encoder: the mean of repeated estimates lies below log p(x).
    model, m, c, x = build_linear(case)
    gen = generator(case.seed + 7)
    with torch.no_grad():
        layer = _linear(model.encoder)
        layer.weight.copy_(uniform(gen, tuple(layer.weight.shape), -w_scale, w_scale))
        layer.bias.zero_()
        layer.bias[case.latent_dim :].fill_(logvar)
    repeats = 16
    est = torch.stack([log_likelihood(model, x, 20, n_inner=4, generator=generator(case.seed + r)) for r in range(repeats)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(repeats)
    exact = oracle_log_px(model, m, c, x)
    assert (mean <= exact + 4 * se + 1e-9).all(), (mean - exact, se)


@settings(max_examples=15)
@given(seed=seeds, scale=st.floats(1e2, 1e4))
def test_finite_for_extreme_log_weights(seed: int, scale: float) -> None:
    # Data far from a sharp decoder: log p(x|z) of order -scale^2 / std^2 ~ -1e10 and below.
    torch.manual_seed(seed)
    model = build_model(model_config(model="vae", x_shape=(4,), likelihood="gaussian", hidden=(8,), gaussian_std=1e-2,
                                     std_calibration="none")).to(DTYPE)
    x = scale * torch.randn(3, 4, generator=generator(seed), dtype=DTYPE)
    est = log_likelihood(model, x, n_samples=50, chunk=16)
    assert torch.isfinite(est).all() and (est < -1e3).all()
