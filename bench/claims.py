"""The paper's claims, measured: vhp against iwae and the controls, equal steps, over seeds, on real data.

Engine: the project's own sweep (``pipelines.sweep.run.run_sweep``, a Prefect flow over
``train_one`` + ``evaluate_model``); this script prepares the data, sets the budgets and
gathers the numbers. Rows (bench/_claims_summary.py says what each win is owed to):
vhp, iwae, iwae (warm-up) [train.constraint.variant: warmup], vhp (no warm-up)
[variant: elbo, lambda = 1 and the prior learning from step 1] and vhp-iw. Every row of a
data set trains the same number of optimiser steps (batch 64) with params.yaml's defaults
(``kappa: auto``) and is evaluated on the same test points with the same S and K_eval (and
the hierarchical prior's LL again at K_eval = 128 on the same points).

Data sets (each run on its own and merged into the JSON, so a run can be committed data set
by data set):
- cmu: the shared CMU set without subject 09 (whole trials as split units, 30 fps);
- cmu09: CMU subject 09 alone (runs and a long walk), kept out of every choice of defaults:
  the check a user makes on their own data;
- faces: Surrey Face Model renders (6 identities x 13 azimuths x 3 elevations x 3 lights);
- fashion_mnist: dynamically binarised Fashion-MNIST (Debian's dataset-fashion-mnist), a
  training subset and the fixed binarised test set.

Output: bench/results/claims.json (claims_quick.json with --quick), the claims section of
BENCHMARKS.md (full runs), and the markdown on stdout.

Run:   nice .venv/bin/python bench/claims.py --datasets cmu cmu09   (full budget; then faces, ...)
       nice .venv/bin/python bench/claims.py --quick --datasets cmu09  (the path in a minute or two)
       .venv/bin/python bench/claims.py --markdown                    (BENCHMARKS.md from the JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _benchmarks_md import render_section  # noqa: E402
from _claims_setting import (BUDGETS, DESCRIPTIONS, HELD_OUT_SUBJECT, QUICK, ROWS, SEEDS, base_params,  # noqa: E402
                             evaluate_overrides, evaluate_params, read_params, row_folder, row_sweep,
                             train_overrides, train_params)
from _claims_summary import METRICS, markdown, summarise  # noqa: E402
from _machine import cores_line  # noqa: E402
from _params import PARAMS, apply_overrides, describe  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "claims.json"
NOTE = "(rendered by bench/claims.py from bench/results/claims.json)"
# Columns kept from the evaluation's and the training's metrics.json beside METRICS.
EXTRA = ("ll_samples", "ll_inner_samples", "ll_inner_samples_check", "ll_n_points", "ll_check_agrees",
         "test_log_likelihood_stderr", "test_log_likelihood_check", "ll_check_diff_stderr", "elbo")


def shared() -> Path:
    env = os.environ.get("VHP_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def cmu_subjects(source: Path) -> list[str]:
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.amc")))


def prepare(name: str, work: Path) -> Path:
    """data set -> its zarr group in work/data (prepared once, by the project's own `vhp prepare`)."""
    from pipelines.cli import main

    out = work / "data" / f"{name}.zarr"
    if out.exists():
        return out
    if name in ("cmu", "cmu09"):
        source = shared() / "cmu"
        subjects = [HELD_OUT_SUBJECT] if name == "cmu09" else [s for s in cmu_subjects(source)
                                                                if s != HELD_OUT_SUBJECT]
        stage, changes = "prepare_mocap", dict(source=str(source), fallback_asf="01/01.asf", segment_frames=0,
                                               subjects=subjects)
    elif name == "faces":
        sfm = shared() / "sfm"
        stage, changes = "prepare_faces", dict(source="sfm", model_path=str(sfm / "sfm_shape_3448.bin"),
                                               blendshapes_path=str(sfm / "expression_blendshapes_3448.bin"),
                                               n_identities=6, n_elevation=3, n_light=3)
    elif name == "fashion_mnist":
        stage, changes = "prepare_fashion_mnist", {}
    else:
        raise SystemExit(f"unknown data set {name!r}; choose from {sorted(BUDGETS)}")
    args = ["prepare", stage.removeprefix("prepare_")]
    print(f"preparing {name}: {stage} of {describe(changes)}", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    params = work / f"params-prepare-{name}.yaml"
    atomic_write_text(params, yaml.safe_dump(apply_overrides(read_params(), stage, changes, PARAMS)))
    out.parent.mkdir(parents=True, exist_ok=True)
    if main([*args, "--out", str(out), "--params", str(params), "--no-progress"]) != 0:
        raise SystemExit(f"preparing {name} failed")
    return out


def run_row(name: str, label: str, data: Path, seeds: tuple[int, ...], budget: tuple[int, int, int], quick: bool,
            out: Path) -> list[dict]:
    """Train and evaluate one row (model + constraint overrides) on one data set, every seed, through the sweep."""
    from pipelines.sweep.run import run_sweep

    _, constraint = ROWS[label]
    steps, rows, points = budget
    n_train = n_train_of(data)
    sweep = row_sweep(name, label, seeds, out)
    print(f"   {label}: {describe(train_overrides(name, n_train, steps, rows, constraint))}", flush=True)
    run_sweep(sweep, train_params(name, n_train, steps, rows, constraint), evaluate_params(points, quick),
              base_params(), {name: data}, out)
    return read_records(name, label, sweep, out)


def n_train_of(data: Path) -> int:
    from preprocessing.store import open_dataset

    return int(open_dataset(data).train.x.shape[0])


def read_records(name: str, label: str, sweep, out: Path) -> list[dict]:
    """One record per seed of a finished row, from its training's and evaluation's metrics.json."""
    from pipelines.sweep.run import grid

    records = []
    for point in grid(sweep):
        folder = out / point.folder
        trained = json.loads((folder / "model" / "metrics.json").read_text())
        evaluation = json.loads((folder / "eval" / "metrics.json").read_text())
        rec = {"dataset": name, "model": label, "seed": point.seed, "steps": trained["steps"],
               "seconds": json.loads((folder / "model" / "timing.json").read_text())["seconds"],
               "eval_seconds": json.loads((folder / "eval" / "timing.json").read_text())["seconds"],
               **{k: trained.get(k) for k in ("final_lambda", "kappa_squared", "c_ae", "prior_activation_step",
                                              "constraint_met", "lambda_max", "lambda_max_step", "lambda_updates",
                                              "lambda_violated_share", "rewo_note")},
               "sigma": (trained.get("sigma") or {}).get("sigma")}
        rec.update({k: evaluation.get(k) for k in (*METRICS, *EXTRA) if k in evaluation})
        records.append(rec)
    return records


def load(target: Path) -> dict:
    """The results so far (format 2), or an empty record set."""
    if target.exists():
        old = json.loads(target.read_text())
        if old.get("format") == 2:
            return old
    return {"format": 2, "runs": {}, "records": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help=f"default {SEEDS} (--quick: 0)")
    parser.add_argument("--quick", action="store_true", help="a hundred steps, few points and samples")
    parser.add_argument("--work", default="/tmp/vhp_bench_claims", help="data and run folders")
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/claims[_quick].json)")
    parser.add_argument("--markdown", action="store_true", help="only render BENCHMARKS.md's claims section")
    parser.add_argument("--reread", action="store_true",
                        help="rebuild the records of --datasets from their finished run folders (no training; "
                             "each data set's budget, wall time and load stay those of its run)")
    args = parser.parse_args(argv)
    if args.reread:
        return reread(args)
    if args.markdown:
        render_section("claims", markdown(load(RESULTS)), note=NOTE)
        print(markdown(load(RESULTS)))
        return 0
    target = Path(args.out) if args.out else RESULTS.with_name("claims_quick.json" if args.quick else "claims.json")
    work = Path(args.work) / ("quick" if args.quick else "full")
    budgets = QUICK if args.quick else BUDGETS
    seeds = tuple(args.seeds) if args.seeds else ((0,) if args.quick else SEEDS)
    results = load(target)
    for name in args.datasets:
        load_before, t0 = os.getloadavg(), time.perf_counter()
        data = prepare(name, work)
        print(f"== {name}: {budgets[name][0]} steps a run, seeds {seeds}, rows {args.rows}", flush=True)
        records = []
        for label in args.rows:
            records += run_row(name, label, data, seeds, budgets[name], args.quick, row_folder(work, name, label))
        ev = evaluate_params(budgets[name][2], args.quick)
        results["records"] = [r for r in results["records"] if r["dataset"] != name] + records
        results["runs"][name] = {
            "description": DESCRIPTIONS[name], "quick": args.quick, "seeds": list(seeds), "rows": args.rows,
            "steps": budgets[name][0], "train_rows": budgets[name][1],
            "evaluate": {k: getattr(ev, k) for k in ("ll_points", "ll_samples", "ll_inner_samples",
                                                       "ll_inner_samples_check", "graph_nodes", "interp_pairs")},
            "seconds": time.perf_counter() - t0, "load_before": load_before, "load_after": os.getloadavg(),
            "machine": f"{cores_line()}, torch threads = {base_params().threads or 'cores'}",
            "overrides": {"evaluate": evaluate_overrides(budgets[name][2], args.quick),
                          "train": {label: train_overrides(name, n_train_of(data), budgets[name][0],
                                                           budgets[name][1], ROWS[label][1])
                                    for label in args.rows}},
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        results["summary"] = summarise(results["records"])
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(results, indent=1, default=str) + "\n")  # after every data set: resumable
        print(f"{name}: {results['runs'][name]['seconds'] / 60:.1f} min, load average before {load_before}, "
              f"after {results['runs'][name]['load_after']}", flush=True)
    if target == RESULTS:
        render_section("claims", markdown(results), note=NOTE)
    print(markdown(results))
    print(f"wrote {target}")
    return 0


def reread(args: argparse.Namespace) -> int:
    """Records of finished runs read again from their folders (after a new column is added to the records)."""
    target = Path(args.out) if args.out else RESULTS.with_name("claims_quick.json" if args.quick else "claims.json")
    work = Path(args.work) / ("quick" if args.quick else "full")
    results = load(target)
    for name in args.datasets:
        run = results["runs"].get(name)
        if run is None:
            raise SystemExit(f"{target}: no run of {name} to read again")
        records = [rec for label in run["rows"]
                   for rec in read_records(name, label, row_sweep(name, label, tuple(run["seeds"]),
                                                                  row_folder(work, name, label)),
                                           row_folder(work, name, label))]
        results["records"] = [r for r in results["records"] if r["dataset"] != name] + records
    results["summary"] = summarise(results["records"])
    atomic_write_text(target, json.dumps(results, indent=1, default=str) + "\n")
    if target == RESULTS:
        render_section("claims", markdown(results), note=NOTE)
    print(f"read {', '.join(args.datasets)} again into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
