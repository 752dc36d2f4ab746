"""Scheduled retraining that only promotes a better model.

The ``retrain`` flow: ask DVC whether anything the pipeline depends on changed
(``dvc status``: raw data, code, params) -> if so (or ``force``), rerun the
pipeline (``dvc repro`` by default) -> read the challenger's evaluation metric ->
``decide`` (a pure function) whether it replaces the production model: only if
better by at least ``retrain.min_improvement`` -> record the decision. The
registry (``registry/registry.json``) keeps the champion and every decision with
its metrics and the git/DVC revision; the champion's files live in
``registry/production``. A failed pipeline, a missing or non-finite metric, or a
worse challenger never replaces the champion. A file lock makes duplicate
(catch-up) runs harmless: the second one returns "skipped" and touches nothing.

DVC decides what reruns; this flow adds only the "is it better?" gate and the
schedule, and keeps no cache or hash of its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from pipelines.checkpoint import atomic_write_json
from pipelines.errors import RetrainError
from pipelines.params import RetrainParams, read_yaml, section
from preprocessing.atomic import atomic_folder


# --------------------------------------------------------------------------- plain functions

def load_params(project: Path) -> RetrainParams:
    path = Path(project) / "params.yaml"
    return section(RetrainParams, read_yaml(path), "retrain", path)


def pipeline_changes(project: Path, timeout: int = 600) -> dict[str, Any]:
    """What DVC says changed since the last ``dvc repro`` ({} when everything is up to date)."""
    try:
        proc = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RetrainError(f"{project}: dvc status failed: {err}") from err
    if proc.returncode != 0:
        raise RetrainError(f"{project}: dvc status failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    try:
        return json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as err:
        raise RetrainError(f"{project}: dvc status printed no JSON ({err})") from err


def decide(challenger: float | None, champion: float | None, params: RetrainParams) -> tuple[str, str]:
    """The champion/challenger decision: (promoted | kept-champion | rejected, reason)."""
    if challenger is None:
        return "rejected", f"no finite {params.metric}"
    if champion is None:
        return "promoted", "no champion yet"
    margin = params.min_improvement
    better = (challenger > champion + margin) if params.higher_is_better else (challenger < champion - margin)
    if better:
        return "promoted", f"{params.metric} {challenger:.6g} beats {champion:.6g} by more than {margin:g}"
    return "kept-champion", f"{params.metric} {challenger:.6g} does not beat {champion:.6g} by more than {margin:g}"


def registry_dir(project: Path, params: RetrainParams | None = None) -> Path:
    name = params.registry if params else "registry"
    return Path(project) / name


def read_registry(project: Path, params: RetrainParams | None = None) -> dict[str, Any]:
    if params is None:
        try:
            params = load_params(project)
        except Exception:  # noqa: BLE001 - status must work even with broken params
            params = None
    path = registry_dir(project, params) / "registry.json"
    if not path.exists():
        return {"champion": None, "decisions": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RetrainError(f"{path}: registry is not valid JSON ({err})") from err


def write_registry(project: Path, params: RetrainParams, registry: dict[str, Any]) -> None:
    atomic_write_json(registry_dir(project, params) / "registry.json", registry)


def revision(project: Path) -> dict[str, Any]:
    """git commit (and whether the tree is dirty) and the hash of dvc.lock."""
    project = Path(project)
    info: dict[str, Any] = {"git": None, "dirty": None, "dvc_lock": None}
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True,
                                     text=True, check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True,
                                text=True, check=True, timeout=30).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    lock = project / "dvc.lock"
    if lock.exists():
        info["dvc_lock"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return info


def run_pipeline(project: Path, params: RetrainParams) -> tuple[bool, str]:
    """Run the pipeline command in the project; (succeeded, last lines of output)."""
    env = dict(os.environ)
    try:
        proc = subprocess.run(list(params.command), cwd=project, capture_output=True, text=True,
                              timeout=params.timeout_seconds, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"{' '.join(params.command)}: {err}"
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
    return proc.returncode == 0, tail


def read_metric(metrics_path: Path, key: str) -> float | None:
    """A (dotted) key of a metrics.json, or None if missing or not a finite number."""
    try:
        data: Any = json.loads(Path(metrics_path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
        return None
    return float(data)


def promote(project: Path, params: RetrainParams) -> Path:
    """Copy the challenger's model and eval folders into registry/production atomically."""
    project = Path(project)
    reg = registry_dir(project, params)
    reg.mkdir(parents=True, exist_ok=True)
    with atomic_folder(reg / "production") as staging:
        for kind in ("models", "eval"):
            src = project / kind / params.dataset / params.model
            if src.exists():
                shutil.copytree(src, staging / kind)
    return reg / "production"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def record(project: Path, params: RetrainParams, decision: dict[str, Any],
           champion: dict[str, Any] | None = None) -> dict[str, Any]:
    registry = read_registry(project, params)
    registry.setdefault("decisions", []).append(decision)
    if champion is not None:
        registry["champion"] = champion
    write_registry(project, params, registry)
    return decision


