"""Integration: a real Prefect server on 127.0.0.1 runs the served retrain flow on schedule.

Starts ``prefect server start --host 127.0.0.1`` and ``vhp retrain serve
--interval 5`` as subprocesses (each in its own process group), waits until the
server reports a completed scheduled run of the ``retrain`` flow, then stops
both by PID. About a minute on two cores.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_retrain import make_project

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


def completed_retrain_runs(api_url: str) -> list[dict]:
    import json

    # The scheduler creates many future runs; ask only for completed ones.
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 20}).encode()
    req = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        runs = json.loads(resp.read())
    return [r for r in runs
            if (r.get("state") or {}).get("type") == "COMPLETED" and r.get("deployment_id")]


def deployment_id(api_url: str, name: str) -> str:
    import json

    with urllib.request.urlopen(f"{api_url}/deployments/name/retrain/{name}", timeout=10) as resp:
        return json.loads(resp.read())["id"]


@pytest.mark.slow
def test_served_flow_runs_on_its_schedule(tmp_path):
    project = make_project(tmp_path / "project")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",  # `dvc` for the served flow's pipeline
    })
    env.pop("PREFECT_API_URL", None)
    server_log = tmp_path / "server.log"
    serve_log = tmp_path / "serve.log"
    procs: list[subprocess.Popen] = []
    try:
        with open(server_log, "w") as log:
            procs.append(subprocess.Popen(
                [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_healthy(api_url, procs[0], server_log)
        serve_env = dict(env, PREFECT_API_URL=api_url)
        with open(serve_log, "w") as log:
            procs.append(subprocess.Popen(
                [str(VENV_BIN / "vhp"), "retrain", "serve", "--project", str(project), "--interval", "5"],
                env=serve_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 300
        done: list[dict] = []
        last_error: Exception | None = None
        registry_file = project / "registry" / "registry.json"
        # overlapping scheduled runs skip (the lock): wait for one that recorded a decision
        while time.monotonic() < deadline and not (done and registry_file.exists()):
            if procs[1].poll() is not None:
                pytest.fail(f"`vhp retrain serve` exited:\n{serve_log.read_text()[-3000:]}")
            time.sleep(3)
            try:
                done = completed_retrain_runs(api_url)
            except OSError as err:
                last_error = err
                continue
        assert done and registry_file.exists(), (
            f"no scheduled run recorded a decision within 300 s ({last_error}):\n{serve_log.read_text()[-3000:]}")
        assert done[0]["deployment_id"] == deployment_id(api_url, "vhp-retrain"), \
            "the completed run did not come from the served deployment"
        registry = registry_file.read_text()
        assert '"promoted"' in registry
    finally:
        for proc in reversed(procs):
            stop(proc)
    for proc in procs:
        assert proc.poll() is not None
