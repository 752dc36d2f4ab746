"""Encoder and decoder networks: MLPs of configurable width, and a small conv net for 64x64 images.

The encoder q_phi(z|x) outputs (mu, logvar) of a diagonal Gaussian from a single final
linear layer (one matmul for both halves); the decoder outputs the natural parameter of
the likelihood (Bernoulli logits or the Gaussian mean), flattened to (N, D). The conv
pair follows the 4-layer stride-2 architecture common for 64x64 images (e.g. the
3D-faces/chairs VAEs of Higgins et al. 2017).

Precision: with precision='bf16' the layers run under `torch.autocast(<device>,
torch.bfloat16)` for the device the input lives on (CPU or CUDA), and the output is cast
back to the input's dtype, so everything downstream (likelihood sums, log-densities,
logsumexp) stays in float32/float64. `resolve_precision('auto', device)` picks bf16
where that device multiplies bf16 natively (a CPU with AVX-512 BF16/AMX, a CUDA device
with `torch.cuda.is_bf16_supported()`), else fp32.

TF32 policy (`TF32_POLICY`, applied by `apply_tf32_policy`): 'fp32' means IEEE fp32 on
every device. TF32 matmuls and cuDNN convolutions stay off, so an fp32 model gives the
same numbers on CPU and GPU up to summation order; the reduced-precision fast path on a
GPU is bf16 autocast, chosen explicitly or by 'auto', and recorded as such.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

CONV_CHANNELS = (32, 32, 64, 64)  # four stride-2 stages: 64 -> 32 -> 16 -> 8 -> 4
CONV_OUT_SIDE = 4



class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with the tanh derivative 1 - y^2 from the saved output.

    torch's CPU tanh kernel is several times slower than its sigmoid kernel (about 3 vs
    0.6 ns per float on AVX-512), and tanh layers dominate the non-matmul time of a
    training step. Absolute error <= 2e-7 in float32, 4e-16 in float64. Works under
    torch.func (vmap rule generated; jvp for jacfwd).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # One new tensor; the rest in place on it (x itself is left untouched).
        return (x * 2.0).sigmoid_().mul_(2.0).sub_(1.0)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:  # type: ignore[override]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.tanh_backward(grad, y)

    @staticmethod
    def jvp(ctx: torch.autograd.function.FunctionCtx, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.tanh_backward(tangent, y)


class Tanh(nn.Module):
    """The tanh activation, computed through the faster sigmoid kernel (see _SigmoidTanh)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SigmoidTanh.apply(x)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def activation_module(name: str) -> nn.Module:
    """A fresh activation layer by name ('tanh', 'relu', ...)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {name!r}") from None


def native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX, as oneDNN reports).

    Without it torch emulates bf16 matmuls, measured 7x slower than fp32 on an AVX2 CPU
    (BENCHMARKS.md), so autocast would cost time instead of saving it.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


TF32_POLICY = ("off: fp32 is IEEE fp32 on every device (matmul precision 'highest', cuDNN TF32 off); "
               "bf16 autocast is the fast path")


def apply_tf32_policy() -> None:
    """Switch TF32 off for fp32 matmuls and cuDNN convolutions (see TF32_POLICY)."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False


def _device_type(device: torch.device | str | None) -> str:
    return "cpu" if device is None else torch.device(device).type


def bf16_native(device: torch.device | str | None = None) -> bool:
    """True when `device` (default: the CPU) runs bf16 matmuls natively."""
    kind = _device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and bool(torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """'auto' -> 'bf16' where `device` (default: the CPU) multiplies bf16 natively, else 'fp32'.

    'fp32'/'bf16' are returned unchanged. On CUDA that is `torch.cuda.is_bf16_supported()`;
    on the CPU, oneDNN's report of AVX-512 BF16 or AMX (`native_bf16`).
    """
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if precision in ("fp32", "bf16"):
        return precision
    raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")


def evaluation_precision(precision: str, device: torch.device | str | None = None) -> str:
    """The precision a model trained in `precision` is evaluated in on `device`.

    bf16 only where the evaluating device multiplies bf16 natively (a bf16 model trained
    on a GPU and evaluated on an AVX2 CPU runs fp32 there: emulated bf16 would be slower
    and no more faithful); fp32 stays fp32.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return "bf16" if precision == "bf16" and bf16_native(device) else "fp32"


def set_precision(model: nn.Module, precision: str) -> None:
    """Run every `Network` of `model` in `precision` ('fp32' or 'bf16')."""
    network_autocast(precision)  # validates the name
    for module in model.modules():
        if isinstance(module, Network):
            module.precision = precision


def network_autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[None]:
    """The autocast region of the network layers: bf16 on `device_type` ('cpu' or 'cuda'), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


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
        self.inference: InferenceMLP | None = None

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


class _FlattenImage(nn.Module):
    """(N, C, H, W) -> (N, C*H*W); an unbatched (C, H, W) becomes (C*H*W,)."""

    def __init__(self, n_image_dims: int) -> None:
        super().__init__()
        self.n_image_dims = n_image_dims

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(start_dim=h.dim() - self.n_image_dims)


def mlp_encoder(x_shape: tuple[int, ...], latent_dim: int, hidden: tuple[int, ...], activation: str, precision: str) -> GaussianEncoder:
    """MLP q_phi(z|x): flatten, hidden layers, one linear layer to (mu, logvar)."""
    data_dim = math.prod(x_shape)
    body = nn.Sequential(_FlattenImage(len(x_shape)), mlp((data_dim, *hidden, 2 * latent_dim), activation))
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
    layers += [_FlattenImage(3), mlp((flat, *hidden, 2 * latent_dim), activation)]
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
    layers.append(_FlattenImage(3))
    return Network(nn.Sequential(*layers), precision)


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
        if modules and isinstance(modules[0], _FlattenImage):
            flatten = modules.pop(0).n_image_dims
        layers: list[tuple[torch.Tensor, torch.Tensor, nn.Module | None]] = []
        for module in modules:
            if isinstance(module, nn.Linear) and module.bias is not None:
                layers.append((module.weight.detach(), module.bias.detach(), None))
            elif layers and layers[-1][2] is None and type(module) in _ACTIVATIONS.values():
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
