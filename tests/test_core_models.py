"""Model objectives against independently computed ELBOs and bounds, shapes for any sizes, bf16 precision,
the learned Gaussian std."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Normal, kl_divergence

from builders import model_config
from tests.strategies import DTYPE, batch_sizes, data_dims, generator, latent_dims, likelihood_names, model_names, seeds
from vhp_core import MODEL_NAMES, VHPIWVAE, build_model, gaussian_kl, log_likelihood
from vhp_core.models import LatentVariableModel


def make_model(name: str, likelihood: str, x_shape: tuple[int, ...], latent: int, **kwargs: object) -> LatentVariableModel:
    # A fixed Gaussian sigma (params.yaml calibrates it): the closed forms below assume one.
    defaults: dict[str, object] = {"hidden": (8,), "prior_hidden": (8,), "k_inner": 3, "k_iw": 2, "n_pseudo": 3,
                                   "zeta_dim": 2, "std_calibration": "none"}
    config = model_config(model=name, x_shape=x_shape, likelihood=likelihood, latent_dim=latent, **{**defaults, **kwargs})
    return build_model(config).to(DTYPE)


def make_data(likelihood: str, batch: int, x_shape: tuple[int, ...], seed: int, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    gen = generator(seed)
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((batch, *x_shape), 0.4, dtype=dtype), generator=gen)
    return torch.randn(batch, *x_shape, generator=gen, dtype=dtype)


def independent_log_px(model: LatentVariableModel, x_flat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    out = model.decoder(z)
    if model.config.likelihood == "bernoulli":
        return Bernoulli(logits=out).log_prob(x_flat).sum(-1)
    return Normal(out, torch.exp(model.likelihood.log_std)).log_prob(x_flat).sum(-1)


def independent_reconstruction(model: LatentVariableModel, x_flat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    out = model.decoder(z)
    if model.config.likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(out, x_flat)
    return F.mse_loss(out, x_flat)


def sample_z(model: LatentVariableModel, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(mu.shape, generator=gen, dtype=mu.dtype)
    return z, mu, std


@settings(max_examples=20)
@given(likelihood=likelihood_names, batch=batch_sizes, latent=latent_dims, d=data_dims, seed=seeds)
def test_vae_loss_is_negative_elbo(likelihood: str, batch: int, latent: int, d: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = make_model("vae", likelihood, (d,), latent, gaussian_std=0.7)
    x = make_data(likelihood, batch, (d,), seed)
    terms = model.loss(x, generator=generator(seed))
    with torch.no_grad():
        z, mu, std = sample_z(model, x, generator(seed))
        log_px = independent_log_px(model, x, z)
        kl = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
        neg_elbo = (kl - log_px).mean()
        reconstruction = independent_reconstruction(model, x, z)
    torch.testing.assert_close(terms.total.detach(), neg_elbo)
    assert math.isclose(terms.elbo, -neg_elbo.item(), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(terms.nll, -log_px.mean().item(), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(terms.regulariser, kl.mean().item(), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(terms.reconstruction, reconstruction.item(), rel_tol=1e-9, abs_tol=1e-9)
    assert terms.lambda_ == 1.0 and terms.constraint == 0.0
    # lambda weights the summed -log p(x|z); kappa only enters the reported constraint.
    weighted = model.loss(x, lambda_=3.5, kappa=0.2, generator=generator(seed))
    torch.testing.assert_close(weighted.total.detach(), torch.tensor(terms.regulariser + 3.5 * terms.nll, dtype=DTYPE))
    assert math.isclose(weighted.constraint, terms.reconstruction - 0.04, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=15)
@given(likelihood=likelihood_names, batch=batch_sizes, latent=latent_dims, seed=seeds, k=st.integers(1, 5))
def test_vhp_loss_is_negative_hierarchical_elbo(likelihood: str, batch: int, latent: int, seed: int, k: int) -> None:
    torch.manual_seed(seed)
    model = make_model("vhp", likelihood, (5,), latent, k_inner=k, zeta_dim=2)
    x = make_data(likelihood, batch, (5,), seed)
    terms = model.loss(x, generator=generator(seed))
    with torch.no_grad():
        gen = generator(seed)
        z, mu, std = sample_z(model, x, gen)
        eps_zeta = torch.randn((batch, k, 2), generator=gen, dtype=DTYPE)
        mu_q, logvar_q = model.prior.q_zeta_given_z(z)
        q_zeta = Normal(mu_q.unsqueeze(1), torch.exp(0.5 * logvar_q).unsqueeze(1))
        zeta = q_zeta.loc + q_zeta.scale * eps_zeta
        mu_p, logvar_p = model.prior.p_z_given_zeta(zeta)
        log_w = (
            Normal(mu_p, torch.exp(0.5 * logvar_p)).log_prob(z.unsqueeze(1)).sum(-1)
            + Normal(0.0, 1.0).log_prob(zeta).sum(-1)
            - q_zeta.log_prob(zeta).sum(-1)
        )
        f_bound = torch.logsumexp(log_w, 1) - math.log(k)
        log_q = Normal(mu, std).log_prob(z).sum(-1)
        log_px = independent_log_px(model, x, z)
        neg_elbo = (-log_px + log_q - f_bound).mean()
    torch.testing.assert_close(terms.total.detach(), neg_elbo)
    assert math.isclose(terms.regulariser, (log_q - f_bound).mean().item(), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(terms.elbo, -neg_elbo.item(), rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=10)
@given(likelihood=likelihood_names, latent=latent_dims, seed=seeds)
def test_iwae_with_one_sample_equals_vae(likelihood: str, latent: int, seed: int) -> None:
    torch.manual_seed(seed)
    vae = make_model("vae", likelihood, (4,), latent)
    iwae = make_model("iwae", likelihood, (4,), latent, k_iw=1)
    iwae.load_state_dict(vae.state_dict())
    n = 2000  # one data point repeated: the batch mean is a Monte Carlo average over z
    x = make_data(likelihood, 1, (4,), seed).expand(n, 4)
    t_vae = vae.loss(x, generator=generator(seed))
    t_iwae = iwae.loss(x, generator=generator(seed))
    # Same seed, same z: the reconstruction terms agree exactly.
    assert math.isclose(t_vae.nll, t_iwae.nll, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(t_vae.reconstruction, t_iwae.reconstruction, rel_tol=1e-12, abs_tol=1e-12)
    with torch.no_grad():
        z, mu, std = sample_z(vae, x, generator(seed))
        mc_kl = Normal(mu, std).log_prob(z).sum(-1) - Normal(0.0, 1.0).log_prob(z).sum(-1)
        kl = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1)
    # K = 1: the IWAE bound is the one-sample ELBO ...
    torch.testing.assert_close(t_iwae.total.detach(), torch.tensor(t_vae.nll, dtype=DTYPE) + mc_kl.mean())
    # ... whose expectation is the VAE objective (analytic KL): equal within Monte Carlo error.
    se = (mc_kl - kl).std() / math.sqrt(n)
    assert abs(t_iwae.total.item() - t_vae.total.item()) <= 4 * se.item() + 1e-9


@settings(max_examples=30)
@given(
    name=model_names,
    likelihood=likelihood_names,
    batch=batch_sizes,
    latent=latent_dims,
    x_shape=st.sampled_from([(3,), (2, 3)]),
    linear_prior=st.booleans(),
    seed=seeds,
)
def test_shapes_for_any_sizes(
    name: str, likelihood: str, batch: int, latent: int, x_shape: tuple[int, ...], linear_prior: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    model = make_model(name, likelihood, x_shape, latent, prior_hidden=() if linear_prior else (8,))
    x = make_data(likelihood, batch, x_shape, seed)
    d = math.prod(x_shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (batch, latent)
    terms = model.loss(x)
    assert terms.total.shape == () and terms.total.requires_grad
    assert all(math.isfinite(v) for v in (terms.nll, terms.reconstruction, terms.regulariser, terms.elbo))
    z = model.prior.sample(batch, generator(seed))
    assert z.shape == (batch, latent)
    assert model.prior.log_prob(z).shape == (batch,)
    assert model.decode(z).shape == (batch, *x_shape)
    assert model.decoder_mean_flat(z).shape == (batch, d)
    assert model.decoder_mean_flat(z[0]).shape == (d,)
    jac = torch.func.vmap(torch.func.jacrev(model.decoder_mean_flat))(z.detach())
    assert jac.shape == (batch, d, latent)
    ll = log_likelihood(model, x, n_samples=4, n_inner=2, chunk=5)
    assert ll.shape == (batch,) and ll.dtype == torch.float64 and torch.isfinite(ll).all()
    names = {id(p) for p in model.prior_parameters()}
    assert names <= {id(p) for p in model.parameters()}
    assert (len(names) > 0) == (name not in ("vae", "iwae"))


def test_conv_model_shapes() -> None:
    torch.manual_seed(0)
    model = build_model(model_config(model="vhp", x_shape=(1, 64, 64), likelihood="gaussian", network="conv", hidden=(16,)))
    x = torch.rand(2, 1, 64, 64)
    terms = model.loss(x)
    assert math.isfinite(terms.total.item())
    z = model.prior.sample(2)
    assert model.decode(z).shape == (2, 1, 64, 64)
    assert torch.func.vmap(torch.func.jacfwd(model.decoder_mean_flat))(z.detach()).shape == (2, 64 * 64, 2)


# bf16 keeps 8 significant bits: rounding a value to bf16 changes it by a relative error of at
# most u = 2^-8 (half an ulp of the 7 stored + 1 implicit mantissa bits).
BF16_UNIT_ROUNDOFF = 2.0**-8
# Probabilistic rounding-error analysis (Higham & Mary, SIAM J. Sci. Comput. 2019): with
# independent relative errors of at most u on every rounded value v, a term T moves to first
# order by sum_v dT/dv * v * e_v, whose standard deviation is at most u * R_T / sqrt(3),
# R_T = sqrt(sum_v (dT/dv * v)^2). The tolerance is 4 u R_T, about 7 standard deviations.
BF16_TOLERANCE_FACTOR = 4.0


def rounding_sensitivity(model: LatentVariableModel, x: torch.Tensor, seed: int) -> dict[str, float]:
    """R_T of the terms nll, regulariser and total (lambda = 1) of the fp32 `model` on x.

    The rounded values v are what bf16 autocast rounds: every parameter and every layer's
    output (leaf modules). Each term's R_T comes from its own gradient, so the regulariser's
    tolerance does not grow with the reconstruction loss.
    """
    outputs: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inputs: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            outputs.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if not list(m.children())]
    parts = model.objective_parts(x, generator(seed))
    # The reported regulariser: the analytic KL for iwae (not part of its objective), else regulariser_term.
    regulariser = gaussian_kl(*model.encode(x)).mean() if model.config.model == "iwae" else parts.regulariser_term
    for hook in hooks:
        hook.remove()
    result = {}
    for name, term in (("nll", parts.nll), ("regulariser", regulariser), ("total", parts.total(1.0))):
        values = [*model.parameters(), *outputs]
        grads = torch.autograd.grad(term, values, retain_graph=True, allow_unused=True)
        squares = sum((g * v).square().sum() for g, v in zip(grads, values, strict=True) if g is not None)
        result[name] = math.sqrt(float(squares.detach()))
    return result


def test_bf16_precision_close_to_fp32() -> None:
    torch.manual_seed(0)
    batch, data_dim = 64, 64
    for name in ("vae", "vhp", "iwae", "vamp"):
        common = {"model": name, "x_shape": (data_dim,), "likelihood": "bernoulli", "hidden": (128, 128), "prior_hidden": (64,)}
        fp32 = build_model(model_config(**common))
        bf16 = build_model(model_config(**common, precision="bf16"))
        bf16.load_state_dict(fp32.state_dict())
        x = make_data("bernoulli", batch, (data_dim,), 1, dtype=torch.float32)
        a = fp32.loss(x, generator=generator(3))
        b = bf16.loss(x, generator=generator(3))
        assert b.finite and math.isfinite(b.total.item()) and b.total.dtype == torch.float32
        tol = {k: BF16_TOLERANCE_FACTOR * BF16_UNIT_ROUNDOFF * r for k, r in rounding_sensitivity(fp32, x, 3).items()}
        tol["reconstruction"] = tol["nll"] / data_dim  # Bernoulli: C = nll / D
        values = {
            "nll": (a.nll, b.nll),
            "regulariser": (a.regulariser, b.regulariser),
            "total": (a.total.item(), b.total.item()),
            "reconstruction": (a.reconstruction, b.reconstruction),
        }
        for term, (va, vb) in values.items():
            assert abs(va - vb) <= tol[term], (name, term, va, vb, tol[term])
        if name in ("vae", "iwae"):
            # The regulariser's tolerance is its own: a bf16 model that reported a KL of 0 would fail.
            assert abs(a.regulariser - 0.0) > tol["regulariser"], (name, a.regulariser, tol["regulariser"])
        b.total.backward()
        assert all(torch.isfinite(p.grad).all() for p in bf16.parameters() if p.grad is not None)
        ll_a = log_likelihood(fp32, x[:8], 64, generator=generator(4))
        ll_b = log_likelihood(bf16, x[:8], 64, generator=generator(4))
        assert torch.isfinite(ll_b).all()
        # Per data point: one row's log-weights are about sqrt(batch) times as sensitive as the
        # batch mean of nll; the log-likelihood averages log-weights (softmax-weighted).
        tol_row = tol["nll"] * math.sqrt(batch)
        assert ((ll_a - ll_b).abs() <= tol_row).all(), (name, ll_a - ll_b, tol_row)


def test_tanh_activation_matches_torch() -> None:
    # vhp_core computes tanh through the faster sigmoid kernel; values, gradients and
    # forward-mode derivatives must be those of tanh.
    from vhp_core.activations import activation_module

    tanh = activation_module("tanh")
    x = torch.linspace(-20, 20, 2001, dtype=DTYPE, requires_grad=True)
    torch.testing.assert_close(tanh(x), torch.tanh(x), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(tanh(x).sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-15)
    x32 = x.detach().float()
    torch.testing.assert_close(tanh(x32), torch.tanh(x32), rtol=0, atol=3e-7)
    w = torch.randn(3, 2, dtype=DTYPE)
    z = torch.randn(4, 2, dtype=DTYPE)
    expected = torch.func.vmap(torch.func.jacrev(lambda v: torch.tanh(w @ v)))(z)
    torch.testing.assert_close(torch.func.vmap(torch.func.jacfwd(lambda v: tanh(w @ v)))(z), expected)
    torch.testing.assert_close(torch.func.vmap(torch.func.jacrev(lambda v: tanh(w @ v)))(z), expected)


# --- vhp-iw: hierarchical prior inside an outer importance-weighted bound --------------------


@settings(max_examples=10)
@given(likelihood=likelihood_names, batch=batch_sizes, latent=latent_dims, seed=seeds)
def test_vhp_iw_with_one_sample_equals_vhp(likelihood: str, batch: int, latent: int, seed: int) -> None:
    torch.manual_seed(seed)
    vhp = make_model("vhp", likelihood, (5,), latent)
    vhp_iw = make_model("vhp-iw", likelihood, (5,), latent, k_iw=1)
    vhp_iw.load_state_dict(vhp.state_dict())
    x = make_data(likelihood, batch, (5,), seed)
    a, b = vhp.loss(x, generator=generator(seed)), vhp_iw.loss(x, generator=generator(seed))
    # K = 1, same draws: the outer bound is log w = log p(x|z) + F(z) - log q(z|x), the vhp objective.
    torch.testing.assert_close(b.total.detach(), a.total.detach())
    for field in ("nll", "reconstruction", "regulariser", "elbo"):
        assert math.isclose(getattr(a, field), getattr(b, field), rel_tol=1e-12, abs_tol=1e-12), field


@settings(max_examples=15)
@given(
    likelihood=likelihood_names,
    batch=batch_sizes,
    latent=latent_dims,
    seed=seeds,
    k_iw=st.integers(1, 4),
    k_inner=st.integers(1, 4),
)
def test_vhp_iw_loss_is_negative_nested_bound(
    likelihood: str, batch: int, latent: int, seed: int, k_iw: int, k_inner: int
) -> None:
    torch.manual_seed(seed)
    model = make_model("vhp-iw", likelihood, (5,), latent, k_iw=k_iw, k_inner=k_inner, zeta_dim=2)
    assert isinstance(model, VHPIWVAE) and model.rule == "rewo"
    x = make_data(likelihood, batch, (5,), seed)
    terms = model.loss(x, generator=generator(seed))
    with torch.no_grad():
        gen = generator(seed)
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn((k_iw, batch, latent), generator=gen, dtype=DTYPE)  # (K, B, latent)
        eps_zeta = torch.randn((k_iw * batch, k_inner, 2), generator=gen, dtype=DTYPE).reshape(k_iw, batch, k_inner, 2)
        mu_q, logvar_q = model.prior.q_zeta_given_z(z)
        q_zeta = Normal(mu_q.unsqueeze(2), torch.exp(0.5 * logvar_q).unsqueeze(2))
        zeta = q_zeta.loc + q_zeta.scale * eps_zeta  # (K, B, k_inner, zeta)
        mu_p, logvar_p = model.prior.p_z_given_zeta(zeta)
        log_v = (
            Normal(mu_p, torch.exp(0.5 * logvar_p)).log_prob(z.unsqueeze(2)).sum(-1)
            + Normal(0.0, 1.0).log_prob(zeta).sum(-1)
            - q_zeta.log_prob(zeta).sum(-1)
        )
        f_bound = torch.logsumexp(log_v, 2) - math.log(k_inner)  # (K, B)
        log_px = independent_log_px(model, x, z)
        log_w = log_px + f_bound - Normal(mu, std).log_prob(z).sum(-1)
        bound = (torch.logsumexp(log_w, 0) - math.log(k_iw)).mean()
    torch.testing.assert_close(terms.total.detach(), -bound)  # lambda = 1: the negative bound
    assert math.isclose(terms.nll, -log_px.mean().item(), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(terms.elbo, log_w.mean().item(), rel_tol=1e-9, abs_tol=1e-9)
    weighted = model.loss(x, lambda_=2.5, generator=generator(seed))
    torch.testing.assert_close(weighted.total.detach(), -bound + 1.5 * terms.nll)


def test_build_model_covers_every_name() -> None:
    for name in MODEL_NAMES:
        model = make_model(name, "gaussian", (3,), 2)
        assert model.config.model == name
        assert (len(model.prior_parameters()) > 0) == (name not in ("vae", "iwae"))


# --- Gaussian likelihood with a learned scalar std ---------------------------------------


@settings(max_examples=12)
@given(name=model_names, batch=batch_sizes, seed=seeds, log_std=st.floats(-3.0, 2.0))
def test_learned_std_changes_log_px_but_not_the_constraint(name: str, batch: int, seed: int, log_std: float) -> None:
    # METHOD §1: C is the per-dimension squared error, whatever sigma is; -log p(x|z) depends on sigma.
    torch.manual_seed(seed)
    model = make_model(name, "gaussian", (5,), 2, learn_std=True)
    x = make_data("gaussian", batch, (5,), seed)
    base = model.loss(x, generator=generator(seed))
    assert base.nll == pytest.approx(base.reconstruction * 5 / 2 + 5 * 0.5 * math.log(2 * math.pi), rel=1e-12)
    with torch.no_grad():
        model.likelihood.log_std.fill_(log_std)
    moved = model.loss(x, generator=generator(seed))
    assert moved.reconstruction == base.reconstruction
    sigma2 = math.exp(2 * log_std)
    expected_nll = 5 * (base.reconstruction / (2 * sigma2) + log_std + 0.5 * math.log(2 * math.pi))
    assert moved.nll == pytest.approx(expected_nll, rel=1e-9)
    if abs(log_std) > 1e-6:
        assert moved.nll != base.nll
    # sigma learns from the objective in every model: it has a finite, non-zero gradient.
    moved.total.backward()
    grad = model.likelihood.log_std.grad
    assert grad is not None and math.isfinite(grad.item()) and grad.item() != 0.0