# --------------------------------------------------------------------------- Prefect

@task(name="dvc-status", cache_policy=NONE)
def status_task(project: Path) -> dict[str, Any]:
    return pipeline_changes(project)


@task(name="run-pipeline", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def pipeline_task(project: Path, params: RetrainParams) -> str:
    ok, tail = run_pipeline(project, params)
    if not ok:
        # raising lets Prefect retry once; the flow turns a second failure into a record
        raise RetrainError(f"pipeline failed: {tail}")
    return tail


EVALUATION_COLUMNS = ("test_log_likelihood", "elbo", "knn_accuracy", "trajectory_smoothness", "mf_fraction",
                      "interp_max_rel_mf_graph", "r2_azimuth", "r2_light", "final_lambda")


@task(name="publish-evaluation", cache_policy=NONE)
def publish_task(project: Path) -> None:
    """The evaluation's metrics as a table artifact, and a link to the report, for this run."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    rows = []
    for path in sorted(Path(project).glob("eval/*/*/metrics.json")):
        values = json.loads(path.read_text())
        rows.append({"dataset": path.parent.parent.name, "model": path.parent.name,
                     **{k: values.get(k) for k in EVALUATION_COLUMNS}})
    if rows:
        create_table_artifact(key="evaluation-metrics", table=rows,
                              description="eval/<dataset>/<model>/metrics.json of this pipeline run")
    report = Path(project) / "report" / "index.html"
    if report.is_file():
        create_link_artifact(key="report", link=report.resolve().as_uri(), link_text="report/index.html",
                             description="the evaluation report of this pipeline run (opens offline)")


@task(name="promote", cache_policy=NONE)
def promote_task(project: Path, params: RetrainParams) -> str:
    return str(promote(project, params))


@flow(name="retrain", log_prints=True)
def retrain_flow(project: str = ".", force: bool = False) -> dict[str, Any]:
    logger = get_run_logger()
    root = Path(project).resolve()
    params = load_params(root)
    reg = registry_dir(root, params)
    reg.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(reg / ".retrain.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        logger.info("another retrain run holds the lock; skipping this one")
        return {"time": _now(), "decision": "skipped", "reason": "another retrain run in progress"}
    try:
        champion = read_registry(root, params).get("champion")
        champion_value = champion.get("value") if champion else None
        base = {"time": _now(), "metric": params.metric, "dataset": params.dataset, "model": params.model,
                "champion_metric": champion_value}
        changes = status_task(root)
        if not force and champion is not None and not changes:
            logger.info("dvc status: nothing changed since the champion was trained; nothing to do")
            return record(root, params, {**base, "decision": "unchanged", "revision": revision(root)})
        try:
            pipeline_task(root, params)
        except RetrainError as err:
            logger.warning("pipeline failed; the champion stays")
            return record(root, params, {**base, "decision": "failed", "reason": str(err)[-2000:],
                                         "changed_stages": sorted(changes), "revision": revision(root)})
        publish_task(root)
        metrics_path = root / "eval" / params.dataset / params.model / "metrics.json"
        value = read_metric(metrics_path, params.metric)
        decision, reason = decide(value, champion_value, params)
        rev = revision(root)
        entry = {**base, "decision": decision, "reason": f"{metrics_path}: {reason}",
                 "challenger_metric": value, "changed_stages": sorted(changes), "revision": rev}
        logger.info(f"{decision}: {reason}")
        if decision == "promoted":
            where = promote_task(root, params)
            return record(root, params, entry, champion={**base, "value": value, "revision": rev, "path": where})
        return record(root, params, entry)
    finally:
        lock.release()


def run_retrain_once(project: Path, force: bool = False) -> dict[str, Any]:
    return retrain_flow(project=str(Path(project).resolve()), force=force)


def serve(project: Path, cron: str | None = None, interval: float | None = None,
          name: str = "vhp-retrain") -> None:
    """Serve the flow on a schedule (needs a Prefect server: PREFECT_API_URL)."""
    if cron is None and interval is None:
        cron = "0 3 * * *"
    if not os.environ.get("PREFECT_API_URL"):
        print("warning: PREFECT_API_URL is not set; the ephemeral API schedules nothing. Start a "
              "server with `prefect server start --host 127.0.0.1` and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api")
    kwargs: dict[str, Any] = {"name": name, "parameters": {"project": str(Path(project).resolve())}}
    if cron is not None:
        kwargs["cron"] = cron
    else:
        kwargs["interval"] = dt.timedelta(seconds=float(interval))
    retrain_flow.serve(**kwargs)
