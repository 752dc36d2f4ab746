"""The claims run's numbers: mean +- sd over seeds, paired differences, and what each win is owed to.

Rows (one per trained model or control, every one at the same optimiser steps):
- vhp: the hierarchical prior with REWO (warm-up, then the constrained Lagrangian);
- iwae: N(0, I), the IWAE bound from step 1;
- iwae (warm-up): iwae after the same reconstruction-only warm-up as vhp (variant warmup);
- vhp (no warm-up): the hierarchical prior at lambda = 1 learning from step 1 (variant elbo);
- vhp-iw: the hierarchical prior inside an outer importance-weighted bound, REWO.

Paired differences vhp - X over seeds (seed s of vhp against seed s of X) with their standard
error and the seeds in VHP's favour. A *win* over X: the mean difference is in VHP's favour by
more than 2 se (and more than one seed). A win over iwae is attributed:
- to the prior, when vhp also wins against iwae (warm-up), i.e. with the warm-up held equal;
- to the warm-up, when it does not, and iwae (warm-up) itself wins against iwae;
- to neither, otherwise (the difference is not clearly owed to either).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

BASE = "vhp"
CONTROLS = ("iwae", "iwae (warm-up)", "vhp (no warm-up)", "vhp-iw")
# metric -> (label, +1 higher is better / -1 lower is better / 0 context only)
METRICS = {
    "test_log_likelihood": ("test log-likelihood (nats)", +1),
    "ll_elbo": ("ELBO on the same points and samples (nats)", +1),
    "knn_accuracy": ("kNN accuracy (whitened codes)", +1),
    "trajectory_smoothness": ("trajectory smoothness (whitened)", -1),
    "mf_fraction": ("MF fraction", -1),
    "interp_max_rel_mf_graph": ("interpolation max relative MF, graph path", -1),
    "interp_max_rel_mf_line": ("interpolation max relative MF, straight line", -1),
    "interp_graph_avoids_ridges": ("pairs whose graph path avoids the line's ridges", +1),
    "interp_evenness_graph": ("decoded-step evenness, graph path (max / mean step)", -1),
    "interp_evenness_line": ("decoded-step evenness, straight line", -1),
    "interp_off_data_graph": ("decoded frames off the data, graph path (÷ data NN distance)", -1),
    "interp_off_data_line": ("decoded frames off the data, straight line", -1),
    "interp_length_ratio": ("interpolation length ratio graph / line", -1),
    "r2_azimuth": ("R² azimuth", +1),
    "r2_elevation": ("R² elevation", +1),
    "r2_light": ("R² light", +1),
    "active_units": ("active units (posterior-noise unit)", 0),
    "ll_check_diff": ("LL at the check K_eval − LL at K_eval, same points (nats)", 0),
    "interp_max_mf_graph_raw_scale_dependent": ("max-MF graph path, raw (scale-dependent; not compared)", 0),
    "mf_median_data_raw_scale_dependent": ("median MF at the data, raw (scale-dependent)", 0),
    "prior_activation_step": ("warm-up end (step)", 0),
    "final_lambda": ("final λ", 0),
    "lambda_max": ("largest λ of the run", 0),
    "lambda_violated_share": ("share of λ updates with the constraint violated", 0),
    "sigma": ("decoder σ (calibrated, scalar)", 0),
    "seconds": ("training wall time (s)", 0),
}


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def paired(records: Iterable[dict], dataset: str, key: str, a: str, b: str) -> dict | None:
    """Seed-paired a - b of one metric: mean, se, pairs, and seeds in a's favour (by the metric's sign)."""
    values: dict[str, dict[int, float]] = {a: {}, b: {}}
    for rec in records:
        v = _number(rec.get(key))
        if rec["dataset"] == dataset and rec["model"] in values and v is not None:
            values[rec["model"]][rec["seed"]] = v
    seeds = sorted(set(values[a]) & set(values[b]))
    if not seeds:
        return None
    d = np.array([values[a][s] - values[b][s] for s in seeds])
    sign = METRICS.get(key, ("", 0))[1]
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0,
            "pairs": len(d), "favour": int((np.sign(d) * sign > 0).sum())}


def wins(diff: dict | None, sign: int) -> bool:
    """In a's favour by more than 2 se, over more than one seed."""
    return bool(diff and sign and diff["pairs"] > 1 and diff["mean"] * sign > 2.0 * diff["se"])


def attribution(records: list[dict], dataset: str, key: str) -> str:
    """What a win of vhp over iwae in this metric is owed to (see the module docstring)."""
    sign = METRICS[key][1]
    if not wins(paired(records, dataset, key, BASE, "iwae"), sign):
        return "no win"
    if wins(paired(records, dataset, key, BASE, "iwae (warm-up)"), sign):
        return "the prior"
    if wins(paired(records, dataset, key, "iwae (warm-up)", "iwae"), sign):
        return "the warm-up"
    return "neither"


