"""Training-step throughput of vhp_core: samples/s and achieved matmul GFLOP/s against the CPU peak.

Models: an MLP 784-500-500-50 VAE with a Bernoulli decoder, and VHP with the same
encoder/decoder and the default hierarchical prior (zeta_dim 2, prior_hidden (256, 256),
k_inner 16), batch 512, Adam (fused). Both in fp32 and with bf16 autocast of the network
layers. FLOPs are the matmul FLOPs (mm/addmm/bmm) of one forward + backward pass counted by
torch.utils.flop_counter, which is close to 3x the forward FLOPs (the first layer has no
input gradient). The fp32 and bf16 matmul peaks (2048^3 matmul) are measured in the same
run. The cores are shared with other work, so timing runs in rounds that interleave the
four configurations and the peak measurements; each figure comes from the least contended
round (fastest round median, the peak from its best round); medians over all steps are
recorded beside them.

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
    """Best-of-rounds GFLOP/s of an n x n x n matmul in `dtype`.

    n is halved (down to 256) while one matmul takes longer than 0.25 s: a CPU without
    native bf16 emulates it at about 1 GFLOP/s, where one 2048^3 product takes over 10 s
    and a peak measurement several minutes.
    """
    while True:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        a @ b
        if time.perf_counter() - start < 0.25 or n <= 256:
            break
        n //= 2
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


class StepBench:
    """One model/precision: a model, its optimiser and constraint state, and the timings so far."""

    def __init__(self, name: str, precision: str, batch: int, warmup: int) -> None:
        torch.manual_seed(0)
        self.name, self.precision, self.batch = name, precision, batch
        config = ModelConfig(
            model=name, x_shape=(784,), likelihood="bernoulli", latent_dim=50, hidden=(500, 500), precision=precision
        )
        self.model = build_model(config)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        # kappa^2 = 1 > BCE per pixel: the constraint holds at once, so the prior (Theta, Phi) trains too.
        self.cfg = ConstraintConfig(kappa=1.0)
        self.state = ConstraintState.initial(self.cfg, self.model.rule)
        self.x = synthetic_binary_batch(batch, 784)
        for _ in range(warmup):
            self.step()
        with FlopCounterMode(display=False) as counter:
            self.step()
        self.flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as forward_counter:
            self.model.loss(self.x)
        self.forward_flops = forward_counter.get_total_flops()
        self.round_medians: list[float] = []
        self.all_times: list[float] = []
        self.finite = True

    def step(self) -> None:
        self.state, terms = train_step(self.model, self.optimiser, self.x, self.state, self.cfg)
        self.finite = terms.finite

    def time_round(self, steps: int) -> None:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        self.round_medians.append(statistics.median(times))
        self.all_times += times

    def result(self) -> dict[str, object]:
        best = min(self.round_medians)
        median = statistics.median(self.all_times)
        return {
            "model": self.name,
            "precision": self.precision,
            "batch": self.batch,
            "steps": len(self.all_times),
            "step_ms_best_round": 1e3 * best,
            "step_ms_median_all": 1e3 * median,
            "samples_per_s": self.batch / best,
            "samples_per_s_median_all": self.batch / median,
            "matmul_gflop_per_step": self.flops / 1e9,
            "forward_matmul_gflop": self.forward_flops / 1e9,
            "gflop_per_s": self.flops / best / 1e9,
            "gflop_per_s_median_all": self.flops / median / 1e9,
            "finite": self.finite,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    benches = [StepBench(name, precision, args.batch, args.warmup) for name in ("vae", "vhp") for precision in ("fp32", "bf16")]
    # The cores are shared: rounds interleave the configurations and the peak measurements,
    # and each figure is taken from its least contended round (the fastest round median).
    peak_rounds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peak_rounds[precision].append(matmul_peak_gflops(dtype))
        for bench in benches:
            bench.time_round(args.steps)
    peaks = {p: max(v) for p, v in peak_rounds.items()}
    runs = [bench.result() for bench in benches]
    for run in runs:
        run["fraction_of_fp32_peak"] = run["gflop_per_s"] / peaks["fp32"]
        run["fraction_of_own_precision_peak"] = run["gflop_per_s"] / peaks[str(run["precision"])]

    print(f"threads {args.threads}; matmul peak GFLOP/s fp32 {peaks['fp32']:.1f} bf16 {peaks['bf16']:.1f} "
          f"(best of {args.rounds} rounds; per round fp32 {[round(v) for v in peak_rounds['fp32']]})")
    print(f"{'model':5} {'prec':4} {'ms/step':>8} {'samples/s':>10} {'GFLOP/step':>10} {'GFLOP/s':>8} {'% fp32 peak':>11} {'% own peak':>10}")
    for r in runs:
        print(
            f"{r['model']:5} {r['precision']:4} {r['step_ms_best_round']:8.1f} {r['samples_per_s']:10.0f} "
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
        "matmul_peak_gflops_rounds": peak_rounds,
        "rounds": args.rounds,
        "config": "MLP 784-500-500-50, Bernoulli, tanh; vhp: zeta_dim 2, prior_hidden (256, 256), k_inner 16; Adam fused",
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
