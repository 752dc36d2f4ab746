"""The paper's claims, measured: vhp, iwae and vhp-iw with equal budgets over seeds on real data.

Engine: the project's own sweep (``pipelines.sweep.run_sweep``, a Prefect flow over
``train_one`` + ``evaluate_model``); this script only prepares the data, sets the
budgets and gathers the numbers. Every model of a data set trains the same number
of optimiser steps (batch 64) with the default params of params.yaml
(``kappa: auto``, REWO as its authors run it, learned Gaussian sigma), and is
evaluated with S = 5000 importance samples (K_eval = 16 inner samples for the
hierarchical prior) on a fixed subset of test points.

Data sets:
- cmu: the shared CMU set (140 trials, whole trials as split units, 30 fps);
- faces: Surrey Face Model renders (6 identities x 13 azimuths x 3 elevations x 3 lights);
- fashion_mnist: dynamically binarised Fashion-MNIST (Debian's dataset-fashion-mnist), a
  training subset (see BUDGETS) and the fixed binarised test set;
- embedded: the default data of `dvc repro` (the embedded CMU trial, 2-second segments).
On cmu two ablation rows are added: the earlier reading of REWO (variant earlier, nu 0.01,
tau 1) and vhp-geco.

Output: bench/results/claims.json and, with --markdown, the section printed for
BENCHMARKS.md: mean +- sd over seeds of every number, the paired vhp - iwae (and
vhp-iw - iwae) difference with its standard error, and the direction that counts as
better. The wall time of every run is recorded beside it (timing.json).

Run:   .venv/bin/python bench/claims.py            (the full budget)
       .venv/bin/python bench/claims.py --quick    (the path in a few minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "claims.json"

MODELS = ("vhp", "iwae", "vhp-iw")
# data set -> (optimiser steps per run, training rows used (0 = all), test points in the log-likelihood)
# Sized so that the whole run (42 trainings + 12 ablation trainings, each evaluated) fits about an
# hour on two cores: vhp-iw costs k_iw x k_inner = 160 prior evaluations per data point and step.
BUDGETS = {"cmu": (1000, 0, 100), "faces": (400, 0, 100), "fashion_mnist": (1000, 10000, 100),
           "embedded": (1000, 0, 100)}
QUICK = {"cmu": (150, 0, 40), "faces": (60, 0, 20), "fashion_mnist": (150, 2000, 40), "embedded": (100, 0, 40)}
SEEDS = (0, 1, 2)
# metric -> (label, +1 if higher is better else -1)
METRICS = {
    "test_log_likelihood": ("test log-likelihood (nats)", +1),
    "elbo": ("ELBO (nats)", +1),
    "knn_accuracy": ("kNN accuracy", +1),
    "trajectory_smoothness": ("trajectory smoothness", -1),
    "mf_fraction": ("MF fraction", -1),
    "interp_max_mf_graph": ("interpolation max-MF (graph path)", -1),
    "interp_length_ratio": ("interpolation length ratio", -1),
    "r2_azimuth": ("R² azimuth", +1),
    "r2_elevation": ("R² elevation", +1),
    "r2_light": ("R² light", +1),
    "prior_activation_step": ("prior-activation step", 0),
    "final_lambda": ("final λ", 0),
    "kappa_squared": ("κ² chosen", 0),
    "seconds": ("training wall time (s)", 0),
}


def shared() -> Path:
    env = os.environ.get("VHP_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def base_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def prepare(name: str, work: Path, quick: bool) -> Path:
    """data set -> its zarr group in work/data (prepared once, by the project's own `vhp prepare`)."""
    from pipelines.cli import main

    out = work / "data" / f"{name}.zarr"
    if out.exists():
        return out
    raw = base_params()
    if name == "cmu":
        raw["prepare_mocap"].update(source=str(shared() / "cmu"), fallback_asf="01/01.asf", segment_frames=0)
        args = ["prepare", "mocap"]
    elif name == "embedded":
        from preprocessing.embedded import fetch_embedded_mocap

        fetch_embedded_mocap(work / "raw" / "embedded")
        raw["prepare_mocap"].update(source=str(work / "raw" / "embedded"))
        args = ["prepare", "mocap"]
    elif name == "faces":
        sfm = shared() / "sfm"
        raw["prepare_faces"].update(source="sfm", model_path=str(sfm / "sfm_shape_3448.bin"),
                                    blendshapes_path=str(sfm / "expression_blendshapes_3448.bin"),
                                    n_identities=6, n_elevation=3, n_light=3)
        args = ["prepare", "faces"]
    else:
        args = ["prepare", "fashion_mnist"]
    work.mkdir(parents=True, exist_ok=True)
    params = work / f"params-prepare-{name}.yaml"
    params.write_text(yaml.safe_dump(raw))
    out.parent.mkdir(parents=True, exist_ok=True)
    code = main([*args, "--out", str(out), "--params", str(params), "--no-progress"])
    if code != 0:
        raise SystemExit(f"preparing {name} failed")
    return out


# Ablation rows: (data set, label, model, train.constraint overrides, other train overrides)
ABLATIONS = (
    ("cmu", "vhp (earlier REWO)", "vhp", {"variant": "earlier", "nu": 0.01, "tau": 1.0}, {}),
    ("cmu", "vhp-geco", "vhp-geco", {}, {}),
    ("cmu", "vhp (slack 0.1)", "vhp", {"auto_slack": 0.1}, {}),
    ("cmu", "vhp (slack 0.5)", "vhp", {"auto_slack": 0.5}, {}),
    ("faces", "vhp (σ = 1 fixed)", "vhp", {}, {"gaussian_std": 1.0}),
)


def train_params(name: str, n_train: int, steps: int, rows: int, constraint: dict | None = None,
                 overrides: dict | None = None):
    from pipelines.params import TrainParams, section

    raw = base_params()
    t = raw["train"]
    batches = math.ceil((min(n_train, rows) if rows else n_train) / t["batch_size"])
    t.update(datasets=[name], models=list(MODELS), epochs=max(1, math.ceil(steps / batches)),
             max_train_samples=rows, checkpoint_every=10**9, log_every=20)
    for table in ("kappa", "gaussian_std", "network"):
        t[table][name] = t[table].get("mocap" if name in ("cmu", "embedded") else name,
                                      next(iter(t[table].values())))
    if constraint:
        t["constraint"].update(constraint)
    for key, value in (overrides or {}).items():
        if isinstance(t[key], dict):
            t[key][name] = value
        else:
            t[key] = value
    return section(TrainParams, raw, "train")


def evaluate_params(points: int, quick: bool):
    from pipelines.params import EvaluateParams, section

    raw = base_params()
    raw["evaluate"].update(ll_samples=100 if quick else 5000, ll_inner_samples=16, ll_points=points,
                           grid_size=30 if quick else 60, graph_nodes=300 if quick else 1500,
                           interp_pairs=4 if quick else 10, mf_points=200 if quick else 1000,
                           max_train_points=2000 if quick else 10000)
    return section(EvaluateParams, raw, "evaluate")


def run_group(name: str, data: Path, models: tuple[str, ...], seeds: tuple[int, ...], budget, quick: bool,
              out: Path, constraint: dict | None = None, overrides: dict | None = None) -> list[dict]:
    """Train and evaluate every (model, seed) on one data set through the project's sweep."""
    from pipelines.params import BaseParams, SweepParams
    from pipelines.sweep import grid, run_sweep
    from preprocessing.store import open_dataset

    steps, rows, points = budget
    n_train = int(open_dataset(data).train.x.shape[0])
    train = train_params(name, n_train, steps, rows, constraint, overrides)
    sweep = SweepParams(datasets=(name,), kappa=("auto",), models=models, seeds=seeds, task_runner="local",
                        dask_address="", n_workers=1, out=str(out), epochs=0)
    run_sweep(sweep, train, evaluate_params(points, quick), BaseParams(seed=0, threads=0, device="cpu"),
              {name: data}, out)
    records = []
    for point in grid(sweep):
        folder = out / point.folder
        model = json.loads((folder / "model" / "metrics.json").read_text())
        evaluation = json.loads((folder / "eval" / "metrics.json").read_text())
        timing = json.loads((folder / "model" / "timing.json").read_text())
        rec = {"dataset": name, "model": point.model, "seed": point.seed, "steps": model["steps"],
               "seconds": timing["seconds"], "final_lambda": model["final_lambda"],
               "kappa_squared": model["kappa_squared"], "c_ae": model["c_ae"],
               "prior_activation_step": model["prior_activation_step"], "constraint_met": model["constraint_met"],
               "ll_samples": evaluation["ll_samples"], "ll_inner_samples": evaluation["ll_inner_samples"],
               "ll_n_points": evaluation["ll_n_points"]}
        rec.update({k: evaluation.get(k) for k in METRICS if k in evaluation})
        records.append(rec)
    return records


def summarise(records: list[dict]) -> dict:
    """mean +- sd over seeds per (data set, model, metric); paired differences against iwae."""
    out: dict = {}
    for rec in records:
        cell = out.setdefault(rec["dataset"], {}).setdefault(rec["model"], {})
        for key in METRICS:
            value = rec.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                cell.setdefault(key, []).append((rec["seed"], float(value)))
    summary: dict = {}
    for dataset, models in out.items():
        for model, metrics in models.items():
            for key, pairs in metrics.items():
                values = np.array([v for _, v in pairs])
                entry = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "n": len(values)}
                base = dict(models.get("iwae", {}).get(key, []))
                if model != "iwae" and base:
                    diffs = np.array([v - base[s] for s, v in pairs if s in base])
                    if len(diffs):
                        entry["diff_vs_iwae"] = float(diffs.mean())
                        entry["diff_se"] = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
                        entry["wins_vs_iwae"] = int(sum(np.sign(diffs) * METRICS[key][1] > 0))
                        entry["pairs"] = len(diffs)
                summary.setdefault(dataset, {}).setdefault(model, {})[key] = entry
    return summary


