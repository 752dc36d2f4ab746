"""The pythae comparison's goal figures, computed from the rows of a results JSON (no measuring).

Training speed-ups are medians over rounds of per-round ratios (wall time, and per
CPU-second of each process); evaluation speed-ups are ratios of points per second;
"same numbers" are per-point differences on the shared test subset (fast against
reference path, bf16 against fp32, compiled against eager); GFLOP/s are counted matmul
FLOPs times measured rates, as fractions of the run's matmul peaks.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from _compare_setting import PYTHAE_NAMES


def row_label(run: dict[str, Any]) -> str:
    if run["library"] == "pythae":
        name = f"pythae {PYTHAE_NAMES[run['model']]}"
        return name + (" (BaseTrainer)" if run["driver"] == "trainer" else " (hand loop)")
    return (f"ours {run['model']}" + (" bf16" if run["precision"] == "bf16" else "")
            + (" compiled" if run.get("compiled") else ""))


def _rate(rows: dict, key: str) -> float | None:
    row = rows.get(key, {})
    return row.get("training", {}).get("samples_per_s_median")


def _values(rows: dict, key: str, field: str = "ll_subset") -> list[float] | None:
    """The per-point log-likelihoods of one row's evaluation `field`, if it ran."""
    return (rows.get(key, {}).get(field) or {}).get("values")


def _paired(rows: dict, a: str, b: str) -> dict[str, float] | None:
    """The per-point difference a - b on the shared subset (see `_difference`)."""
    return _difference(_values(rows, a), _values(rows, b))


def _round_ratio(rows: dict, a: str, b: str, cpu: bool = False) -> float | None:
    """Median over training rounds of rate(a) / rate(b), each round's two epochs run back to back.

    Pairing by round cancels the load of other jobs that varies from round to round;
    with cpu=True the rates are per CPU-second of the row's own process instead of wall time.
    """
    ea, eb = rows.get(a, {}).get("epochs"), rows.get(b, {}).get("epochs")
    if not ea or not eb:
        return None
    unit = "cpu_s" if cpu else "wall_s"
    ratios = [(x["samples"] / x[unit]) / (y["samples"] / y[unit]) for x, y in zip(ea, eb) if x[unit] > 0 and y[unit] > 0]
    return statistics.median(ratios) if ratios else None


VARIANTS = {"": "fp32", " bf16": "bf16", " compiled": "fp32/compiled"}  # label suffix -> key suffix


def _gflops(row: dict[str, Any], peaks: dict[str, float]) -> dict[str, float | None]:
    """Achieved matmul GFLOP/s of a row's training and subset evaluation, as fractions of the fp32 peak.

    (bf16 rows also get their fraction of the bf16 peak in the JSON: where bf16 is emulated,
    autocast's small GEMMs beat the square-matmul "peak", so that fraction exceeds 1.)
    """
    setup, peak = row.get("setup", {}), peaks.get("fp32")
    own = peaks.get(row["run"]["precision"])
    train_rate = row.get("training", {}).get("samples_per_s_median")
    eval_rate = (row.get("ll_subset") or {}).get("points_per_s")
    out: dict[str, float | None] = dict.fromkeys(
        ("train_gflops", "train_fraction", "train_fraction_own_peak", "eval_gflops", "eval_fraction", "eval_fraction_own_peak"))
    if setup.get("train_flops_per_sample") and train_rate:
        out["train_gflops"] = setup["train_flops_per_sample"] * train_rate / 1e9
        out["train_fraction"] = out["train_gflops"] / peak if peak else None
        out["train_fraction_own_peak"] = out["train_gflops"] / own if own else None
    if setup.get("eval_flops_per_point") and eval_rate:
        out["eval_gflops"] = setup["eval_flops_per_point"] * eval_rate / 1e9
        out["eval_fraction"] = out["eval_gflops"] / peak if peak else None
        out["eval_fraction_own_peak"] = out["eval_gflops"] / own if own else None
    return out


