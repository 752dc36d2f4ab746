"""The sweep: a grid of trainings (data set x model x kappa x seed) as one Prefect flow.

Each grid point is one training (``pipelines.train.fit``) and one evaluation
(``pipelines.evaluate.evaluate_model``) called as plain functions inside one
Prefect task, with its own folder::

    <out>/<dataset>/<model>/kappa=<kappa>/seed=<seed>/
        model/     model.pt, metrics.json, curves.tsv, curves.png, timing.json (as `vhp train`)
        eval/      metrics.json and figures (as `vhp evaluate`)
        point.json the point's recorded config and its summary numbers, written last

The flow's task runner comes from ``sweep.task_runner``: ``local`` runs the
points one after another on a ThreadPoolTaskRunner with one worker (the training
loop draws from torch's global RNG, so two points must not share a process at
the same time); ``dask`` runs them on a dask.distributed cluster through
prefect-dask's DaskTaskRunner: a LocalCluster of ``sweep.n_workers`` processes
with one thread each, or the scheduler at ``sweep.dask_address``. Every point
seeds itself, so a point gives the same numbers on either runner.

A rerun skips a point whose ``point.json`` exists and records the same config
(params, seed, data fingerprint); any other point is trained again, resuming
from its own checkpoint when an earlier run was interrupted. The results are
gathered into ``results.csv`` (one row a point), ``results.md`` (mean +- sd over
seeds) and ``results.png`` (test log-likelihood and kNN accuracy against kappa,
one line a model, error bars one sd over seeds).

Based on Prefect's task runners (prefect.task_runners, prefect_dask.DaskTaskRunner)
and dask.distributed; no scheduling of our own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

TASK_RUNNERS = ("local", "dask")
# Columns of results.csv, in order; the numbers come from the point's eval and model metrics.
RESULT_COLUMNS = (
    "dataset", "model", "kappa", "seed", "test_log_likelihood", "knn_accuracy", "elbo",
    "reconstruction", "active_units", "final_lambda", "final_c_hat", "constraint_met",
    "prior_active", "steps", "seconds", "status",
)


@dataclass(frozen=True)
class SweepParams:
    """The ``sweep:`` section of params.yaml: the grid and where it runs."""

    datasets: tuple[str, ...]
    kappa: tuple[float, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    task_runner: str = "local"     # local | dask
    dask_address: str = ""         # scheduler address (tcp://host:8786); empty = a LocalCluster
    n_workers: int = 2             # LocalCluster worker processes (one thread each)
    out: str = "sweeps/default"
    epochs: int = 0                # 0 = train.epochs

    def __post_init__(self) -> None:
        for name in ("datasets", "kappa", "models", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} must list at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {list(values)}")
        for k in self.kappa:
            if not k > 0:
                raise ValueError(f"kappa values must be > 0, got {k}")
        if self.task_runner not in TASK_RUNNERS:
            raise ValueError(f"task_runner must be local or dask, got {self.task_runner!r}")
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0 (0 = train.epochs), got {self.epochs}")
        if not self.out:
            raise ValueError("out must name a folder")


@dataclass(frozen=True)
class GridPoint:
    """One training + evaluation of the sweep."""

    dataset: str
    model: str
    kappa: float
    seed: int

    @property
    def folder(self) -> Path:
        """Relative folder of the point: <dataset>/<model>/kappa=<kappa>/seed=<seed>."""
        return Path(self.dataset) / self.model / f"kappa={self.kappa:g}" / f"seed={self.seed}"


def grid(sweep: SweepParams) -> list[GridPoint]:
    """Every point of the grid, in a fixed order (data set, model, kappa, seed)."""
    return [GridPoint(d, m, float(k), int(s))
            for d, m, k, s in itertools.product(sweep.datasets, sweep.models, sweep.kappa, sweep.seeds)]


# --------------------------------------------------------------------------- one point

def point_train_params(train: Any, sweep: SweepParams, point: GridPoint) -> Any:
    """The ``train`` params of one point: its data set, model and kappa (and the sweep's epochs)."""
    return dataclasses.replace(
        train,
        datasets=(point.dataset,),
        models=(point.model,),
        kappa={point.dataset: point.kappa},
        epochs=sweep.epochs or train.epochs,
    )


def point_config(point: GridPoint, train: Any, evaluate: Any, device: str, data_id: str) -> dict[str, Any]:
    """Everything that decides a point's numbers, as plain JSON (compared to skip finished points)."""
    config = {
        "point": dataclasses.asdict(point),
        "train": dataclasses.asdict(train),
        "evaluate": dataclasses.asdict(evaluate),
        "device": device,
        "data": data_id,
    }
    return json.loads(json.dumps(config, sort_keys=True, default=list))


def data_fingerprint(data_path: Path) -> str:
    """The data identity the trainer uses in its checkpoints (sources, params, schema)."""
    from pipelines.train import _data_id
    from preprocessing.store import open_dataset

    return _data_id(open_dataset(Path(data_path), check_values=False))


def read_finished(point_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded row of a finished point with this config, else None."""
    path = Path(point_dir) / "point.json"
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if recorded.get("config") != config or not isinstance(recorded.get("row"), dict):
        return None
    return recorded["row"]


def _summary_row(point: GridPoint, model_metrics: dict[str, Any], eval_metrics: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
    return {
        "dataset": point.dataset,
        "model": point.model,
        "kappa": point.kappa,
        "seed": point.seed,
        "test_log_likelihood": eval_metrics.get("test_log_likelihood"),
        "knn_accuracy": eval_metrics.get("knn_accuracy"),
        "elbo": eval_metrics.get("elbo"),
        "reconstruction": eval_metrics.get("reconstruction"),
        "active_units": eval_metrics.get("active_units"),
        "final_lambda": model_metrics.get("final_lambda"),
        "final_c_hat": model_metrics.get("final_c_hat"),
        "constraint_met": model_metrics.get("constraint_met"),
        "prior_active": model_metrics.get("prior_active"),
        "steps": model_metrics.get("steps"),
        "seconds": round(seconds, 2),
    }


def run_point(point: GridPoint, data_path: Path, point_dir: Path, train: Any, evaluate: Any,
              device_name: str, threads: int, config: dict[str, Any],
              progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one grid point into ``point_dir``; returns its results row.

    Plain function (no Prefect): the sweep's task calls it on whichever worker
    runs the point. ``point.json`` is written last, so a point interrupted
    anywhere before it counts as unfinished and is run again (the training
    resumes from ``point_dir/checkpoint.pt``).
    """
    from pipelines.checkpoint import atomic_write_json
    from pipelines.evaluate import evaluate_model
    from pipelines.train import (
        constraint_config,
        evaluate_elbo,
        fit,
        load_training_data,
        model_config,
        resolve_device,
        set_determinism,
        set_threads,
        write_outputs,
    )
    from preprocessing.store import open_dataset
    from vhp_core import build_model

    t0 = time.perf_counter()
    point_dir = Path(point_dir)
    point_dir.mkdir(parents=True, exist_ok=True)
    (point_dir / "point.json").unlink(missing_ok=True)
    set_threads(threads)
    device = resolve_device(device_name)
    dataset = open_dataset(Path(data_path))
    data = load_training_data(dataset, train)
    config_m = model_config(train, point.dataset, point.model, dataset.x_shape, dataset.likelihood)
    ccfg = constraint_config(train, point.dataset)
    set_determinism(point.seed)
    model = build_model(config_m)
    checkpoint = point_dir / "checkpoint.pt"
    result = fit(model, config_m, ccfg, data, train, point.seed, checkpoint, progress=progress, device=device)
    result.model.to("cpu")
    test_terms = evaluate_elbo(result.model, dataset, point.seed)
    model_metrics = write_outputs(result, config_m, ccfg, train, point.seed, point_dir / "model", test_terms,
                                  point.dataset)
    eval_metrics = evaluate_model(point_dir / "model", Path(data_path), point_dir / "eval", evaluate,
                                  progress=progress)
    checkpoint.unlink(missing_ok=True)
    row = _summary_row(point, model_metrics, eval_metrics, time.perf_counter() - t0)
    atomic_write_json(point_dir / "point.json", {"config": config, "row": row})
    return row


# --------------------------------------------------------------------------- gathering

def _mean_sd(values: list[float]) -> tuple[float, float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), sd


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of each (data set, model, kappa)."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"], float(row["kappa"])), []).append(row)
    out = []
    for (dataset, model, kappa), members in sorted(groups.items()):
        entry: dict[str, Any] = {"dataset": dataset, "model": model, "kappa": kappa, "n_seeds": len(members)}
        for key in ("test_log_likelihood", "knn_accuracy", "final_lambda", "final_c_hat"):
            entry[f"{key}_mean"], entry[f"{key}_sd"] = _mean_sd([m.get(key) for m in members])
        entry["constraint_met"] = sum(bool(m.get("constraint_met")) for m in members)
        out.append(entry)
    return out


