"""Fast paths against their reference paths: the folded inference MLP and the log-likelihood estimate.

`inference_mlp.InferenceMLP` computes tanh layers as sigmoids with the affine factors folded
into the weights; `log_likelihood` uses it unless `reference=True`. Both must give the
numbers of the ordinary layers up to float rounding: the issue's tolerance is 0.05 nats
on the mean test log-likelihood, and the tests hold them to 1e-3 nats per point.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import model_config
from tests.strategies import seeds
from vhp_core import build_model, log_likelihood
from vhp_core.inference_mlp import InferenceMLP, inference_layers
from vhp_core.networks import Network, mlp
from vhp_core.precision import native_bf16, resolve_precision


@settings(max_examples=25, deadline=None)
@given(
    seed=seeds,
    activation=st.sampled_from(["tanh", "relu", "elu", "gelu", "sigmoid"]),
    widths=st.lists(st.integers(1, 40), min_size=2, max_size=5),
    lead=st.sampled_from([(7,), (3, 5), (1,)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.floats(0.1, 3.0),
)
def test_inference_mlp_matches_the_layers(
    seed: int, activation: str, widths: list[int], lead: tuple[int, ...], dtype: torch.dtype, scale: float
) -> None:
    torch.manual_seed(seed)
    network = Network(mlp(tuple(widths), activation)).to(dtype)
    with torch.no_grad():
        for p in network.parameters():
            p.mul_(scale)
    x = torch.randn(*lead, widths[0], dtype=dtype) * scale
    reference = network(x)
    fast = InferenceMLP.of(network)
    assert fast is not None
    out = fast(x)
    assert out.shape == reference.shape and out.dtype == reference.dtype
    # Rounding only: about 1e-7 (fp32) or 1e-16 (fp64) relative per layer, times the layer norms.
    bound = (1e-4 if dtype == torch.float32 else 1e-11) * scale ** (2 * len(widths)) * max(widths)
    assert torch.allclose(out, reference, rtol=0.0, atol=bound), (out - reference).abs().max().item()


def test_inference_layers_skip_conv_and_bf16_networks_and_restore_on_exit() -> None:
    conv = build_model(model_config(model="vae", x_shape=(1, 64, 64), likelihood="bernoulli", network="conv",
                                   latent_dim=2, hidden=(8,)))
    bf16 = build_model(model_config(model="vae", x_shape=(6,), likelihood="bernoulli", hidden=(8,), precision="bf16"))
    mlp_model = build_model(model_config(model="vhp", x_shape=(6,), likelihood="bernoulli", hidden=(8,), prior_hidden=(5,)))
    assert InferenceMLP.of(conv.encoder) is None and InferenceMLP.of(conv.decoder) is None
    assert InferenceMLP.of(bf16.decoder) is None
    networks = [m for m in mlp_model.modules() if isinstance(m, Network)]
    assert len(networks) == 4  # encoder, decoder, p(z|zeta), q(zeta|z)
    with pytest.raises(RuntimeError, match="inside"):
        with inference_layers(mlp_model):
            assert all(n.inference is not None for n in networks)
            raise RuntimeError("inside")
    assert all(n.inference is None for n in networks)


CASES = [
    ("vae", "bernoulli", "tanh"),
    ("iwae", "bernoulli", "tanh"),
    ("vamp", "bernoulli", "tanh"),
    ("vhp", "bernoulli", "tanh"),
    ("vhp", "gaussian", "tanh"),
    ("vhp", "gaussian", "relu"),
]


@pytest.mark.parametrize(("name", "likelihood", "activation"), CASES)
def test_fast_and_reference_log_likelihood_agree(name: str, likelihood: str, activation: str) -> None:
    """fp32 models with perturbed weights, the same random draws: the two paths agree to 1e-3 nats."""
    torch.manual_seed(3)
    model = build_model(model_config(
        model=name, x_shape=(30,), likelihood=likelihood, latent_dim=4, hidden=(24, 16), activation=activation,
        zeta_dim=3, prior_hidden=(12,), k_inner=4, n_pseudo=5,
    )).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = (torch.rand(6, 30) < 0.4).float() if likelihood == "bernoulli" else torch.randn(6, 30)
    fast = log_likelihood(model, x, 300, n_inner=4, chunk=128, generator=torch.Generator().manual_seed(1))
    reference = log_likelihood(model, x, 300, n_inner=4, chunk=128, generator=torch.Generator().manual_seed(1),
                               reference=True)
    assert torch.isfinite(fast).all()
    assert (fast - reference).abs().max().item() < 1e-3
    if activation == "tanh":  # the folded sigmoids round differently: two paths really ran
        assert not torch.equal(fast, reference)
    # A different draw differs by Monte Carlo noise, far above the rounding: the comparison has power.
    other = log_likelihood(model, x, 300, n_inner=4, chunk=128, generator=torch.Generator().manual_seed(2))
    assert (other - reference).abs().max().item() > 1e-3


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16() -> None:
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")
