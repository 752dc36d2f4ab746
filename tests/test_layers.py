"""The house is one-way: no import circle, and no import that runs back up the layers.

    vhp_core            the model (pure torch): imports no other project package
    preprocessing       raw data -> zarr: imports no other project package
    pipelines/*.py      shared modules (errors, params, runtime, checkpoint, plotting, queries):
                        import no stage package
    pipelines/<stage>/  prepare, train, evaluate, report, retrain: import the shared modules,
                        never another stage; sweep runs train and evaluate
    pipelines/cli.py, pipelines/distributed.py
                        entry points: may import anything

Imports are read from the source (module- and function-level), as in test_dvc_deps.py.
Also: no file in pipelines/ or bench/ over 400 lines (a file that needs a table of contents
does too many jobs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from test_dvc_deps import PACKAGES, ROOT, imports_of, module_path

STAGES = ("prepare", "train", "evaluate", "report", "retrain", "sweep")
ENTRY_POINTS = ("pipelines.cli", "pipelines.distributed")
MAY_USE = {"sweep": {"train", "evaluate"}}  # stage -> the other stages it may import
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> list[str]:
    return sorted(module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts)


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name in project_modules():
        found = imports_of(ast.parse(module_path(name).read_text()), name)
        graph[name] = {module_name(module_path(m)) for m in found} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    if parts[0] != "pipelines":
        return parts[0]
    if name in ENTRY_POINTS:
        return "entry"
    return f"stage:{parts[1]}" if len(parts) > 1 and parts[1] in STAGES else "shared"


def allowed(source: str, target: str) -> bool:
    a, b = layer(source), layer(target)
    if a == b or a == "entry":
        return True
    if a in ("vhp_core", "preprocessing"):
        return False
    if b in ("vhp_core", "preprocessing", "shared"):
        return True
    if a.startswith("stage:") and b.startswith("stage:"):
        return b[6:] in MAY_USE.get(a[6:], set())
    return False  # shared -> a stage, anything -> an entry point


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_import_runs_back_up():
    wrong = sorted(f"{s} -> {t}" for s, targets in import_graph().items() for t in targets if not allowed(s, t))
    assert wrong == []


def test_the_checks_see_a_circle_and_a_wrong_way():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not allowed("pipelines.train.flow", "pipelines.evaluate.stage")
    assert not allowed("pipelines.params", "pipelines.train.flow")
    assert not allowed("vhp_core.models", "pipelines.params")
    assert allowed("pipelines.sweep.run", "pipelines.train.flow")


@pytest.mark.parametrize("folder", ["pipelines", "bench"])
def test_no_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if "__pycache__" not in p.parts and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
