"""The precision policy: what a model runs in (fp32 or bf16 autocast) on which device.

With precision='bf16' the network layers run under `torch.autocast(<device>,
torch.bfloat16)` for the device the input lives on (CPU or CUDA), and the output is cast
back to the input's dtype, so everything downstream (likelihood sums, log-densities,
logsumexp) stays in float32/float64 (`networks.Network`). `resolve_precision('auto',
device)` picks bf16 where that device multiplies bf16 natively (a CPU with AVX-512
BF16/AMX, a CUDA device with `torch.cuda.is_bf16_supported()`), else fp32.

TF32 policy (`TF32_POLICY`, applied by `apply_tf32_policy`): 'fp32' means IEEE fp32 on
every device. TF32 matmuls and cuDNN convolutions stay off, so an fp32 model gives the
same numbers on CPU and GPU up to summation order; the reduced-precision fast path on a
GPU is bf16 autocast, chosen explicitly or by 'auto', and recorded as such.
"""

from __future__ import annotations

import contextlib

import torch

from .choices import PRECISION_NAMES, PRECISION_SETTINGS, Precision


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


def resolve_precision(precision: str, device: torch.device | str | None = None) -> Precision:
    """'auto' -> 'bf16' where `device` (default: the CPU) multiplies bf16 natively, else 'fp32'.

    'fp32'/'bf16' are returned unchanged. On CUDA that is `torch.cuda.is_bf16_supported()`;
    on the CPU, oneDNN's report of AVX-512 BF16 or AMX (`native_bf16`).
    """
    if precision not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {PRECISION_SETTINGS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision  # type: ignore[return-value]


def evaluation_precision(precision: str, device: torch.device | str | None = None) -> Precision:
    """The precision a model trained in `precision` is evaluated in on `device`.

    bf16 only where the evaluating device multiplies bf16 natively (a bf16 model trained
    on a GPU and evaluated on an AVX2 CPU runs fp32 there: emulated bf16 would be slower
    and no more faithful); fp32 stays fp32.
    """
    if precision not in PRECISION_NAMES:
        raise ValueError(f"precision must be one of {PRECISION_NAMES}, got {precision!r}")
    return "bf16" if precision == "bf16" and bf16_native(device) else "fp32"


def network_autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[None]:
    """The autocast region of the network layers: bf16 on `device_type` ('cpu' or 'cuda'), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be one of {PRECISION_NAMES}, got {precision!r}")