def summarise(records: list[dict]) -> dict:
    """Per data set: per row and metric mean +- sd over seeds; per metric the paired differences vhp - X."""
    summary: dict = {}
    for dataset in sorted({r["dataset"] for r in records}):
        rows: dict = {}
        for rec in (r for r in records if r["dataset"] == dataset):
            for key in METRICS:
                v = _number(rec.get(key))
                if v is not None:
                    rows.setdefault(rec["model"], {}).setdefault(key, []).append(v)
        cells = {model: {key: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                               "n": len(v)} for key, v in metrics.items()} for model, metrics in rows.items()}
        diffs = {key: {other: paired(records, dataset, key, BASE, other) for other in CONTROLS}
                 for key, (_, sign) in METRICS.items() if sign}
        attributed = {key: attribution(records, dataset, key) for key, (_, sign) in METRICS.items() if sign}
        checks = [r.get("ll_check_agrees") for r in records if r["dataset"] == dataset
                  and r.get("ll_check_agrees") is not None]
        summary[dataset] = {"rows": cells, "diffs": diffs, "attribution": attributed,
                            "ll_check_agrees": [int(sum(checks)), len(checks)]}
    return summary


def _cell(e: dict | None) -> str:
    return "–" if e is None else f"{e['mean']:.4g} ± {e['sd']:.2g}"


def _diff(e: dict | None, sign: int) -> str:
    if e is None:
        return "–"
    return f"{e['mean']:+.3g} ± {e['se']:.2g} ({e['favour']}/{e['pairs']})" + (" **win**" if wins(e, sign) else "")


def markdown(results: dict) -> str:
    """The claims section of BENCHMARKS.md, entirely from claims.json."""
    if results.get("format") != 2 or not results.get("runs"):
        return ("## The paper's claims over seeds (`bench/claims.py`)\n\n"
                "No run with the current metrics and controls is recorded yet: the claims.json before them "
                "(raw MF figures, no controls) is not shown, since its interpolation figures depend on the "
                "latent scale. `nice .venv/bin/python bench/claims.py --datasets cmu cmu09`, then `faces`, "
                "then `fashion_mnist`, fills this section data set by data set.")
    lines = ["## The paper's claims over seeds (`bench/claims.py`)", "",
             "Every row of a data set trains the same number of optimiser steps (batch 64) with params.yaml's "
             "defaults and is evaluated on the same test points. Cells: mean ± sd over seeds. Differences: "
             "vhp − row, paired by seed, ± standard error, (seeds in VHP's favour / pairs); **win** = in VHP's "
             "favour by more than 2 se. *Owed to*: the prior (vhp also wins against iwae after the same warm-up), "
             "the warm-up (it does not, and the warm-up alone lifts iwae), or neither. Latent figures are "
             "scale-free (README: Evaluation); raw MF figures are shown for context only.", ""]
    for dataset, run in results["runs"].items():
        s = results["summary"].get(dataset)
        if s is None:
            continue
        ll = run["evaluate"]
        lines += [f"### {dataset}", "",
                  f"{run['description']}. Budget: {run['steps']} steps a run, seeds {run['seeds']}, "
                  f"{run['train_rows'] or 'all'} training rows. Log-likelihood: {ll['ll_points']} test points, "
                  f"S = {ll['ll_samples']} importance samples, K_eval = {ll['ll_inner_samples']} (and "
                  f"{ll['ll_inner_samples_check']} on the same points: agree within 2 se in "
                  f"{s['ll_check_agrees'][0]} of {s['ll_check_agrees'][1]} hierarchical-prior runs). "
                  f"Wall time {run['seconds'] / 60:.1f} min{' (--quick)' if run['quick'] else ''}; load average "
                  f"before {run['load_before'][0]:.2f}, after {run['load_after'][0]:.2f}; {run['machine']}.", ""]
        models = [m for m in (BASE, *CONTROLS) if m in s["rows"]]
        others = [m for m in CONTROLS if m in s["rows"]]
        lines += ["| metric | better | " + " | ".join(models) + " | " + " | ".join(f"vhp − {m}" for m in others)
                  + " | owed to |", "|---|---|" + "---|" * (len(models) + len(others)) + "---|"]
        for key, (label, sign) in METRICS.items():
            if not any(key in s["rows"][m] for m in models):
                continue
            row = [label, {1: "higher", -1: "lower", 0: ""}[sign]] + [_cell(s["rows"][m].get(key)) for m in models]
            row += [_diff(s["diffs"].get(key, {}).get(m), sign) if sign else "" for m in others]
            row.append(s["attribution"].get(key, "") if sign else "")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