def markdown(results: dict) -> str:
    s = results["summary"]
    lines = [f"Budget (equal for every model of a data set): {results['budgets_text']}; seeds {results['seeds']}; "
             f"S = {results['ll_samples']}, K_eval = {results['ll_inner_samples']}. "
             f"Total wall time {results['seconds'] / 60:.1f} min on {results['machine']}.", ""]
    for dataset, models in s.items():
        lines += [f"**{dataset}**", "",
                  "| metric | better | " + " | ".join(models) + " | vhp − iwae (± se, wins) | vhp-iw − iwae (± se, wins) |",
                  "|---|---|" + "---|" * len(models) + "---|---|"]
        for key, (label, sign) in METRICS.items():
            if not any(key in m for m in models.values()):
                continue
            cells = []
            for model in models:
                e = models[model].get(key)
                cells.append("–" if e is None else f"{e['mean']:.4g} ± {e['sd']:.2g}")
            diffs = []
            for model in ("vhp", "vhp-iw"):
                e = models.get(model, {}).get(key)
                diffs.append("–" if e is None or "diff_vs_iwae" not in e else
                             f"{e['diff_vs_iwae']:+.3g} ± {e['diff_se']:.2g}"
                             + (f" ({e['wins_vs_iwae']}/{e['pairs']})" if sign else ""))
            better = {1: "higher", -1: "lower", 0: ""}[sign]
            lines.append(f"| {label} | {better} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred steps, one seed, S = 100")
    parser.add_argument("--datasets", nargs="*", default=list(BUDGETS), help="subset of %(default)s")
    parser.add_argument("--work", default="/tmp/vhp_bench_claims", help="data and run folders")
    parser.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md section of the results")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return 0
    work = Path(args.work) / ("quick" if args.quick else "full")
    budgets = QUICK if args.quick else BUDGETS
    seeds = (0,) if args.quick else SEEDS
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    records: list[dict] = []
    for name in args.datasets:
        data = prepare(name if name != "embedded" else "embedded", work, args.quick)
        print(f"== {name}: {budgets[name][0]} steps a run, seeds {seeds}", flush=True)
        records += run_group(name, data, MODELS, seeds, budgets[name], args.quick, work / "runs" / name)
        for i, (dataset, label, model, constraint, overrides) in enumerate(ABLATIONS):
            if dataset == name:
                records += [dict(r, model=label) for r in run_group(
                    name, data, (model,), seeds, budgets[name], args.quick, work / "runs" / f"{name}-ablation{i}",
                    constraint=constraint, overrides=overrides)]
    results = {
        "quick": args.quick, "seeds": list(seeds), "models": list(MODELS),
        "budgets": {k: dict(zip(("steps", "train_rows", "ll_points"), v)) for k, v in budgets.items()
                    if k in args.datasets},
        "budgets_text": ", ".join(f"{k} {v[0]} steps" for k, v in budgets.items() if k in args.datasets),
        "ll_samples": 100 if args.quick else 5000, "ll_inner_samples": 16,
        "records": records, "summary": summarise(records),
        "seconds": time.perf_counter() - t0, "load_before": load_before, "load_after": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads = cores",
    }
    target = RESULTS if not args.quick else RESULTS.with_name("claims_quick.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(markdown(results))
    print(f"wrote {target} in {results['seconds'] / 60:.1f} min (load average before {load_before}, "
          f"after {results['load_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
