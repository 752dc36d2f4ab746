"""The benches' configs, from params.yaml through the pipeline's own path, with stated overrides.

A bench trains and evaluates the models the pipeline trains: its `TrainParams` is
params.yaml's `train:` section read by the strict reader (`pipelines.params`), and its
vhp_core configs come from `pipelines.train.flow.model_config` / `constraint_config`, so no
value silently comes from a code default. What a bench changes (a batch size, the latent
size of a published setting, a fixed kappa) is an override, written as a dotted key of the
section as `dvc exp run -S train.<key>=<value>` would set it, checked against the file (an
override of a key the file lacks is refused), printed, and stored in the bench's JSON.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def apply_overrides(raw: dict[str, Any], section_name: str, overrides: dict[str, Any], path: Path | str) -> dict:
    """A copy of params mapping `raw` with the dotted keys of `overrides` set in section `section_name`."""
    from pipelines.params import ParamsError

    out = copy.deepcopy(raw)
    if section_name not in out:
        raise ParamsError(path, section_name, "missing section")
    for dotted, value in overrides.items():
        node = out[section_name]
        *parents, leaf = dotted.split(".")
        for i, key in enumerate(parents):
            if not isinstance(node, dict) or key not in node:
                raise ParamsError(path, ".".join([section_name, *parents[: i + 1]]), "missing key (bench override)")
            node = node[key]
        if not isinstance(node, dict) or (leaf not in node and not _is_table(section_name, parents)):
            raise ParamsError(path, f"{section_name}.{dotted}", "missing key (bench override)")
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return out


def _is_table(section_name: str, parents: list[str]) -> bool:
    # per-data-set tables take new entries: a bench may run a data set that params.yaml does not list
    return section_name == "train" and parents in (["kappa"], ["gaussian_std"], ["network"])


def train_params(overrides: dict[str, Any] | None = None, path: Path | str = PARAMS):
    """params.yaml's train section as `TrainParams`, with `overrides` (dotted keys) applied."""
    from pipelines.params import TrainParams, read_yaml, section

    raw = apply_overrides(read_yaml(path), "train", overrides or {}, path)
    return section(TrainParams, raw, "train", path)


def evaluate_params(overrides: dict[str, Any] | None = None, path: Path | str = PARAMS):
    """params.yaml's evaluate section as `EvaluateParams`, with `overrides` applied."""
    from pipelines.params import EvaluateParams, read_yaml, section

    raw = apply_overrides(read_yaml(path), "evaluate", overrides or {}, path)
    return section(EvaluateParams, raw, "evaluate", path)


def model_config(params, dataset: str, model: str, x_shape: tuple[int, ...], likelihood: str):
    """vhp_core.ModelConfig of one (data set, model) cell, as the training stage builds it (on the CPU)."""
    from pipelines.train.flow import model_config as build

    return build(params, dataset, model, x_shape, likelihood, "cpu")


def constraint_config(params, dataset: str, n_train: int):
    """vhp_core.ConstraintConfig of one data set for a run over `n_train` points, as the training stage builds it."""
    from pipelines.train.flow import constraint_config as build

    return build(params, dataset, n_train)


def describe(overrides: dict[str, Any]) -> str:
    """One line for a bench's printed output: what it changes in params.yaml."""
    if not overrides:
        return "params.yaml, no overrides"
    return "params.yaml with overrides " + ", ".join(f"{k}={_plain(v)}" for k, v in overrides.items())


def _plain(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def jsonable(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides as they go into a bench's JSON (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
