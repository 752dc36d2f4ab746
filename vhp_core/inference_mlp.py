"""A fast no-grad forward pass of fp32 MLP networks, for estimators that run many samples.

`InferenceMLP` folds the tanh = 2 sigmoid(2a) - 1 identity into copies of the weights;
`inference_layers(model)` switches every fp32 MLP `Network` of a model to it for a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .activations import ACTIVATIONS, Tanh
from .networks import FlattenImage, Network


class InferenceMLP:
    """A no-grad forward pass of an fp32 MLP body with tanh layers computed as sigmoids.

    tanh(a) = 2 sigmoid(2a) - 1, and the affine map 2s - 1 folds into the next linear
    layer: W(2s - 1) + b = (2W) s + (b - W 1). With the factors folded into copies of the
    weights, each hidden layer is one addmm and one in-place sigmoid (one pass over the
    activations, where the autograd-ready `Tanh` makes four). The same function as the
    layers up to float rounding (about 1e-6 relative per layer); estimators compare it
    with the reference path. Other activations run in place where torch has an in-place
    form (relu_), else out of place. Built from the current parameters: rebuild after
    an optimiser step.
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, nn.Module | None]], flatten: int) -> None:
        self.flatten = flatten
        self.layers: list[tuple[torch.Tensor, torch.Tensor, str | nn.Module | None]] = []
        scale, shift = 1.0, 0.0  # the layer's true input is scale * s + shift, s what we compute
        with torch.no_grad():
            for weight, bias, activation in layers:
                w = weight * scale
                b = bias + shift * weight.sum(dim=1) if shift else bias.clone()
                if isinstance(activation, Tanh):
                    self.layers.append((2.0 * w, 2.0 * b, "sigmoid"))
                    scale, shift = 2.0, -1.0
                else:
                    self.layers.append((w, b, activation))
                    scale, shift = 1.0, 0.0

    @classmethod
    def of(cls, network: Network) -> InferenceMLP | None:
        """The inference pass of `network`, or None unless it is an fp32 stack of Linear layers and activations."""
        if network.precision != "fp32":
            return None
        modules = [m for m in getattr(network.body, "_orig_mod", network.body).modules() if not isinstance(m, nn.Sequential)]
        flatten = 0
        if modules and isinstance(modules[0], FlattenImage):
            flatten = modules.pop(0).n_image_dims
        layers: list[tuple[torch.Tensor, torch.Tensor, nn.Module | None]] = []
        for module in modules:
            if isinstance(module, nn.Linear) and module.bias is not None:
                layers.append((module.weight.detach(), module.bias.detach(), None))
            elif layers and layers[-1][2] is None and type(module) in ACTIVATIONS.values():
                layers[-1] = (*layers[-1][:2], module)
            else:
                return None
        if not layers or layers[-1][2] is not None:
            return None
        return cls(layers, flatten)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            x = x.flatten(start_dim=x.dim() - self.flatten)
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for weight, bias, activation in self.layers:
            h = F.linear(h, weight, bias)
            if activation == "sigmoid":
                h.sigmoid_()
            elif isinstance(activation, nn.ReLU):
                h.relu_()
            elif activation is not None:
                h = activation(h)
        return h.reshape(*lead, h.shape[-1])


@contextlib.contextmanager
def inference_layers(model: nn.Module) -> Iterator[None]:
    """Within the block, every fp32 MLP `Network` of `model` runs its `InferenceMLP` (no autograd).

    Conv and bf16 networks keep their ordinary forward. The passes are built on entry
    from the parameters as they are then, and dropped on exit.
    """
    networks = [m for m in model.modules() if isinstance(m, Network)]
    try:
        for network in networks:
            network.inference = InferenceMLP.of(network)
        yield
    finally:
        for network in networks:
            network.inference = None
