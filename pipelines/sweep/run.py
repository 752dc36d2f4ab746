"""The sweep: a grid of trainings (data set x model x kappa x seed) as one Prefect flow.

Each grid point is one training (``pipelines.train.flow.train_one``, the recipe every
trainer uses) and one evaluation (``pipelines.evaluate.stage.evaluate_model``) inside
one Prefect task, with its own folder::

    <out>/<dataset>/<model>/kappa=<kappa>/seed=<seed>/
        model/     model.pt, metrics.json, curves.tsv, curves.png, timing.json (as `vhp train`)
        eval/      metrics.json and figures (as `vhp evaluate`)

The flow's task runner comes from ``sweep.task_runner``: ``local`` runs the
points one after another on a ThreadPoolTaskRunner with one worker (the training
loop draws from torch's global RNG, so two points must not share a process at
the same time); ``dask`` runs them on a dask.distributed cluster through
prefect-dask's DaskTaskRunner: a LocalCluster of ``sweep.n_workers`` processes
with one thread each, or the scheduler at ``sweep.dask_address``. Every point
seeds itself, so a point gives the same numbers on either runner.

Reuse of finished points is Prefect's own task caching: the point task's cache
policy covers its inputs (the point, its train and evaluate params, the device,
the data's fingerprint and what ``dvc.lock`` records of the train stage's code
dependencies) and the task's source, and its result (the point's row) is persisted
under ``<out>/.prefect``. Whether the code changed is DVC's answer, not a hash of
our own: the key follows ``dvc.lock`` as the last ``dvc repro`` (or ``dvc commit``)
of the train stage left it. Without a ``dvc.lock`` that records the train stage,
no point is reused (one line says so). A rerun with nothing changed returns every
row from the cache; a point whose inputs changed is trained again, resuming from
its own checkpoint when an earlier run was interrupted. The results are
gathered into ``results.csv`` (one row a point), ``results.md`` (mean +- sd over
seeds) and ``results.png`` (test log-likelihood and kNN accuracy against kappa,
one line a model, error bars one sd over seeds).

Based on Prefect's task runners (prefect.task_runners, prefect_dask.DaskTaskRunner)
and dask.distributed; no scheduling of our own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, NONE, TASK_SOURCE

from pipelines.errors import SweepError
from pipelines.params import EvaluateParams, ParamsError, SweepParams, TrainParams
from pipelines.sweep.results import aggregate, results_markdown, write_results  # noqa: F401

TRAIN_STAGE = "train"  # dvc.yaml's stage (a matrix: train@<dataset>-<model>) that a point repeats
PROJECT_LOCK = Path(__file__).resolve().parents[2] / "dvc.lock"  # the lock of the project this code is in


@dataclass(frozen=True)
class GridPoint:
    """One training + evaluation of the sweep."""

    dataset: str
    model: str
    kappa: float | str
    seed: int

    @property
    def folder(self) -> Path:
        """Relative folder of the point: <dataset>/<model>/kappa=<kappa>/seed=<seed>."""
        kappa = self.kappa if isinstance(self.kappa, str) else f"{self.kappa:g}"
        return Path(self.dataset) / self.model / f"kappa={kappa}" / f"seed={self.seed}"

    @property
    def label(self) -> str:
        kappa = self.kappa if isinstance(self.kappa, str) else f"{self.kappa:g}"
        return f"{self.dataset}-{self.model}-k{kappa}-s{self.seed}"


def grid(sweep: SweepParams) -> list[GridPoint]:
    """Every point of the grid, in a fixed order (data set, model, kappa, seed)."""
    return [GridPoint(d, m, k, int(s))
            for d, m, k, s in itertools.product(sweep.datasets, sweep.models, sweep.kappa, sweep.seeds)]


# --------------------------------------------------------------------------- one point

def point_train_params(train: TrainParams, sweep: SweepParams, point: GridPoint) -> TrainParams:
    """The ``train`` params of one point: its data set, model and kappa (and the sweep's epochs)."""
    return dataclasses.replace(
        train,
        datasets=(point.dataset,),
        models=(point.model,),
        kappa={**train.kappa, point.dataset: point.kappa},
        epochs=train.epochs if sweep.epochs is None else sweep.epochs,
    )


def data_fingerprint(data_path: Path) -> str:
    """The data identity the trainer uses in its checkpoints (sources, params, schema)."""
    from pipelines.train.data import data_id_of
    from preprocessing.store import open_dataset

    return data_id_of(open_dataset(Path(data_path), check_values=False))


def train_code_key(lock: Path) -> str | None:
    """What ``lock`` (a dvc.lock) records of the train stage's code dependencies, as one key.

    The hashes DVC stored for every dependency of every ``train`` / ``train@...`` entry,
    except the data under ``data/`` (a point keys its data by the data's own
    fingerprint); the params are the point's records, also inputs of the key. None when
    the file is absent or records no train stage.
    """
    import yaml

    if not Path(lock).is_file():
        return None
    stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages") or {}
    deps = sorted({json.dumps(dep, sort_keys=True)
                   for name, stage in stages.items() if name == TRAIN_STAGE or name.startswith(f"{TRAIN_STAGE}@")
                   for dep in stage.get("deps") or []
                   if not str(dep.get("path", "")).startswith("data/")})
    if not deps:
        return None
    return hashlib.sha256("\n".join(deps).encode()).hexdigest()[:16]


def _summary_row(point: GridPoint, model_metrics: dict[str, Any], eval_metrics: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
    row = {"dataset": point.dataset, "model": point.model, "kappa": point.kappa, "seed": point.seed}
    for key in ("test_log_likelihood", "knn_accuracy", "elbo", "reconstruction", "active_units"):
        row[key] = eval_metrics.get(key)
    for key in ("final_lambda", "final_c_hat", "kappa_squared", "constraint_met", "prior_active",
                "prior_activation_step", "steps"):
        row[key] = model_metrics.get(key)
    row["seconds"] = round(seconds, 2)
    return row


def run_point(point: GridPoint, data_path: Path, point_dir: Path, train: TrainParams, evaluate: Any,
              device: str, threads: int, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one grid point into ``point_dir``; returns its results row.

    Plain function (no Prefect): the sweep's task calls it on whichever worker runs
    the point. An interrupted point resumes from ``point_dir/checkpoint.pt``.
    """
    from pipelines.evaluate.stage import evaluate_model
    from pipelines.runtime import set_threads
    from pipelines.train.flow import train_one

    t0 = time.perf_counter()
    point_dir = Path(point_dir)
    point_dir.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    checkpoint = point_dir / "checkpoint.pt"
    _, model_metrics = train_one(point.dataset, point.model, Path(data_path), point_dir / "model", checkpoint,
                                 train, point.seed, device, progress)
    assert model_metrics is not None
    eval_metrics = evaluate_model(point_dir / "model", Path(data_path), point_dir / "eval", evaluate,
                                  progress=progress)
    checkpoint.unlink(missing_ok=True)
    return _summary_row(point, model_metrics, eval_metrics, time.perf_counter() - t0)


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


@task(name="train-and-evaluate", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def point_task(point: GridPoint, data_path: str, point_dir: str, train: TrainParams, evaluate: EvaluateParams,
               device: str, threads: int, data_id: str, code_key: str | None) -> dict[str, Any]:
    """One grid point; ``data_id`` and ``code_key`` are inputs only so that the cache key covers them."""
    return run_point(point, Path(data_path), Path(point_dir), train, evaluate, device, threads)


@task(name="gather-results", cache_policy=NONE)
def gather_task(rows: list[dict[str, Any]], out: str) -> dict[str, str]:
    paths = {k: str(v) for k, v in write_results(rows, Path(out)).items()}
    create_markdown_artifact(key="sweep-results", markdown=Path(paths["markdown"]).read_text(),
                             description=f"sweep results in {out}")
    return paths


@flow(name="sweep", log_prints=True)
def sweep_flow(plan: list[dict[str, Any]], out: str, evaluate: EvaluateParams, device: str,
               threads: int, code_key: str | None) -> list[dict[str, Any]]:
    # the cache records live beside the sweep, where every worker (Dask processes too) looks them up;
    # without DVC's record of the code there is nothing to key reuse on: every point runs
    policy = NONE if code_key is None else (INPUTS + TASK_SOURCE).configure(
        key_storage=str(Path(out) / ".prefect" / "cache-keys"))
    futures = [point_task.with_options(name=f"point-{item['point'].label}", cache_policy=policy).submit(
        item["point"], item["data_path"], item["point_dir"], item["train"], evaluate, device, threads,
        item["data_id"], code_key) for item in plan]
    rows, failures = [], []
    for item, future in zip(plan, futures):
        try:
            rows.append(future.result())
        except Exception as err:  # noqa: BLE001 - one failed point must not hide the others' results
            failures.append(f"{item['point'].label}: {type(err).__name__}: {err}")
    if rows:
        gather_task(rows, out)
    if failures:
        raise SweepError(f"{len(failures)} of {len(plan)} points failed (the others are recorded; a rerun "
                         "retries only the failed ones):\n" + "\n".join(failures))
    return rows


def plan_sweep(sweep: SweepParams, train: TrainParams, data_paths: dict[str, Path],
               out: Path) -> list[dict[str, Any]]:
    """Every grid point with its folder, its train params and its data's fingerprint."""
    fingerprints = {}
    for dataset in sweep.datasets:
        path = Path(data_paths[dataset])
        if not path.exists():
            raise SweepError(f"{path}: data set {dataset!r} not found (run `vhp prepare` or `dvc repro` first)")
        fingerprints[dataset] = data_fingerprint(path)
    return [{"point": point, "data_path": str(data_paths[point.dataset]),
             "point_dir": str(Path(out) / point.folder), "train": point_train_params(train, sweep, point),
             "data_id": fingerprints[point.dataset]}
            for point in grid(sweep)]


def run_sweep(sweep: SweepParams, train: TrainParams, evaluate: EvaluateParams, base: Any,
              data_paths: dict[str, Path], out: Path | None = None,
              lock: Path | None = None) -> list[dict[str, Any]]:
    """Run (or finish) the sweep and write its results; returns one row a point.

    ``lock`` is the project's dvc.lock (default: the one beside this code): finished points
    are reused only while what it records of the train stage's code is unchanged
    (``train_code_key``), and not at all without it.
    """
    from prefect.filesystems import LocalFileSystem

    out = Path(out if out is not None else sweep.out).resolve()
    plan = plan_sweep(sweep, train, data_paths, out)
    lock = Path(lock) if lock is not None else PROJECT_LOCK
    code_key = train_code_key(lock)
    if code_key is None:
        print(f"sweep: {lock} records no {TRAIN_STAGE!r} stage (run `dvc repro {TRAIN_STAGE}` once): "
              "every point is trained, none reused", file=sys.stderr)
    # Dask workers run one task a process: one torch thread each unless base.threads says otherwise.
    threads = base.threads or (1 if sweep.task_runner == "dask" else 0)
    runner_ctx = prefect_api_for_workers() if sweep.task_runner == "dask" else contextlib.nullcontext()
    with runner_ctx:
        # tasks persist their rows (and cache keys) with the flow's result storage, beside the sweep;
        # Prefect wants the storage block saved server-side so that every worker resolves it
        storage = LocalFileSystem(basepath=str(out / ".prefect"))
        block = f"vhp-sweep-{hashlib.sha256(str(out).encode()).hexdigest()[:12]}"
        storage.save(block, overwrite=True)
        run = sweep_flow.with_options(task_runner=build_task_runner(sweep),
                                      result_storage=f"local-file-system/{block}")
        return run(plan, str(out), evaluate, base.device, threads, code_key)


# --------------------------------------------------------------------------- CLI

def sweep_train_params(raw: dict[str, Any], sweep: SweepParams, path: Path | str) -> TrainParams:
    """The ``train`` record the sweep's points start from; every data set of the sweep needs its own
    ``train.gaussian_std`` and ``train.network`` entry (each point sets its own kappa)."""
    from pipelines.params import section

    train = section(TrainParams, raw, "train", path)
    for dataset in sweep.datasets:
        for table in ("gaussian_std", "network"):
            if dataset not in getattr(train, table):
                raise ParamsError(path, f"train.{table}.{dataset}",
                                  f"missing key (sweep.datasets lists {dataset!r})")
    return train


def add_sweep_parser(sub: Any, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep", help=help_,
        description="Run the Prefect `sweep` flow over the grid of the params section `sweep:` "
                    "(datasets x models x kappa x seeds). Each point is one training and one "
                    "evaluation in <out>/<dataset>/<model>/kappa=<k>/seed=<s>; points whose inputs are "
                    "unchanged, and whose code dvc.lock records unchanged, come from Prefect's task cache in "
                    "<out>/.prefect. The task runner is sweep.task_runner: local (one point at a time) or "
                    "dask (a LocalCluster of sweep.n_workers processes, or the scheduler at "
                    "sweep.dask_address). Writes results.csv, results.md and results.png in <out>.")
    p.add_argument("--data-dir", default="data/processed",
                   help="folder of <dataset>.zarr groups (default: %(default)s)")
    p.add_argument("--out", default=None, help="sweep folder (default: sweep.out)")
    p.add_argument("--dry-run", action="store_true", help="list the points' folders and stop")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--lock", default="dvc.lock",
                   help="the project's dvc.lock; points are reused while it records the train stage's code "
                        "unchanged, and not at all without it (default: %(default)s)")
    p.set_defaults(func=func)
    return p


def run_sweep_cli(args: argparse.Namespace) -> int:
    from pipelines.params import BaseParams, read_yaml, section

    raw = read_yaml(args.params)
    sweep = section(SweepParams, raw, "sweep", args.params)
    base = section(BaseParams, raw, "base", args.params)
    train = sweep_train_params(raw, sweep, args.params)
    evaluate = section(EvaluateParams, raw, "evaluate", args.params)
    out = Path(args.out or sweep.out)
    data_paths = {d: Path(args.data_dir) / f"{d}.zarr" for d in sweep.datasets}
    if args.dry_run:
        for point in grid(sweep):
            print(out / point.folder)
        return 0
    t0 = time.perf_counter()
    rows = run_sweep(sweep, train, evaluate, base, data_paths, out, lock=Path(args.lock))
    print(f"sweep of {len(rows)} points in {time.perf_counter() - t0:.1f} s (finished points come from "
          f"Prefect's cache): {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.png'}")
    print((out / "results.md").read_text())
    return 0
