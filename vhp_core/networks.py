"""Encoder and decoder networks: MLPs of configurable width, and a small conv net for 64x64 images.

The encoder q_phi(z|x) outputs (mu, logvar) of a diagonal Gaussian from a single final
linear layer (one matmul for both halves); the decoder outputs the natural parameter of
the likelihood (Bernoulli logits or the Gaussian mean), flattened to (N, D). The conv
pair follows the 4-layer stride-2 architecture common for 64x64 images (e.g. the
3D-faces/chairs VAEs of Higgins et al. 2017). Every `Network` runs its layers in its
precision (`vhp_core.precision`); inside `inference_mlp.inference_layers` an fp32 MLP
runs a faster no-grad pass instead.
"""

from __future__ import annotations

import math
import torch
from torch import nn

from .activations import activation_module
from .precision import network_autocast

CONV_CHANNELS = (32, 32, 64, 64)  # four stride-2 stages: 64 -> 32 -> 16 -> 8 -> 4
CONV_OUT_SIDE = 4


def mlp(sizes: tuple[int, ...], activation: str) -> nn.Sequential:
    """Linear layers through `sizes`, activation between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation_module(activation))
    return nn.Sequential(*layers)


class Network(nn.Module):
    """A layer stack run in the configured precision; output in the input's dtype.

    Inside `inference_layers(model)` an fp32 MLP runs through its `InferenceMLP` instead.
    """

    def __init__(self, body: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        self.body = body
        self.precision = precision
        self.inference: nn.Module | None = None  # an inference_mlp.InferenceMLP while inside inference_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference is not None:
            return self.inference(x)
        with network_autocast(self.precision, x.device.type):
            out = self.body(x)
        return out.to(x.dtype)

    def full_precision(self, x: torch.Tensor) -> torch.Tensor:
        """The same layers without autocast (for Jacobians, which bf16 would blur)."""
        return self.body(x)


class GaussianEncoder(Network):
    """q_phi(z|x) = N(mu(x), diag exp(logvar(x))): x (B, *x_shape) -> (mu, logvar), (B, latent) each."""

    def __init__(self, body: nn.Module, precision: str = "fp32") -> None:
        super().__init__(body, precision)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        mu, logvar = super().forward(x).chunk(2, dim=-1)
        return mu, logvar


class _Unflatten(nn.Module):
    """(N, C*H*W) -> (N, C, H, W); a single unbatched row (C*H*W,) also works (vmap)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(*h.shape[:-1], *self.shape)


class FlattenImage(nn.Module):
    """(N, C, H, W) -> (N, C*H*W); an unbatched (C, H, W) becomes (C*H*W,)."""

    def __init__(self, n_image_dims: int) -> None:
        super().__init__()
        self.n_image_dims = n_image_dims

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(start_dim=h.dim() - self.n_image_dims)


def mlp_encoder(x_shape: tuple[int, ...], latent_dim: int, hidden: tuple[int, ...], activation: str, precision: str) -> GaussianEncoder:
    """MLP q_phi(z|x): flatten, hidden layers, one linear layer to (mu, logvar)."""
    data_dim = math.prod(x_shape)
    body = nn.Sequential(FlattenImage(len(x_shape)), mlp((data_dim, *hidden, 2 * latent_dim), activation))
    return GaussianEncoder(body, precision)


def mlp_decoder(x_shape: tuple[int, ...], latent_dim: int, hidden: tuple[int, ...], activation: str, precision: str) -> Network:
    """MLP decoder mirroring the encoder widths: z (N, latent) -> (N, D) natural parameters."""
    data_dim = math.prod(x_shape)
    return Network(mlp((latent_dim, *reversed(hidden), data_dim), activation), precision)


def conv_encoder(latent_dim: int, hidden: tuple[int, ...], activation: str, precision: str) -> GaussianEncoder:
    """Conv q_phi(z|x) for (1, 64, 64) images: 4 stride-2 convs, then an MLP to (mu, logvar)."""
    layers: list[nn.Module] = []
    n_in = 1
    for n_out in CONV_CHANNELS:
        layers += [nn.Conv2d(n_in, n_out, kernel_size=4, stride=2, padding=1), activation_module(activation)]
        n_in = n_out
    flat = CONV_CHANNELS[-1] * CONV_OUT_SIDE * CONV_OUT_SIDE
    layers += [FlattenImage(3), mlp((flat, *hidden, 2 * latent_dim), activation)]
    return GaussianEncoder(nn.Sequential(*layers), precision)


def conv_decoder(latent_dim: int, hidden: tuple[int, ...], activation: str, precision: str) -> Network:
    """Conv decoder mirroring `conv_encoder`: z (N, latent) -> (N, 64*64) natural parameters."""
    flat = CONV_CHANNELS[-1] * CONV_OUT_SIDE * CONV_OUT_SIDE
    layers: list[nn.Module] = [
        mlp((latent_dim, *reversed(hidden), flat), activation),
        activation_module(activation),
        _Unflatten((CONV_CHANNELS[-1], CONV_OUT_SIDE, CONV_OUT_SIDE)),
    ]
    channels = (*reversed(CONV_CHANNELS), 1)
    for i, (n_in, n_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers.append(nn.ConvTranspose2d(n_in, n_out, kernel_size=4, stride=2, padding=1))
        if i < len(channels) - 2:
            layers.append(activation_module(activation))
    layers.append(FlattenImage(3))
    return Network(nn.Sequential(*layers), precision)


def set_precision(model: nn.Module, precision: str) -> None:
    """Run every `Network` of `model` in `precision` ('fp32' or 'bf16')."""
    network_autocast(precision)  # validates the name
    for module in model.modules():
        if isinstance(module, Network):
            module.precision = precision
