"""Each `vhp` command imports only what it runs: asking a light command for help must not
start torch, Prefect or zarr (measured start-up: `vhp prepare --help` 0.09 s against 4-5 s
when the parser imported every command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "prefect", "zarr", "numpy", "vhp_core", "matplotlib")

PROBE = """
import json, sys
from pipelines.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


def heavy_imports(argv: list[str]) -> list[str]:
    run = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["prepare", "--help"], ["report", "--help"], ["evaluate", "--help"],
                                  ["retrain", "--help"]])
def test_help_of_a_light_command_imports_no_heavy_library(argv):
    assert heavy_imports(argv) == []


def test_help_of_train_builds_its_own_arguments_only():
    # `vhp train --help` needs the model registry (vhp_core), and nothing of Prefect
    assert "prefect" not in heavy_imports(["train", "--help"])


def test_the_report_runs_without_model_code(tmp_path):
    # The report reads files: building one imports neither torch nor vhp_core (so dvc.yaml's report
    # stage does not depend on vhp_core, and a model edit never reruns it).
    loaded = heavy_imports(["report", "--eval", str(tmp_path / "eval"), "--models", str(tmp_path / "models"),
                            "--out", str(tmp_path / "report"), "--params", str(ROOT / "params.yaml")])
    assert (tmp_path / "report" / "index.html").is_file()
    assert "torch" not in loaded and "vhp_core" not in loaded and "prefect" not in loaded, loaded


def test_every_command_still_parses_its_own_arguments():
    from pipelines.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser(name)
        action = next(a for a in parser._actions if a.dest == "command")
        assert action.choices[name]._actions[1:], f"{name} has no arguments of its own"
