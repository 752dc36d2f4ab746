"""Training-step throughput of vhp_core: samples/s and achieved matmul GFLOP/s against the CPU peak.

Models: params.yaml's (`train:` through the pipeline's model_config / constraint_config, the
fashion_mnist entries) with the overrides in OVERRIDES: an MLP 784-500-500-50 VAE with a
Bernoulli decoder, and VHP with the same encoder/decoder and params.yaml's hierarchical prior,
batch 512 (--batch), kappa 1 (the constraint holds at once, so the prior trains too), Adam
(fused) at params.yaml's learning rate. Both in fp32 and with bf16 autocast of the network
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
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from _machine import cpu_name, matmul_peak_gflops  # noqa: E402
from _params import constraint_config, describe, jsonable, model_config, train_params  # noqa: E402
from _synthetic import synthetic_binary_batch  # noqa: E402
from vhp_core import ConstraintState, build_model, train_step  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
DATASET, X_SHAPE = "fashion_mnist", (784,)  # params.yaml's entries of a Bernoulli 784-pixel data set
# kappa^2 = 1 > BCE per pixel: the constraint holds at once, so the prior (Theta, Phi) trains too.
OVERRIDES = {"model.latent_dim": 50, "model.hidden": [500, 500], f"kappa.{DATASET}": 1.0}


def overrides(batch: int, precision: str) -> dict:
    return {**OVERRIDES, "batch_size": batch, "precision": precision}


def describe_config(config) -> str:
    """The recorded one-line description of the models timed (from the config, not a constant)."""
    return (f"MLP {X_SHAPE[0]}-{'-'.join(map(str, config.hidden))}-{config.latent_dim}, Bernoulli, {config.activation}; "
            f"vhp: zeta_dim {config.zeta_dim}, prior_hidden {tuple(config.prior_hidden)}, k_inner {config.k_inner}; "
            "Adam fused")


class StepBench:
    """One model/precision: a model, its optimiser and constraint state, and the timings so far."""

    def __init__(self, name: str, precision: str, batch: int, warmup: int) -> None:
        torch.manual_seed(0)
        self.name, self.precision, self.batch = name, precision, batch
        params = train_params(overrides(batch, precision))
        self.config = model_config(params, DATASET, name, X_SHAPE, "bernoulli")
        self.model = build_model(self.config)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=params.lr, fused=True)
        self.cfg = constraint_config(params, DATASET, batch)
        self.state = ConstraintState.initial(self.cfg, self.model.rule)
        self.x = synthetic_binary_batch(batch, X_SHAPE[0])
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
    print(f"models: {describe(overrides(args.batch, 'fp32 | bf16'))}")

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
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_peak_gflops": peaks,
        "matmul_peak_gflops_rounds": peak_rounds,
        "rounds": args.rounds,
        "config": describe_config(benches[-1].config),
        "overrides": jsonable(overrides(args.batch, "fp32 | bf16")),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