def _difference(a: list[float] | None, b: list[float] | None) -> dict[str, float] | None:
    """Mean, standard error, mean and max absolute value of the per-point difference a - b."""
    if not a or not b or len(a) != len(b):
        return None
    d = np.asarray(a) - np.asarray(b)
    sem = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return {"mean": float(d.mean()), "sem": sem, "mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max())}


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """The goal figures: training throughput, evaluation speed and time, same numbers, FLOP rates, gaps.

    Training speed-ups are medians over rounds of the per-round ratio (wall time), with the
    same per CPU-second of each process beside them (less sensitive to other jobs' load).
    """
    rows = results["rows"]
    peaks = results["machine"].get("matmul_peak_gflops", {})
    out: dict[str, Any] = {
        "training_speedup": {}, "training_speedup_cpu": {}, "eval_speedup": {}, "full_test_minutes": {},
        "same_numbers": {}, "gflops": {}, "ll_gap_vhp": {},
    }
    for model in PYTHAE_NAMES:
        for label, suffix in VARIANTS.items():
            ours = f"ours/{model}/loop/{suffix}"
            for driver in ("loop", "trainer"):
                theirs = f"pythae/{model}/{driver}/fp32"
                name = f"{model}{label} vs pythae {driver}"
                r = _round_ratio(rows, ours, theirs)
                if r:
                    out["training_speedup"][name] = r
                    out["training_speedup_cpu"][name] = _round_ratio(rows, ours, theirs, cpu=True)
        b = rows.get(f"pythae/{model}/loop/fp32", {}).get("ll_subset")
        for label, suffix, field in (("", "fp32", "ll_subset"), (" reference path", "fp32", "ll_subset_reference"),
                                     (" bf16", "bf16", "ll_subset")):
            a = rows.get(f"ours/{model}/loop/{suffix}", {}).get(field)
            if a and b:
                out["eval_speedup"][f"{model}{label}"] = a["points_per_s"] / b["points_per_s"]
    r = _round_ratio(rows, "ours/vhp/loop/fp32", "ours/iwae/loop/fp32")
    if r:
        out["training_speedup"]["vhp vs ours iwae (per step)"] = r
        out["training_speedup_cpu"]["vhp vs ours iwae (per step)"] = _round_ratio(
            rows, "ours/vhp/loop/fp32", "ours/iwae/loop/fp32", cpu=True)
    for key, row in rows.items():
        if row.get("ll_full"):
            out["full_test_minutes"][key] = {"minutes": row["ll_full"]["wall_s"] / 60.0, "points": row["ll_full"]["n"]}
        ref = _difference(_values(rows, key), _values(rows, key, "ll_subset_reference"))
        if ref:
            out["same_numbers"][f"{row_label(row['run'])}: fast - reference path (same draws)"] = ref
        if "setup" in row:
            out["gflops"][key] = _gflops(row, peaks)
    for model in ("vae", "vhp"):
        d = _paired(rows, f"ours/{model}/loop/bf16", f"ours/{model}/loop/fp32")
        if d:
            out["same_numbers"][f"ours {model}: bf16 - fp32 model (trained apart, same draws)"] = d
    for model in ("vae", "iwae"):
        d = _paired(rows, f"ours/{model}/loop/fp32/compiled", f"ours/{model}/loop/fp32")
        if d:
            out["same_numbers"][f"ours {model}: compiled - eager model (trained apart, same draws)"] = d
    for model in ("vamp", "iwae", "vae"):
        gap = _paired(rows, "ours/vhp/loop/fp32", f"pythae/{model}/loop/fp32")
        if gap:
            out["ll_gap_vhp"][f"vhp - pythae {model}"] = gap
        gap = _paired(rows, "ours/vhp/loop/fp32", f"ours/{model}/loop/fp32")
        if gap:
            out["ll_gap_vhp"][f"vhp - ours {model}"] = gap
    return out