def results_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RESULT_COLUMNS})
    return buffer.getvalue()


def _pm(mean: float, sd: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def results_markdown(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | model | κ | seeds | test log-likelihood | kNN accuracy | final λ | Ĉ | constraint met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['model']} | {s['kappa']:g} | {s['n_seeds']} "
            f"| {_pm(s['test_log_likelihood_mean'], s['test_log_likelihood_sd'], 2)} "
            f"| {_pm(s['knn_accuracy_mean'], s['knn_accuracy_sd'])} "
            f"| {_pm(s['final_lambda_mean'], s['final_lambda_sd'], 2)} "
            f"| {_pm(s['final_c_hat_mean'], s['final_c_hat_sd'], 4)} "
            f"| {s['constraint_met']}/{s['n_seeds']} |"
        )
    return "\n".join(lines) + "\n"


def results_figure(summary: list[dict[str, Any]], path: Path) -> Path:
    """Test log-likelihood and kNN accuracy against kappa, one line a model, +-1 sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.4 * len(datasets)), squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, (key, label) in enumerate((("test_log_likelihood", "test log-likelihood"),
                                          ("knn_accuracy", "kNN accuracy"))):
            ax = axes[r][c]
            for model in sorted({s["model"] for s in summary if s["dataset"] == dataset}):
                cells = sorted((s for s in summary if s["dataset"] == dataset and s["model"] == model),
                               key=lambda s: s["kappa"])
                kappas = [s["kappa"] for s in cells]
                ax.errorbar(kappas, [s[f"{key}_mean"] for s in cells], yerr=[s[f"{key}_sd"] for s in cells],
                            marker="o", capsize=3, label=model)
            ax.set_xlabel("κ")
            ax.set_ylabel(label)
            ax.set_title(f"{dataset}: {label}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("sweep: mean ± sd over seeds")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_results(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """results.csv, results.md and results.png in ``out``."""
    from pipelines.checkpoint import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["dataset"], r["model"], float(r["kappa"]), int(r["seed"])))
    summary = aggregate(rows)
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "results.md", results_markdown(summary))
    results_figure(summary, out / "results.png")
    return {"csv": out / "results.csv", "markdown": out / "results.md", "figure": out / "results.png"}


# --------------------------------------------------------------------------- Prefect

@contextlib.contextmanager
def prefect_api_for_workers() -> Iterator[str]:
    """One Prefect API for the flow and every Dask worker it starts.

    Without a configured API each worker process would start an ephemeral
    Prefect server of its own (tens of seconds each, and all on one database).
    Here the ephemeral server of this process is started first (the same
    singleton Prefect's client uses) and its URL is exported, so that worker
    processes spawned by the LocalCluster inherit it. A configured
    PREFECT_API_URL (a real server, or the test harness's) is exported as it is.
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # stopped at exit, as Prefect's own ephemeral server is
        server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
        url = server.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def build_task_runner(sweep: SweepParams) -> Any:
    """The task runner named by ``sweep.task_runner``."""
    if sweep.task_runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:  # the optional `scale` extra
        raise SweepError("sweep.task_runner is 'dask' but prefect-dask is not installed: "
                         "pip install 'vhp[scale]'") from err
    if sweep.dask_address:
        return DaskTaskRunner(address=sweep.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": sweep.n_workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None},
    )


class SweepError(RuntimeError):
    """The sweep cannot start (a missing data set, a missing extra); reported as a user error."""


def _build_flow():
    from prefect import flow, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.cache_policies import NONE

    @task(name="train-and-evaluate", cache_policy=NONE)
    def point_task(point: GridPoint, data_path: str, point_dir: str, train: Any, evaluate: Any,
                   device: str, threads: int, config: dict[str, Any]) -> dict[str, Any]:
        row = run_point(point, Path(data_path), Path(point_dir), train, evaluate, device, threads, config)
        return {**row, "status": "trained"}

    @task(name="gather-results", cache_policy=NONE)
    def gather(rows: list[dict[str, Any]], out: str) -> dict[str, str]:
        return {k: str(v) for k, v in write_results(rows, Path(out)).items()}

    @flow(name="sweep", log_prints=True)
    def sweep_flow(plan: list[dict[str, Any]], out: str, train_by_point: list[Any], evaluate: Any,
                   device: str, threads: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any] | None] = []
        futures = []
        for i, item in enumerate(plan):
            if item["finished"] is not None:
                rows.append({**item["finished"], "status": "skipped"})
                continue
            rows.append(None)
            futures.append((i, point_task.with_options(name=f"point-{item['label']}").submit(
                item["point"], item["data_path"], item["point_dir"], train_by_point[i], evaluate,
                device, threads, item["config"])))
        print(f"{len(plan)} points: {len(futures)} to run, {len(plan) - len(futures)} already finished")
        failures = []
        for i, future in futures:
            try:
                rows[i] = future.result()
            except Exception as err:  # noqa: BLE001 - one failed point must not hide the others' results
                failures.append(f"{plan[i]['label']}: {type(err).__name__}: {err}")
        done = [r for r in rows if r is not None]
        if done:
            paths = gather(done, out)
            create_markdown_artifact(key="sweep-results", markdown=Path(paths["markdown"]).read_text(),
                                     description=f"sweep results in {out}")
        if failures:
            raise SweepError(f"{len(failures)} of {len(plan)} points failed (the others are recorded; a rerun "
                             "retries only the failed ones):\n" + "\n".join(failures))
        return done

    return sweep_flow


@functools.cache
def sweep_flow():
    """The Prefect ``sweep`` flow (built on first use so that importing is cheap)."""
    return _build_flow()


def plan_sweep(sweep: SweepParams, train: Any, evaluate: Any, device: str,
               data_paths: dict[str, Path], out: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every grid point with its folder, its config and its recorded row when finished."""
    fingerprints = {}
    for dataset in sweep.datasets:
        path = Path(data_paths[dataset])
        if not path.exists():
            raise SweepError(f"{path}: data set {dataset!r} not found (run `vhp prepare` or `dvc repro` first)")
        fingerprints[dataset] = data_fingerprint(path)
    plan, trains = [], []
    for point in grid(sweep):
        train_p = point_train_params(train, sweep, point)
        config = point_config(point, train_p, evaluate, device, fingerprints[point.dataset])
        point_dir = Path(out) / point.folder
        plan.append({
            "point": point,
            "label": f"{point.dataset}-{point.model}-k{point.kappa:g}-s{point.seed}",
            "data_path": str(data_paths[point.dataset]),
            "point_dir": str(point_dir),
            "config": config,
            "finished": read_finished(point_dir, config),
        })
        trains.append(train_p)
    return plan, trains


def run_sweep(sweep: SweepParams, train: Any, evaluate: Any, base: Any, data_paths: dict[str, Path],
              out: Path | None = None) -> list[dict[str, Any]]:
    """Run (or finish) the sweep and write its results; returns one row a point."""
    out = Path(out if out is not None else sweep.out)
    plan, trains = plan_sweep(sweep, train, evaluate, base.device, data_paths, out)
    # Dask workers run one task a process: one torch thread each unless base.threads says otherwise.
    threads = base.threads or (1 if sweep.task_runner == "dask" else 0)
    flow = sweep_flow().with_options(task_runner=build_task_runner(sweep))
    runner_ctx = prefect_api_for_workers() if sweep.task_runner == "dask" else contextlib.nullcontext()
    with runner_ctx:
        return flow(plan, str(out), trains, evaluate, base.device, threads)


# --------------------------------------------------------------------------- CLI

def add_sweep_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep", help="train and evaluate a grid of data sets x models x kappa x seeds",
        description="Run the Prefect `sweep` flow over the grid of the params section `sweep:` "
                    "(datasets x models x kappa x seeds). Each point is one training and one "
                    "evaluation in <out>/<dataset>/<model>/kappa=<k>/seed=<s>; finished points are "
                    "skipped. The task runner is sweep.task_runner: local (one point at a time) or "
                    "dask (a LocalCluster of sweep.n_workers processes, or the scheduler at "
                    "sweep.dask_address). Writes results.csv, results.md and results.png in <out>.")
    p.add_argument("--data-dir", default="data/processed",
                   help="folder of <dataset>.zarr groups (default: %(default)s)")
    p.add_argument("--out", default=None, help="sweep folder (default: sweep.out)")
    p.add_argument("--dry-run", action="store_true", help="list the points and whether each is finished")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.set_defaults(func=func)
    return p


def run_sweep_cli(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvaluateParams
    from pipelines.params import read_yaml, section
    from pipelines.train import BaseParams, TrainParams

    raw = read_yaml(args.params)
    sweep = section(SweepParams, raw, "sweep", args.params)
    base = section(BaseParams, raw, "base", args.params)
    # The sweep's data sets need no kappa in train.kappa: each point sets its own.
    train_raw = dict(raw.get("train") or {})
    train_raw["kappa"] = {**(train_raw.get("kappa") or {}), **{d: sweep.kappa[0] for d in sweep.datasets}}
    train = section(TrainParams, {"train": train_raw}, "train", args.params)
    evaluate = section(EvaluateParams, raw, "evaluate", args.params)
    out = Path(args.out or sweep.out)
    data_paths = {d: Path(args.data_dir) / f"{d}.zarr" for d in sweep.datasets}
    if args.dry_run:
        try:
            plan, _ = plan_sweep(sweep, train, evaluate, base.device, data_paths, out)
        except SweepError as err:
            print(f"vhp sweep: error: {err}", file=sys.stderr)
            return 2
        for item in plan:
            print(f"{'finished' if item['finished'] else 'to run  '}  {item['point_dir']}")
        return 0
    t0 = time.perf_counter()
    try:
        rows = run_sweep(sweep, train, evaluate, base, data_paths, out)
    except SweepError as err:
        print(f"vhp sweep: error: {err}", file=sys.stderr)
        return 2
    ran = sum(r.get("status") == "trained" for r in rows)
    print(f"sweep of {len(rows)} points ({ran} trained, {len(rows) - ran} skipped) in "
          f"{time.perf_counter() - t0:.1f} s: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.png'}")
    print((out / "results.md").read_text())
    return 0


__all__ = [
    "GridPoint",
    "SweepError",
    "SweepParams",
    "add_sweep_parser",
    "aggregate",
    "build_task_runner",
    "grid",
    "plan_sweep",
    "read_finished",
    "run_point",
    "run_sweep",
    "run_sweep_cli",
    "sweep_flow",
    "write_results",
]
