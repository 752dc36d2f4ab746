"""Model objectives against independently computed ELBOs, shapes for any sizes, bf16 precision."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Normal, kl_divergence

from tests.strategies import DTYPE, batch_sizes, data_dims, generator, latent_dims, likelihood_names, model_names, seeds
from vhp_core import ModelConfig, build_model, log_likelihood
from vhp_core.models import LatentVariableModel


def make_model(name: str, likelihood: str, x_shape: tuple[int, ...], latent: int, **kwargs: object) -> LatentVariableModel:
    defaults: dict[str, object] = {"hidden": (8,), "prior_hidden": (8,), "k_inner": 3, "k_iw": 2, "n_pseudo": 3, "zeta_dim": 2}
    config = ModelConfig(model=name, x_shape=x_shape, likelihood=likelihood, latent_dim=latent, **{**defaults, **kwargs})
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
    model = build_model(ModelConfig(model="vhp", x_shape=(1, 64, 64), likelihood="gaussian", network="conv", hidden=(16,)))
    x = torch.rand(2, 1, 64, 64)
    terms = model.loss(x)
    assert math.isfinite(terms.total.item())
    z = model.prior.sample(2)
    assert model.decode(z).shape == (2, 1, 64, 64)
    assert torch.func.vmap(torch.func.jacfwd(model.decoder_mean_flat))(z.detach()).shape == (2, 64 * 64, 2)


def _close(a: float, b: float, scale: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(scale) + 0.05


def test_bf16_precision_close_to_fp32() -> None:
    torch.manual_seed(0)
    for name in ("vae", "vhp", "iwae"):
        common = {"model": name, "x_shape": (64,), "likelihood": "bernoulli", "hidden": (128, 128), "prior_hidden": (64,)}
        fp32 = build_model(ModelConfig(**common))
        bf16 = build_model(ModelConfig(**common, precision="bf16"))
        bf16.load_state_dict(fp32.state_dict())
        x = make_data("bernoulli", 64, (64,), 1, dtype=torch.float32)
        a = fp32.loss(x, generator=generator(3))
        b = bf16.loss(x, generator=generator(3))
        assert b.finite and math.isfinite(b.total.item()) and b.total.dtype == torch.float32
        for field in ("nll", "regulariser", "elbo", "reconstruction"):
            scale = a.nll if field != "reconstruction" else a.reconstruction
            assert _close(getattr(a, field), getattr(b, field), scale, 0.02), (name, field, getattr(a, field), getattr(b, field))
        b.total.backward()
        assert all(torch.isfinite(p.grad).all() for p in bf16.parameters() if p.grad is not None)
        ll_a = log_likelihood(fp32, x[:8], 64, generator=generator(4))
        ll_b = log_likelihood(bf16, x[:8], 64, generator=generator(4))
        assert torch.isfinite(ll_b).all()
        assert ((ll_a - ll_b).abs() <= 0.02 * ll_a.abs() + 0.05).all(), (name, ll_a - ll_b)


def test_tanh_activation_matches_torch() -> None:
    # vhp_core computes tanh through the faster sigmoid kernel; values, gradients and
    # forward-mode derivatives must be those of tanh.
    from vhp_core.networks import activation_module

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
