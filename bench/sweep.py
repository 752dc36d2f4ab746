"""Wall time of one sweep on the local task runner vs a Dask LocalCluster of 2 worker processes.

The grid: mocap x {vhp, iwae} x kappa {0.2, 0.3} x seeds {0, 1} = 8 points, each a
short training (2 epochs over 6400 frames, batch 64: 200 steps, the default
network of params.yaml) and a reduced evaluation (see EVALUATE below). The data
are the shared CMU motion-capture set (../shared/data/cmu, or $VHP_DATA_DIR/cmu)
prepared with the default prepare_mocap params (fallback_asf 01/01.asf for
subject 90) into --work (/tmp by default).

Each runner runs the whole sweep in a fresh subprocess into its own folder; the
wall time covers the Prefect API start, the cluster start (Dask) and all points.
The local runner trains one point at a time with all cores (torch threads =
cores); the Dask runner trains two at a time, one process and one torch thread
each. The two result tables must agree (each point seeds itself), which is
checked and recorded. A last run repeats the Dask sweep into the same folder to
time a rerun where every point is finished and comes from Prefect's cache (only
while the project's dvc.lock records the train stage; otherwise every point trains
again, and the record says `"reuse": false`).

Run: .venv/bin/python bench/sweep.py   (writes bench/results/sweep.json and
/tmp/vhp_bench_sweep/{local,dask}/results.{csv,md,png})
The figures are printed and recorded, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from preprocessing.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sweep.json"

GRID = {"datasets": ["mocap"], "kappa": [0.2, 0.3], "models": ["vhp", "iwae"], "seeds": [0, 1]}
EPOCHS = 2
MAX_TRAIN_SAMPLES = 6400
EVALUATE = dict(ll_samples=64, ll_points=200, max_train_points=2000, grid_size=30, mf_points=200,
                graph_nodes=300, interp_pairs=4, line_steps=30)


def cmu_source() -> Path:
    env = os.environ.get("VHP_DATA_DIR")
    return (Path(env) if env else ROOT.parent / "shared" / "data") / "cmu"


def prepare_mocap(work: Path) -> Path:
    from pipelines.params_file import load_section
    from preprocessing.mocap import MocapParams, prepare

    path = work / "data" / "mocap.zarr"
    if not path.exists():
        prepare(load_section(MocapParams, "prepare_mocap", ROOT / "params.yaml", source=str(cmu_source()),
                             fallback_asf="01/01.asf", segment_frames=0), path, progress=False)
    return path


def child(runner: str, work: Path, out: Path) -> dict:
    """Run the sweep once in this process; returns the wall time and what ran."""
    from pipelines.params import BaseParams, EvaluateParams, SweepParams, TrainParams, read_yaml, section
    from pipelines.sweep.run import PROJECT_LOCK, run_sweep, train_code_key

    raw = read_yaml(ROOT / "params.yaml")
    train = dataclasses.replace(section(TrainParams, raw, "train"), max_train_samples=MAX_TRAIN_SAMPLES,
                                checkpoint_every=10**6)
    evaluate = dataclasses.replace(section(EvaluateParams, raw, "evaluate"), **EVALUATE)
    sweep = SweepParams(**GRID, task_runner=runner, dask_address="", n_workers=2, out=str(out), epochs=EPOCHS)
    base = BaseParams(seed=0, threads=0, device="cpu")
    t0 = time.perf_counter()
    rows = run_sweep(sweep, train, evaluate, base, {"mocap": work / "data" / "mocap.zarr"})
    return {
        "runner": runner,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "points": len(rows),
        "rows": len(rows),
        "sum_point_seconds": round(sum(r["seconds"] for r in rows), 1),
        # finished points are reused only while the project's dvc.lock records the train stage
        "reuse": train_code_key(PROJECT_LOCK) is not None,
    }


def table(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "status")} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/vhp_bench_sweep")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.child:
        print(json.dumps(child(args.child, work, Path(args.out))))
        return
    work.mkdir(parents=True, exist_ok=True)
    prepare_mocap(work)
    # A private Prefect home per bench run, outside the repository.
    env = {**os.environ, "PREFECT_HOME": str(work / ".prefect"), "PYTHONWARNINGS": "ignore"}
    runs = []
    for runner, out in (("local", work / "local"), ("dask", work / "dask"), ("dask", work / "dask")):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", runner, "--out", str(out), "--work", str(work)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{runner} sweep failed:\n{proc.stderr[-4000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_seconds"] = round(time.perf_counter() - start, 1)
        runs.append(row)
        print(f"{runner:>5}: {row['points']} points in {row['wall_seconds']} s (process {row['process_seconds']} s; "
              f"sum of point times {row['sum_point_seconds']} s; reuse of finished points "
              f"{'on' if row['reuse'] else 'off: no train stage in dvc.lock'})")
    identical = table(work / "local" / "results.csv") == table(work / "dask" / "results.csv")
    print(f"local and Dask results identical: {identical}")
    print((work / "dask" / "results.md").read_text())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "grid": GRID, "epochs": EPOCHS, "max_train_samples": MAX_TRAIN_SAMPLES, "evaluate": EVALUATE,
        "runs": {"local": runs[0], "dask_local_cluster_2_workers": runs[1], "dask_rerun_all_finished": runs[2]},
        "local_and_dask_results_identical": identical,
        "results_markdown": (work / "dask" / "results.md").read_text(),
    }, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
