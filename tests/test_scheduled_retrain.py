"""Integration: a real Prefect server on 127.0.0.1 runs the served retrain flow on schedule.

Starts ``prefect server start --host 127.0.0.1`` (its scheduler service makes the
scheduled runs) and ``vhp retrain serve --interval 5`` as subprocesses (each in its
own process group), waits until the server reports a completed scheduled run of
the ``retrain`` flow, then stops both by PID. About a minute on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from builders import make_retrain_project, start_prefect_server, stop

VENV_BIN = Path(sys.executable).parent


def completed_retrain_runs(api_url: str) -> list[dict]:
    import json

    # The scheduler creates many future runs; ask only for completed ones of the retrain flow.
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                       "flows": {"name": {"any_": ["retrain"]}}, "limit": 20}).encode()
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
    project = make_retrain_project(tmp_path / "project")
    server, api_url = start_prefect_server(tmp_path / "prefect-server", tmp_path / "server.log")
    serve_env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api_url,
                     PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")  # `dvc` for the served flow's pipeline
    serve_log = tmp_path / "serve.log"
    procs = [server]
    try:
        with open(serve_log, "w") as log:
            serve = subprocess.Popen(
                [str(VENV_BIN / "vhp"), "retrain", "serve", "--project", str(project), "--interval", "5"],
                env=serve_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(serve)
        deadline = time.monotonic() + 300
        done: list[dict] = []
        last_error: Exception | None = None
        registry_file = project / "registry" / "registry.json"
        # overlapping scheduled runs skip (the lock): wait for one that recorded a decision
        while time.monotonic() < deadline and not (done and registry_file.exists()):
            if serve.poll() is not None:
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
    assert all(proc.poll() is not None for proc in procs)
