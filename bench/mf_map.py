"""Benchmark: magnification factor over a 256 x 256 latent grid.

Ours: vhp_core.geometry.magnification_factor (forward-mode Jacobian with
torch.func.jacfwd, batched with vmap, chunked). Baseline: the per-output
backward-pass loop found in public code, one torch.autograd.grad call per
output dimension over the whole batch, then sqrt(det(J^T J)).

Decoders are the MLP decoders we train: params.yaml's model (`train:` through the
pipeline's model_config; 2-256-256-D, tanh, as the file sets it) with D = 62 (the mocap
entries: motion-capture features) and D = 4096 (the faces entries: 64 x 64 images, flat),
in fp32 (the one override). The
baseline's cost is linear in the number of outputs and of points; where the
full run would take many minutes it is timed on a subset of outputs and points
and scaled up, and the JSON says so. The two methods' MF values are compared
on the points the baseline ran on.

Run: .venv/bin/python bench/mf_map.py [--grid 256] [--threads 2]
Writes bench/results/mf_map.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from _params import describe, jsonable, model_config, train_params  # noqa: E402
from vhp_core import build_model  # noqa: E402
from vhp_core.geometry import latent_grid, magnification_factor, magnification_factor_from_jacobian  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mf_map.json"
OVERRIDES = {"precision": "fp32"}
DATASETS = {62: "mocap", 4096: "faces"}  # output size -> the params.yaml entries (network, sigma) of its data set


def per_output_backward_mf(decoder, z: torch.Tensor, outputs: int | None = None) -> tuple[torch.Tensor, int]:
    """MF by one backward pass per output dimension (the baseline).

    With ``outputs`` set, only the first ``outputs`` rows of J are computed (for
    timing a subset); the MF is then that of the partial Jacobian.
    """
    z = z.detach().requires_grad_(True)
    out = decoder(z).reshape(len(z), -1)
    n_out = out.shape[1] if outputs is None else min(outputs, out.shape[1])
    rows = []
    for d in range(n_out):
        (grad,) = torch.autograd.grad(out[:, d].sum(), z, retain_graph=d < n_out - 1)
        rows.append(grad)
    jac = torch.stack(rows, dim=1)  # (B, n_out, L)
    return magnification_factor_from_jacobian(jac.detach()).to(z.dtype), n_out


def timed(fn, repeats: int = 1):
    """(best wall seconds, best CPU seconds, result) over repeats.

    The machine is shared, so the best of a few runs is the least disturbed one;
    CPU time (all threads of this process) is reported too because it is less
    sensitive to other processes than wall time.
    """
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def bench_case(
    out_dim: int, grid: int, chunk: int, baseline_points: int, baseline_outputs: int | None, repeats: int
) -> dict:
    torch.manual_seed(0)
    config = model_config(train_params(OVERRIDES), DATASETS[out_dim], "vae", (out_dim,), "gaussian")
    model = build_model(config)
    model.eval()
    decoder = model.decoder_mean_flat
    points, _, _ = latent_grid((-3.0, -3.0), (3.0, 3.0), grid)
    n = len(points)

    magnification_factor(decoder, points[:chunk], chunk)  # warm-up
    ours_s, ours_cpu, mf_ours = timed(lambda: magnification_factor(decoder, points, chunk), repeats)

    # Baseline on an evenly spread subset of the grid (all of it when baseline_points >= n).
    subset = points[torch.linspace(0, n - 1, min(baseline_points, n)).round().long()]
    per_output_backward_mf(decoder, subset[:16], 2)  # warm-up
    base_s, base_cpu, (mf_base, n_out) = timed(
        lambda: per_output_backward_mf(decoder, subset, baseline_outputs), max(1, repeats - 1))
    scale = (n / len(subset)) * (out_dim / n_out)
    base_full_s, base_full_cpu = base_s * scale, base_cpu * scale

    # Agreement: ours against the baseline on the same points (full Jacobian rows only).
    if n_out == out_dim:
        mf_check = mf_base
    else:
        mf_check, _ = per_output_backward_mf(decoder, subset[:64])
    mf_ours_subset = magnification_factor(decoder, subset[: len(mf_check)], chunk)
    rel = ((mf_ours_subset.double() - mf_check.double()).abs() / mf_check.double().abs().clamp_min(1e-30)).max()

    return {
        "decoder": f"mlp {config.latent_dim}-{'-'.join(map(str, reversed(config.hidden)))}-{out_dim} ({config.activation})",
        "grid": f"{grid}x{grid}",
        "points": n,
        "chunk": chunk,
        "ours_seconds": round(ours_s, 3),
        "ours_cpu_seconds": round(ours_cpu, 3),
        "ours_points_per_second": round(n / ours_s, 1),
        "baseline_seconds_measured": round(base_s, 3),
        "baseline_measured_points": int(len(subset)),
        "baseline_measured_outputs": int(n_out),
        "baseline_extrapolated": bool(scale != 1.0),
        "baseline_seconds_full_grid": round(base_full_s, 3),
        "baseline_cpu_seconds_full_grid": round(base_full_cpu, 3),
        "speedup": round(base_full_s / ours_s, 1),
        "speedup_cpu_time": round(base_full_cpu / ours_cpu, 1),
        "repeats": repeats,
        "max_relative_difference": float(rel),
        "mf_range": [float(mf_ours.min()), float(mf_ours.max())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (baseline: one fewer)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"decoders: {describe(OVERRIDES)}")

    cases = [
        # 62 outputs: the baseline runs on the whole grid.
        bench_case(62, args.grid, args.chunk, baseline_points=args.grid**2, baseline_outputs=None,
                   repeats=args.repeats),
        # 4096 outputs: the full baseline would take hours on two cores; time 128 outputs
        # on 2048 points and scale (its cost is linear in both).
        bench_case(4096, args.grid, args.chunk, baseline_points=2048, baseline_outputs=128, repeats=args.repeats),
    ]
    result = {
        "benchmark": "magnification factor over a latent grid: vmap(jacfwd) vs per-output backward loop",
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "overrides": jsonable(OVERRIDES),
        "cases": cases,
    }
    for case in cases:
        note = " (baseline extrapolated)" if case["baseline_extrapolated"] else ""
        print(f"{case['decoder']:<28} {case['grid']}: ours {case['ours_seconds']:8.2f} s, "
              f"per-output backward {case['baseline_seconds_full_grid']:9.1f} s{note}, "
              f"speed-up {case['speedup']:.0f}x (CPU time {case['speedup_cpu_time']:.0f}x), "
              f"max rel. diff {case['max_relative_difference']:.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
