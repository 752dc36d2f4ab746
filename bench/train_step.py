"""Training-step throughput of vhp_core: samples/s and achieved matmul GFLOP/s against the CPU peak.

Models: an MLP 784-500-500-50 VAE with a Bernoulli decoder, and VHP with the same
encoder/decoder and the default hierarchical prior (zeta_dim 2, prior_hidden (256, 256),
k_inner 16), batch 512, Adam (fused). Both in fp32 and with bf16 autocast of the network
layers. FLOPs are the matmul FLOPs (mm/addmm/bmm) of one forward + backward pass counted by
torch.utils.flop_counter, which is close to 3x the forward FLOPs (the first layer has no
input gradient). The fp32 and bf16 matmul peaks (2048^3 matmul) are measured in the same
run, before and after, and the higher value is used. Timings are medians over steps.

Run: .venv/bin/python bench/train_step.py   (writes bench/results/train_step.json)
The figures are printed and recorded, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vhp_core import ConstraintConfig, ConstraintState, ModelConfig, build_model, train_step

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5, rounds: int = 3) -> float:
    """Best-of-rounds GFLOP/s of an n x n x n matmul in `dtype`."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def synthetic_binary_batch(batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Binary data from 10 random prototypes with 5% flip noise (MNIST-sized stand-in)."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, dim, generator=gen) < 0.3
    labels = torch.randint(10, (batch,), generator=gen)
    flips = torch.rand(batch, dim, generator=gen) < 0.05
    return (prototypes[labels] ^ flips).float()


def bench_model(name: str, precision: str, batch: int, steps: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    config = ModelConfig(
        model=name, x_shape=(784,), likelihood="bernoulli", latent_dim=50, hidden=(500, 500), precision=precision
    )
    model = build_model(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    # kappa^2 = 1 > BCE per pixel: the constraint holds at once, so the prior (Theta, Phi) trains too.
    cfg = ConstraintConfig(kappa=1.0)
    state = ConstraintState.initial(cfg, model.rule)
    x = synthetic_binary_batch(batch, 784)
    for _ in range(warmup):
        state, _ = train_step(model, optimiser, x, state, cfg)
    with FlopCounterMode(display=False) as counter:
        state, _ = train_step(model, optimiser, x, state, cfg)
    flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as forward_counter:
        model.loss(x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, terms = train_step(model, optimiser, x, state, cfg)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "model": name,
        "precision": precision,
        "batch": batch,
        "steps": steps,
        "step_ms_median": 1e3 * median,
        "step_ms_best": 1e3 * min(times),
        "samples_per_s": batch / median,
        "matmul_gflop_per_step": flops / 1e9,
        "forward_matmul_gflop": forward_counter.get_total_flops() / 1e9,
        "gflop_per_s": flops / median / 1e9,
        "finite": terms.finite,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peaks_before = {p: matmul_peak_gflops(d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    runs = [
        bench_model(name, precision, args.batch, args.steps, args.warmup)
        for name in ("vae", "vhp")
        for precision in ("fp32", "bf16")
    ]
    peaks_after = {p: matmul_peak_gflops(d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peaks = {p: max(peaks_before[p], peaks_after[p]) for p in peaks_before}
    for run in runs:
        run["fraction_of_fp32_peak"] = run["gflop_per_s"] / peaks["fp32"]
        run["fraction_of_own_precision_peak"] = run["gflop_per_s"] / peaks[str(run["precision"])]

    print(f"threads {args.threads}; matmul peak GFLOP/s fp32 {peaks['fp32']:.1f} bf16 {peaks['bf16']:.1f} "
          f"(before {peaks_before['fp32']:.1f}/{peaks_before['bf16']:.1f}, after {peaks_after['fp32']:.1f}/{peaks_after['bf16']:.1f})")
    print(f"{'model':5} {'prec':4} {'ms/step':>8} {'samples/s':>10} {'GFLOP/step':>10} {'GFLOP/s':>8} {'% fp32 peak':>11} {'% own peak':>10}")
    for r in runs:
        print(
            f"{r['model']:5} {r['precision']:4} {r['step_ms_median']:8.1f} {r['samples_per_s']:10.0f} "
            f"{r['matmul_gflop_per_step']:10.2f} {r['gflop_per_s']:8.1f} {100 * r['fraction_of_fp32_peak']:10.1f}% "
            f"{100 * r['fraction_of_own_precision_peak']:9.1f}%"
        )
    result = {
        "benchmark": "train_step",
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_peak_gflops": peaks,
        "matmul_peak_gflops_before": peaks_before,
        "matmul_peak_gflops_after": peaks_after,
        "config": "MLP 784-500-500-50, Bernoulli, tanh; vhp: zeta_dim 2, prior_hidden (256, 256), k_inner 16; Adam fused",
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
