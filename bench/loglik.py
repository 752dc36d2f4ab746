"""Throughput of the importance-sampling log-likelihood estimate (METHOD §5), fp32 vs bf16.

Models: params.yaml's (`train:` through the pipeline's model_config / constraint_config, the
fashion_mnist entries) with the overrides in OVERRIDES: MLP 784-500-500-50 VAE (Bernoulli)
and VHP with the same encoder/decoder and params.yaml's hierarchical prior, briefly trained
(batch 128, kappa 0.3) on synthetic binary data so that the estimates are not those of a
random network. The
estimate runs at S = 5000 samples on 100 data points (K_eval = 16 inner samples for VHP),
in fp32 and with bf16 autocast of the network layers. Reported: data points/s, achieved
matmul GFLOP/s (forward only; counted by torch.utils.flop_counter on a small S and
extrapolated linearly in S), the fraction of the fp32 / bf16 matmul peak measured in the
same run, and the effect of bf16 on the estimate in nats, next to the Monte Carlo spread
between two fp32 runs with different seeds. The cores are shared with other work: the
estimate runs in slices of 10 data points, and the rates come from the fastest slice
(total wall time recorded beside it); the peaks are the best of the measurements taken
before and after.

Run: .venv/bin/python bench/loglik.py   (writes bench/results/loglik.json)
The figures are printed and recorded, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from _machine import cpu_name, matmul_peaks  # noqa: E402
from _params import constraint_config, describe, jsonable, model_config, train_params  # noqa: E402
from _synthetic import synthetic_binary_batch  # noqa: E402
from vhp_core import ConstraintState, build_model, log_likelihood, train_step  # noqa: E402
from vhp_core.models import LatentVariableModel  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "loglik.json"
DATASET, X_SHAPE = "fashion_mnist", (784,)  # params.yaml's entries of a Bernoulli 784-pixel data set
TRAIN_BATCH = 128
OVERRIDES = {"model.latent_dim": 50, "model.hidden": [500, 500], f"kappa.{DATASET}": 0.3, "batch_size": TRAIN_BATCH,
             "precision": "fp32"}


def trained_pair(name: str, steps: int) -> tuple[LatentVariableModel, LatentVariableModel]:
    """(fp32 model, bf16 model) with the same weights after `steps` fp32 training steps."""
    torch.manual_seed(0)
    params = train_params(OVERRIDES)
    config = model_config(params, DATASET, name, X_SHAPE, "bernoulli")
    fp32 = build_model(config)
    optimiser = torch.optim.Adam(fp32.parameters(), lr=params.lr, fused=True)
    cfg = constraint_config(params, DATASET, TRAIN_BATCH * max(1, steps))
    state = ConstraintState.initial(cfg, fp32.rule)
    for step in range(steps):
        state, _ = train_step(fp32, optimiser, synthetic_binary_batch(TRAIN_BATCH, X_SHAPE[0], seed=step), state, cfg)
    bf16 = build_model(dataclasses.replace(config, precision="bf16"))
    bf16.load_state_dict(fp32.state_dict())
    return fp32, bf16


def counted_flops(model: LatentVariableModel, x: torch.Tensor, n_samples: int, n_inner: int) -> float:
    """Matmul FLOPs of the estimate at n_samples, extrapolated from two small runs (linear in S)."""
    counts = []
    for s in (20, 40):
        with FlopCounterMode(display=False) as counter:
            log_likelihood(model, x, s, n_inner)
        counts.append(counter.get_total_flops())
    per_sample = (counts[1] - counts[0]) / 20
    return counts[0] + per_sample * (n_samples - 20)


def timed(
    model: LatentVariableModel, x: torch.Tensor, n_samples: int, n_inner: int, seed: int, slice_size: int
) -> tuple[float, float, torch.Tensor]:
    """(total seconds, seconds of the fastest slice scaled to all of x, estimates).

    The estimate runs slice by slice (slice_size data points, all S samples each); on shared
    cores the fastest slice is the least contended measurement.
    """
    generator = torch.Generator().manual_seed(seed)
    times, parts = [], []
    for i in range(0, x.shape[0], slice_size):
        start = time.perf_counter()
        parts.append(log_likelihood(model, x[i : i + slice_size], n_samples, n_inner, generator=generator))
        times.append(time.perf_counter() - start)
    best_scaled = min(t / p.shape[0] for t, p in zip(times, parts, strict=True)) * x.shape[0]
    return sum(times), best_scaled, torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-data", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--inner", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--slice", type=int, default=10, help="data points per timed call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"models: {describe(OVERRIDES)}; bf16: the same weights under bf16 autocast")

    x = synthetic_binary_batch(args.n_data, X_SHAPE[0], seed=10_000)
    peaks_before = matmul_peaks()
    runs = []
    for name in ("vae", "vhp"):
        fp32, bf16 = trained_pair(name, args.train_steps)
        c = fp32.config
        flops = counted_flops(fp32, x, args.samples, args.inner)
        total_32, best_32, ll_32 = timed(fp32, x, args.samples, args.inner, 1, args.slice)
        total_16, best_16, ll_16 = timed(bf16, x, args.samples, args.inner, 1, args.slice)
        _, _, ll_32_other_seed = timed(fp32, x, args.samples, args.inner, 2, args.slice)
        bf16_effect = ll_16 - ll_32
        mc_spread = ll_32_other_seed - ll_32
        for precision, total, best in (("fp32", total_32, best_32), ("bf16", total_16, best_16)):
            runs.append(
                {
                    "model": name,
                    "precision": precision,
                    "n_data": args.n_data,
                    "n_samples": args.samples,
                    "n_inner": args.inner if name == "vhp" else None,
                    "seconds_total": total,
                    "seconds_best_slice_rate": best,
                    "data_points_per_s": args.n_data / best,
                    "latent_samples_per_s": args.n_data * args.samples / best,
                    "matmul_gflop": flops / 1e9,
                    "gflop_per_s": flops / best / 1e9,
                    "gflop_per_s_total": flops / total / 1e9,
                }
            )
        runs[-1]["bf16_minus_fp32_nats"] = {
            "mean": bf16_effect.mean().item(),
            "mean_abs": bf16_effect.abs().mean().item(),
            "max_abs": bf16_effect.abs().max().item(),
        }
        runs[-1]["fp32_seed_spread_nats"] = {"mean_abs": mc_spread.abs().mean().item(), "max_abs": mc_spread.abs().max().item()}
        runs[-1]["mean_log_likelihood_fp32"] = ll_32.mean().item()
    peaks_after = matmul_peaks()
    peaks = {p: max(peaks_before[p], peaks_after[p]) for p in peaks_before}
    for run in runs:
        run["fraction_of_fp32_peak"] = run["gflop_per_s"] / peaks["fp32"]
        run["fraction_of_own_precision_peak"] = run["gflop_per_s"] / peaks[str(run["precision"])]

    print(f"threads {args.threads}; matmul peak GFLOP/s fp32 {peaks['fp32']:.1f} bf16 {peaks['bf16']:.1f}; "
          f"S={args.samples}, K_eval={args.inner} (vhp), {args.n_data} data points")
    print(f"{'model':5} {'prec':4} {'seconds':>8} {'points/s':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'% fp32 peak':>11} {'% own peak':>10}")
    for r in runs:
        print(
            f"{r['model']:5} {r['precision']:4} {r['seconds_best_slice_rate']:8.2f} {r['data_points_per_s']:9.2f} {r['matmul_gflop']:8.1f} "
            f"{r['gflop_per_s']:8.1f} {100 * r['fraction_of_fp32_peak']:10.1f}% {100 * r['fraction_of_own_precision_peak']:9.1f}%"
        )
        if "bf16_minus_fp32_nats" in r:
            e, m = r["bf16_minus_fp32_nats"], r["fp32_seed_spread_nats"]
            print(
                f"      bf16 - fp32: mean {e['mean']:+.4f}, mean |.| {e['mean_abs']:.4f}, max |.| {e['max_abs']:.4f} nats "
                f"(fp32 seed-to-seed: mean |.| {m['mean_abs']:.4f}, max {m['max_abs']:.4f}); mean log p(x) {r['mean_log_likelihood_fp32']:.2f}"
            )
    result = {
        "benchmark": "loglik",
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_peak_gflops": peaks,
        "matmul_peak_gflops_before": peaks_before,
        "matmul_peak_gflops_after": peaks_after,
        "config": f"MLP {X_SHAPE[0]}-{'-'.join(map(str, c.hidden))}-{c.latent_dim}, Bernoulli, {c.activation}, "
        f"{args.train_steps} training steps on synthetic binary data; "
        f"vhp: zeta_dim {c.zeta_dim}, prior_hidden {tuple(c.prior_hidden)}",
        "overrides": jsonable(OVERRIDES),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
