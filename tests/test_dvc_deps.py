"""dvc.yaml is the truth about dependencies: every stage lists the project modules its command
imports and the params sections it reads, and no metrics file holds a wall-clock figure.

For each stage the test reads the command (``vhp <subcommand> ...``), starts from the
subcommand's function in pipelines/cli.py and its argument builder (plus the module-level
imports of the CLI and the error list every command loads), follows every project import
from there (module- and function-level, transitively), and checks both ways:

- each module reached is covered by the stage's ``deps`` (the file itself or a folder above it);
- each code dep is reached: a listed file is imported, and a listed folder is imported whole
  (every module in it), so that editing code a stage never runs does not rerun it.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
from pathlib import Path

import pytest
import yaml

from pipelines.cli import PREPARE_SECTIONS
from pipelines.params import dotted_keys, read_yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vhp_core", "pipelines", "preprocessing")
# Keys that choose the cells of the train/evaluate matrix rather than feed one cell.
MATRIX_KEYS = {"train.datasets", "train.models"}


def module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    file = ROOT.joinpath(*parts).with_suffix(".py")
    if file.is_file():
        return file
    init = ROOT.joinpath(*parts, "__init__.py")
    return init if init.is_file() else None


def imports_of(tree: ast.AST, module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside a package
                parts = module.split(".")
                if module_path(module).name != "__init__.py":
                    parts = parts[:-1]  # a module's package
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if module_path(name) is not None}


def closure(start: set[str]) -> set[Path]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run their __init__
        tree = ast.parse(module_path(name).read_text())
        todo.extend(imports_of(tree, name) - seen)
    return {module_path(n) for n in seen}


def cli_function(name: str) -> ast.FunctionDef:
    tree = ast.parse((ROOT / "pipelines" / "cli.py").read_text())
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


@functools.cache
def _modules_of(words: tuple[str, ...]) -> frozenset[Path]:
    return frozenset(_follow(list(words)))


def modules_of_command(words: list[str]) -> set[Path]:
    """Project modules that `vhp <words>` runs (commands differing only in paths share the answer)."""
    return set(_modules_of(tuple(words[:3] if words[1] == "prepare" else words[:2])))


def _follow(words: list[str]) -> set[Path]:
    tree = ast.parse((ROOT / "pipelines" / "cli.py").read_text())
    start = {"pipelines"} | imports_of(ast.Module(body=[n for n in tree.body if not isinstance(
        n, (ast.FunctionDef, ast.ClassDef))], type_ignores=[]), "pipelines.cli")
    command = words[1].replace("-", "_")
    functions = ["main", "build_parser", "command_of", f"add_{command}"]
    if command != "fetch":  # the fetch commands live with their parser (pipelines.prepare.fetch)
        functions.append(f"cmd_{command}")
    for fn in functions:
        start |= imports_of(cli_function(fn), "pipelines.cli")
    if words[1] == "prepare":
        start.add(PREPARE_SECTIONS[words[2]][1])
    return closure(start) | {ROOT / "pipelines" / "cli.py"}


def sections_of_command(words: list[str]) -> set[str]:
    if words[1] == "fetch":
        return set()
    fn = cli_function(f"cmd_{words[1].replace('-', '_')}")
    names = {node.args[2].value for node in ast.walk(fn) if isinstance(node, ast.Call)
             and getattr(node.func, "id", "") == "section" and len(node.args) >= 3
             and isinstance(node.args[2], ast.Constant)}
    if words[1] == "prepare":
        names.add(PREPARE_SECTIONS[words[2]][0])
    return names


def expand(text: str, raw: dict) -> list[str]:
    values = {"item.dataset": raw["train"]["datasets"], "item.model": raw["train"]["models"],
              "item": raw["prepare_fashion_mnist"]["enabled"] or ["fashion_mnist"]}
    names = re.findall(r"\$\{(item[^}]*)\}", text)
    out = []
    for combo in itertools.product(*(values[n] for n in names)):
        t = text
        for n, v in zip(names, combo):
            t = t.replace("${" + n + "}", str(v))
        out.append(re.sub(r"\$\{([^}]+)\}", lambda m: str(_lookup(raw, m.group(1))), t))
    return out


def _lookup(raw: dict, dotted: str):
    value = raw
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_cells():
    raw = read_yaml(ROOT / "params.yaml")
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        for cmd in expand(" ".join(body["cmd"].split()), raw):
            words = cmd.split()
            if words[0] != "vhp":
                continue
            item = {"cmd": cmd, "words": words, "deps": [], "params": []}
            for dep in body.get("deps", []):
                item["deps"].extend(expand(dep, raw))
            for entry in body.get("params", []):
                for e in (list(entry) if isinstance(entry, dict) else [entry]):
                    item["params"].extend(expand(e, raw))
            # a matrix cell's own params: the train.kappa.<dataset> of this command
            dataset = next((w for w in words if w in raw["train"]["kappa"]), None)
            item["params"] = [p for p in item["params"]]
            item["dataset"] = dataset
            yield name, item


CELLS = list({(n, c["cmd"]): (n, c) for n, c in stage_cells()}.values())


@pytest.mark.parametrize("name, cell", CELLS, ids=[c["cmd"][:60] for _, c in CELLS])
def test_every_imported_project_module_is_a_dep(name, cell):
    deps = [(ROOT / d).resolve() for d in cell["deps"]]
    missing = []
    for module in sorted(modules_of_command(cell["words"])):
        if not any(module == d or d in module.parents for d in deps):
            missing.append(str(module.relative_to(ROOT)))
    assert not missing, (f"stage {name} ({cell['cmd']}) imports modules missing from its deps: {missing}; "
                         f"its code deps would be {smallest_deps(modules_of_command(cell['words']))}")


def code_modules(dep: Path) -> set[Path]:
    """The project modules a code dep stands for (a file, or every module in a folder)."""
    return {dep} if dep.is_file() else {p for p in dep.rglob("*.py") if "__pycache__" not in p.parts}


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def smallest_deps(modules: set[Path]) -> list[str]:
    """The shortest deps list for ``modules``: a folder where all of it is imported, else its files."""
    out: set[str] = set()
    for module in modules:
        rel = module.relative_to(ROOT)
        chosen = rel
        for parent in list(rel.parents)[:-1][::-1]:  # from the top folder down
            if code_modules(ROOT / parent) <= modules:
                chosen = parent
                break
        out.add(str(chosen))
    return sorted(out)


@pytest.mark.parametrize("name, cell", CELLS, ids=[c["cmd"][:60] for _, c in CELLS])
def test_every_code_dep_is_imported(name, cell):
    modules = modules_of_command(cell["words"])
    unused = []
    for dep in cell["deps"]:
        if is_code(dep):
            not_run = code_modules(ROOT / dep) - modules
            unused += [str(m.relative_to(ROOT)) for m in sorted(not_run)]
    assert not unused, (f"stage {name} ({cell['cmd']}) lists code its command never imports: {unused}; "
                        f"its code deps would be {smallest_deps(modules)}")


@pytest.mark.parametrize("name, cell", CELLS, ids=[c["cmd"][:60] for _, c in CELLS])
def test_every_params_key_read_is_listed(name, cell):
    raw = read_yaml(ROOT / "params.yaml")
    listed = cell["params"]
    keys = set()
    for section in sections_of_command(cell["words"]):
        leaves = {k for k in dotted_keys({section: raw[section]}) if not isinstance(_lookup(raw, k), dict)}
        keys |= leaves
    missing = []
    for key in sorted(keys - MATRIX_KEYS):
        parts = key.split(".")
        # train.kappa.faces is no input of a mocap cell: the cell reads its own data set's entry only
        if cell["dataset"] and len(parts) == 3 and parts[0] == "train" and parts[1] in ("kappa", "gaussian_std",
                                                                                      "network"):
            if parts[2] != cell["dataset"]:
                continue
        covered = any(key == p or key.startswith(p + ".") for p in listed)
        if not covered:
            missing.append(key)
    assert not missing, f"stage {name} ({cell['cmd']}) reads params it does not list: {missing}"


def test_the_checker_sees_a_removed_dep():
    name, cell = next((n, c) for n, c in CELLS if n == "train")
    broken = [d for d in cell["deps"] if d != "pipelines/train"]
    assert len(broken) < len(cell["deps"]), "the train stage should list pipelines/train"
    deps = [(ROOT / d).resolve() for d in broken]
    assert any(not any(m == d or d in m.parents for d in deps) for m in modules_of_command(cell["words"]))


def test_no_wall_clock_figure_in_a_dvc_metric():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    metrics = [m if isinstance(m, str) else next(iter(m)) for m in dvc.get("metrics", [])]
    assert metrics
    source = "\n".join(p.read_text() for p in (ROOT / "pipelines").rglob("*.py"))
    for metric in metrics:
        # the report's metrics.json is assembled from eval/ and models/ metrics.json files, which hold no timing
        assert "timing.json" not in metric
    for writer in ("pipelines/train/outputs.py", "pipelines/evaluate/stage.py", "pipelines/report/build.py"):
        text = (ROOT / writer).read_text()
        for match in re.finditer(r'metrics\[?"(\w*seconds\w*)"', text):
            pytest.fail(f"{writer} writes {match.group(1)} into a metrics file")
    assert "timing.json" in source
