"""Scheduled retraining that only promotes a better model.

The ``retrain`` flow: hash the raw data -> if they changed (or ``force``), rerun
the pipeline (``dvc repro`` by default) -> read the challenger's evaluation
metric -> promote it over the production model only if it is better by at least
``retrain.min_improvement`` -> record the decision. The registry
(``registry/registry.json``) keeps the champion and every decision with its
metrics, data hashes and the git/DVC revision; the champion's files live in
``registry/production``. A failed pipeline, a missing or non-finite metric, or a
worse challenger never replaces the champion. A file lock makes duplicate
(catch-up) runs harmless: the second one returns "skipped" and touches nothing.

DVC decides what reruns; this flow adds only the "is it better?" gate and the
schedule, and keeps no cache of its own.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pipelines.checkpoint import atomic_write_json
from pipelines.params import read_yaml, section



class RetrainError(RuntimeError):
    pass


@dataclass(frozen=True)
class RetrainParams:
    """The ``retrain:`` section of params.yaml."""

    dataset: str = "mocap"
    model: str = "vhp"
    metric: str = "test_log_likelihood"
    higher_is_better: bool = True
    min_improvement: float = 0.0
    command: tuple[str, ...] = ("dvc", "repro")
    raw_paths: tuple[str, ...] = ()
    registry: str = "registry"
    timeout_seconds: int = 3600

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("command must not be empty")
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")
        if self.timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {self.timeout_seconds}")


# --------------------------------------------------------------------------- plain functions

def load_params(project: Path) -> RetrainParams:
    path = Path(project) / "params.yaml"
    return section(RetrainParams, read_yaml(path), "retrain", path)


def raw_data_paths(project: Path, params: RetrainParams) -> list[Path]:
    """The raw inputs whose change should trigger a retrain."""
    project = Path(project)
    raw = read_yaml(project / "params.yaml")
    candidates: list[str] = list(params.raw_paths)
    for name in ("prepare_mocap", "prepare_faces", "prepare_fashion_mnist"):
        sect = raw.get(name) or {}
        for key in ("source", "model_path", "blendshapes_path", "mesh_folder"):
            value = sect.get(key)
            if isinstance(value, str) and value not in ("", "procedural", "embedded", "sfm", "meshes"):
                candidates.append(value)
    paths = []
    for c in candidates:
        p = Path(c) if Path(c).is_absolute() else project / c
        if p.exists():
            paths.append(p)
    return paths


def hash_path(path: Path) -> str:
    """sha256 over a file, or over every file of a folder (names and contents, sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == path else str(f.relative_to(path))
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def hash_raw_data(project: Path, params: RetrainParams) -> dict[str, str]:
    project = Path(project)
    out = {}
    for p in raw_data_paths(project, params):
        try:
            key = str(p.relative_to(project))
        except ValueError:
            key = str(p)
        out[key] = hash_path(p)
    # The preprocessing knobs shape the data as much as the files do.
    raw = read_yaml(project / "params.yaml")
    prep = {k: raw.get(k) for k in ("fetch_embedded", "prepare_mocap", "prepare_faces", "prepare_fashion_mnist")}
    out["params:prepare"] = hashlib.sha256(json.dumps(prep, sort_keys=True, default=str).encode()).hexdigest()
    return out


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


def is_better(challenger: float, champion: float | None, params: RetrainParams) -> bool:
    if champion is None:
        return True
    if params.higher_is_better:
        return challenger > champion + params.min_improvement
    return challenger < champion - params.min_improvement


def promote(project: Path, params: RetrainParams) -> Path:
    """Copy the challenger's model and eval folders into registry/production atomically."""
    project = Path(project)
    reg = registry_dir(project, params)
    reg.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".production.", dir=reg))
    try:
        for kind in ("models", "eval"):
            src = project / kind / params.dataset / params.model
            if src.exists():
                shutil.copytree(src, staging / kind)
        target = reg / "production"
        old = reg / ".production.old"
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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

def _build_flow():
    from prefect import flow, get_run_logger, task
    from prefect.cache_policies import NONE

    @task(name="hash-raw-data", cache_policy=NONE)
    def hash_task(project: Path, params: RetrainParams) -> dict[str, str]:
        return hash_raw_data(project, params)

    @task(name="run-pipeline", retries=1, retry_delay_seconds=5, cache_policy=NONE)
    def pipeline_task(project: Path, params: RetrainParams) -> tuple[bool, str]:
        ok, tail = run_pipeline(project, params)
        if not ok:
            # raising lets Prefect retry once; the flow turns a second failure into a record
            raise RetrainError(f"pipeline failed: {tail}")
        return ok, tail

    @task(name="promote", cache_policy=NONE)
    def promote_task(project: Path, params: RetrainParams) -> str:
        return str(promote(project, params))

    @flow(name="retrain", log_prints=True)
    def retrain(project: str = ".", force: bool = False) -> dict[str, Any]:
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
            hashes = hash_task(root, params)
            registry = read_registry(root, params)
            champion = registry.get("champion")
            base = {"time": _now(), "data_hashes": hashes, "metric": params.metric,
                    "dataset": params.dataset, "model": params.model}
            last_hashes = champion.get("data_hashes") if champion else None
            if not force and champion is not None and last_hashes == hashes:
                decision = {**base, "decision": "unchanged", "revision": revision(root),
                            "champion_metric": champion.get("value")}
                logger.info("raw data unchanged since the champion was trained; nothing to do")
                return record(root, params, decision)
            try:
                pipeline_task(root, params)
            except RetrainError as err:
                decision = {**base, "decision": "failed", "reason": str(err)[-2000:],
                            "revision": revision(root),
                            "champion_metric": champion.get("value") if champion else None}
                logger.warning("pipeline failed; the champion stays")
                return record(root, params, decision)
            metrics_path = root / "eval" / params.dataset / params.model / "metrics.json"
            value = read_metric(metrics_path, params.metric)
            champion_value = champion.get("value") if champion else None
            rev = revision(root)
            if value is None:
                decision = {**base, "decision": "rejected", "reason": f"{metrics_path}: no finite {params.metric}",
                            "revision": rev, "champion_metric": champion_value}
                return record(root, params, decision)
            if is_better(value, champion_value, params):
                where = promote_task(root, params)
                new_champion = {**base, "value": value, "revision": rev, "path": where}
                decision = {**base, "decision": "promoted", "challenger_metric": value,
                            "champion_metric": champion_value, "revision": rev}
                logger.info(f"promoted: {params.metric} {value:.4f} (was {champion_value})")
                return record(root, params, decision, champion=new_champion)
            decision = {**base, "decision": "kept-champion", "challenger_metric": value,
                        "champion_metric": champion_value, "revision": rev}
            logger.info(f"challenger {value:.4f} not better than champion {champion_value:.4f}")
            return record(root, params, decision)
        finally:
            lock.release()

    return retrain


@functools.cache
def retrain_flow():
    return _build_flow()


def run_retrain_once(project: Path, force: bool = False) -> dict[str, Any]:
    return retrain_flow()(project=str(Path(project).resolve()), force=force)


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
    retrain_flow().serve(**kwargs)
