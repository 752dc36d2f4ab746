"""The pythae comparison's driver: a worker per row, epochs interleaved round by round, then the evaluations.

The driver lets one worker at a time train one epoch, round after round (A B C ... then
... C B A), so machine drift hits all rows alike; then every evaluated row estimates the
log-likelihood of the shared test subset (our fp32 rows also on the reference path with the
same draws), and the goal rows the full test set. The results carry the machine's state
(bench/_machine.py), the budget with the model's fields, and the overrides of params.yaml.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _compare_data import Arrays, ensure_data, load_arrays, subset_indices
from _compare_figures import compare
from _compare_setting import EVAL_SEED, Budget, Run, Setting, build_pythae, resolve
from _compare_worker import Worker
from _machine import cpu_times, machine_info, machine_load, matmul_peaks
from _params import describe

REPO = Path(__file__).resolve().parent.parent


def pick_nll_batch(setting: Setting, budget: Budget, arrays: Arrays, candidates: tuple[int, ...] = (100, 500, 1000, 5000)) -> dict[str, Any]:
    """The fastest pythae get_nll batch_size on this machine (VAE, a few points, S of the subset).

    get_nll draws max(batch_size, ...) samples in whole batches: with S = 5000 every
    candidate here divides S, so each draws exactly S samples.
    """
    torch.set_num_threads(budget.threads)
    model = build_pythae(Run("pythae", "vae"), setting, budget.seed).eval()
    x = arrays.test_binarised[:2]
    timings = {}
    for bs in candidates:
        if budget.subset_samples % bs or bs > budget.subset_samples:
            continue
        best = math.inf
        for _ in range(1):
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(x.shape[0]):
                    model.get_nll(x[i : i + 1], n_samples=budget.subset_samples, batch_size=bs)
            best = min(best, time.perf_counter() - t0)
        timings[bs] = x.shape[0] / best
    chosen = max(timings, key=timings.get) if timings else 100
    return {"chosen": chosen, "points_per_s": {str(k): v for k, v in timings.items()}}


def summarise_epochs(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [e["samples"] / e["wall_s"] for e in epochs]
    cpu_rates = [e["samples"] / e["cpu_s"] for e in epochs if e["cpu_s"] > 0]
    return {
        "samples_per_s_median": statistics.median(rates),
        "samples_per_s_best": max(rates),
        "samples_per_s_all": rates,
        "samples_per_cpu_s_median": statistics.median(cpu_rates) if cpu_rates else None,
    }


def ll_summary(ll: list[float], wall: float, cpu: float) -> dict[str, Any]:
    values = np.asarray(ll, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "sem": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None,
        "n": int(len(values)),
        "points_per_s": len(values) / wall,
        "points_per_cpu_s": len(values) / cpu if cpu > 0 else None,
        "wall_s": wall,
    }


def _ll_call(w: Worker, rows: dict[str, dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any] | None:
    """One log-likelihood call on worker w; a failure is recorded in its row and retires the worker."""
    try:
        return w.call("ll", args)
    except Exception as err:
        rows[w.run.key]["error"] = str(err)
        w.alive = False
        return None


def run_comparison(budget: Budget, runs: tuple[Run, ...], data_path: Path, quick: bool) -> dict[str, Any]:
    started = time.time()
    load_before, cpu_before = os.getloadavg(), cpu_times()
    peaks = matmul_peaks(budget.threads)
    print(f"load average {load_before}; matmul peaks GFLOP/s {peaks}", flush=True)
    ensure_data(data_path)
    arrays = load_arrays(data_path, budget.train_n)
    setting = resolve(budget.epochs, int(arrays.train.shape[0]))
    print(f"model and constraint: {describe(setting.overrides)}", flush=True)
    n_test = arrays.test_binarised.shape[0]
    subset = subset_indices(n_test, budget.subset_n, budget.seed)
    full = torch.arange(n_test if budget.full_test_n <= 0 else min(budget.full_test_n, n_test))
    print(f"train {arrays.train.shape[0]} images, test subset {len(subset)}, full test {len(full)}", flush=True)
    n_train = int(arrays.train.shape[0])
    nll_batch = pick_nll_batch(setting, budget, arrays)
    print("pythae get_nll batch sizes (points/s):", nll_batch, flush=True)
    del arrays

    # pythae's BaseTrainer always adds tqdm progress bars; tqdm reads TQDM_DISABLE when it is
    # imported, so it has to be in the environment the spawned workers start with.
    os.environ["TQDM_DISABLE"] = "1"
    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="compare_pythae_")
    workers: dict[str, Worker] = {}
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        t0 = time.perf_counter()
        try:
            workers[run.key] = Worker(ctx, run, setting, budget, data_path, nll_batch["chosen"], workdir)
            rows[run.key] = {"run": asdict(run), "setup": workers[run.key].info, "epochs": []}
        except Exception as err:  # a row that cannot start is reported, not fatal
            rows[run.key] = {"run": asdict(run), "error": str(err)}
            print(f"[{run.key}] failed to start: {err}", flush=True)
            continue
        print(f"[{run.key}] ready in {time.perf_counter() - t0:.1f}s ({workers[run.key].info})", flush=True)

    # Training: one epoch per row per round, the order reversed every other round.
    for epoch in range(budget.epochs):
        order = list(workers.values()) if epoch % 2 == 0 else list(reversed(workers.values()))
        for w in order:
            if not w.alive or (w.run.driver == "trainer" and epoch >= budget.trainer_epochs):
                continue
            try:
                result = w.call("epoch", epoch)
            except Exception as err:
                rows[w.run.key]["error"] = str(err)
                print(f"[{w.run.key}] epoch {epoch} failed: {err}", flush=True)
                w.alive = False
                continue
            rows[w.run.key]["epochs"].append(result)
            extra = {k: result[k] for k in ("train_elbo", "train_c", "lambda", "train_loss") if k in result}
            print(f"[{w.run.key}] epoch {epoch + 1}: {result['samples'] / result['wall_s']:,.0f} samples/s {extra}", flush=True)
        for w in list(workers.values()):
            if w.alive and w.run.driver == "trainer" and epoch + 1 >= budget.trainer_epochs:
                rows[w.run.key]["final"] = w.stop()
    for key, row in rows.items():
        if row.get("epochs"):
            row["training"] = summarise_epochs(row["epochs"])
            row["rss_train_peak_mb"] = max(e["rss_mb"] for e in row["epochs"])

    # Log-likelihood on the shared subset (pairs interleaved), then ours on the full test set.
    for w in workers.values():
        if w.alive:
            w.call("reset_peak")
    for w in workers.values():
        if not (w.alive and w.run.evaluated):
            continue
        res = _ll_call(w, rows, (subset, budget.subset_samples, EVAL_SEED, False))
        if res is None:
            continue
        rows[w.run.key]["ll_subset"] = ll_summary(res["ll"], res["wall_s"], res["cpu_s"])
        rows[w.run.key]["ll_subset"]["values"] = res["ll"]
        print(f"[{w.run.key}] subset log-likelihood {rows[w.run.key]['ll_subset']['mean']:.2f} "
              f"({rows[w.run.key]['ll_subset']['points_per_s']:.1f} points/s)", flush=True)
        if w.run.library == "ours" and w.run.precision == "fp32" and not w.run.compiled:
            # The reference path with the same random draws: the same numbers up to rounding?
            res = w.call("ll", (subset, budget.subset_samples, EVAL_SEED, True))
            rows[w.run.key]["ll_subset_reference"] = ll_summary(res["ll"], res["wall_s"], res["cpu_s"])
            rows[w.run.key]["ll_subset_reference"]["values"] = res["ll"]
            print(f"[{w.run.key}] subset log-likelihood, reference path: "
                  f"{rows[w.run.key]['ll_subset_reference']['points_per_s']:.1f} points/s", flush=True)
    for w in workers.values():
        # The full test set costs S x 10,000 decoder passes a row: the goal rows only.
        if not (w.alive and w.run.library == "ours" and w.run.evaluated and w.run.precision == "fp32"
                and not w.run.compiled and w.run.model in budget.full_test_models):
            continue
        res = _ll_call(w, rows, (full, budget.full_test_samples, EVAL_SEED, False))
        if res is None:
            continue
        rows[w.run.key]["ll_full"] = ll_summary(res["ll"], res["wall_s"], res["cpu_s"])
        print(f"[{w.run.key}] full-test log-likelihood {rows[w.run.key]['ll_full']['mean']:.2f} "
              f"({rows[w.run.key]['ll_full']['points_per_s']:.1f} points/s)", flush=True)
    for w in workers.values():
        if w.alive:
            rows[w.run.key]["final"] = w.stop()
    for row in rows.values():
        if "final" in row and "ll_subset" in row:
            row["rss_eval_peak_mb"] = row["final"]["rss_peak_mb"]

    results = {
        "benchmark": "compare_pythae",
        "quick": quick,
        "created_unix": started,
        "wall_minutes": (time.time() - started) / 60.0,
        "machine": {**machine_info(load_before, ("pythae",)), "load_average_at_end": os.getloadavg(),
                    **machine_load(cpu_before, cpu_times()), "matmul_peak_gflops": peaks},
        "budget": {**asdict(budget), **setting.record()},
        "overrides": setting.overrides,
        "data": {"path": str(data_path.relative_to(REPO)) if data_path.is_relative_to(REPO) else str(data_path),
                 "train_images": n_train, "test_subset": subset.tolist(),
                 "full_test_points": len(full)},
        "pythae_get_nll_batch": nll_batch,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
    }
    results["comparison"] = compare(results)
    return results
