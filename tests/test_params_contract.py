"""params.yaml and dvc.yaml agree, and every stage's config builds from them."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import yaml

from pipelines.cli import PREPARE_SECTIONS, build_parser, main
from pipelines.params import (
    BaseParams,
    EvaluateParams,
    ParamsError,
    RetrainParams,
    SweepParams,
    TrainParams,
    dotted_keys,
    from_dict,
    read_yaml,
    section,
)
from pipelines.report.params import ReportParams
from pipelines.train.flow import constraint_config, model_config

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
DVC = ROOT / "dvc.yaml"


def _prepare_classes():
    import importlib

    out = {}
    for section_name, module_name, class_name in PREPARE_SECTIONS.values():
        out[section_name] = getattr(importlib.import_module(module_name), class_name)
    return out


def stage_classes() -> dict[str, type]:
    classes = {
        "base": BaseParams,
        "train": TrainParams,
        "evaluate": EvaluateParams,
        "report": ReportParams,
        "retrain": RetrainParams,
        "sweep": SweepParams,
    }
    classes.update(_prepare_classes())
    return classes


def _strip_switch(name: str, data: dict) -> dict:
    data = dict(data)
    if name == "prepare_fashion_mnist":
        data.pop("enabled", None)
    return data


def test_every_section_builds_from_the_real_params():
    raw = read_yaml(PARAMS)
    for name, cls in stage_classes().items():
        cfg = from_dict(cls, _strip_switch(name, raw[name]), PARAMS, name)
        assert dataclasses.is_dataclass(cfg)
    # and the model configs of every cell of the train matrix
    train = section(TrainParams, raw, "train")
    for dataset, model in itertools.product(train.datasets, train.models):
        shape = (62,) if dataset == "mocap" else (1, 64, 64)
        likelihood = "bernoulli" if dataset == "fashion_mnist" else "gaussian"
        assert model_config(train, dataset, model, shape, likelihood).model == model
        ccfg = constraint_config(train, dataset, 1000)
        assert ccfg.kappa is None if train.kappa[dataset] == "auto" else ccfg.kappa > 0


def test_params_has_no_section_without_a_consumer():
    raw = read_yaml(PARAMS)
    known = set(stage_classes()) | {"fetch_embedded"}
    assert set(raw) <= known, f"sections nobody reads: {set(raw) - known}"


@pytest.mark.parametrize("name", ["train", "evaluate", "base", "retrain"])
def test_unknown_key_is_refused_with_its_name(name):
    raw = read_yaml(PARAMS)
    bad = copy.deepcopy(raw[name])
    bad["no_such_knob"] = 1
    with pytest.raises(ParamsError, match=rf"{name}\.no_such_knob"):
        from_dict(stage_classes()[name], bad, PARAMS, name)


def test_nested_unknown_key_is_refused():
    raw = read_yaml(PARAMS)
    bad = copy.deepcopy(raw["train"])
    bad["model"]["latent_dims"] = 3
    with pytest.raises(ParamsError, match=r"train\.model\.latent_dims"):
        from_dict(TrainParams, bad, PARAMS, "train")


@pytest.mark.parametrize("name", ["base", "train", "evaluate", "report", "retrain", "sweep", "prepare_mocap",
                                  "prepare_faces", "prepare_fashion_mnist"])
def test_every_key_is_required_params_yaml_is_the_only_source(name):
    raw = read_yaml(PARAMS)
    cls = stage_classes()[name]
    data = _strip_switch(name, raw[name])
    for key in data:
        bad = copy.deepcopy(data)
        del bad[key]
        with pytest.raises(ParamsError, match=rf"{name}\.{key}: missing key"):
            from_dict(cls, bad, PARAMS, name)
    for field in dataclasses.fields(cls):  # no record fills in a value of its own
        assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, field.name


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("batch_size", -4, "batch_size must be positive"),
        ("epochs", 0, "epochs must be positive"),
        ("lr", -1.0, "lr must be positive"),
        ("precision", "fp8", "precision"),
    ],
)
def test_bad_values_are_refused(key, value, message):
    raw = read_yaml(PARAMS)
    bad = copy.deepcopy(raw["train"])
    bad[key] = value
    with pytest.raises(ParamsError, match=message):
        from_dict(TrainParams, bad, PARAMS, "train")


def _literal_keys(cls: type, data: dict, prefix: str):
    """(dotted key, path into data) of every field typed as a Literal, or as a dict of them."""
    import typing

    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            yield from ((k, [name, *path]) for k, path in _literal_keys(tp, data[name], f"{prefix}.{name}"))
        elif typing.get_origin(tp) is typing.Literal:
            yield f"{prefix}.{name}", [name]
        elif typing.get_origin(tp) is dict and typing.get_origin(typing.get_args(tp)[1]) is typing.Literal:
            entry = next(iter(data[name]))
            yield f"{prefix}.{name}.{entry}", [name, entry]


@pytest.mark.parametrize("name", ["base", "train", "sweep"])
def test_enumerated_values_are_refused_outside_their_literal(name):
    # The allowed values are the Literals of vhp_core.choices / pipelines.params, checked by the reader.
    raw = read_yaml(PARAMS)
    keys = list(_literal_keys(stage_classes()[name], raw[name], name))
    assert keys
    for dotted, path in keys:
        bad = copy.deepcopy(raw[name])
        *inner, last = path
        target = bad
        for step in inner:
            target = target[step]
        target[last] = "no-such-value"
        with pytest.raises(ParamsError, match=rf"{re.escape(dotted)}: must be one of"):
            from_dict(stage_classes()[name], bad, PARAMS, name)


def test_non_positive_kappa_is_refused():
    raw = read_yaml(PARAMS)
    bad = copy.deepcopy(raw["train"])
    bad["kappa"]["mocap"] = 0.0
    with pytest.raises(ParamsError, match=r"kappa\.mocap must be 'auto' or a number > 0"):
        from_dict(TrainParams, bad, PARAMS, "train")


def _expand(template: str, raw: dict) -> list[str]:
    """Expand ${item.dataset}/${item.model}/${item} over the matrix values in params."""
    train = raw["train"]
    values = {
        "item.dataset": train["datasets"],
        "item.model": train["models"],
        "item": raw["prepare_fashion_mnist"]["enabled"] or ["fashion_mnist"],
    }
    names = re.findall(r"\$\{([^}]+)\}", template)
    if not names:
        return [template]
    out = []
    for combo in itertools.product(*(values[n] for n in names)):
        text = template
        for n, v in zip(names, combo):
            text = text.replace("${" + n + "}", str(v))
        out.append(text)
    return out


def test_every_param_key_listed_in_dvc_yaml_exists():
    raw = read_yaml(PARAMS)
    keys = dotted_keys(raw)
    stages = yaml.safe_load(DVC.read_text())["stages"]
    listed = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            entries = list(entry) if isinstance(entry, dict) else [entry]
            for e in entries:
                listed.extend(_expand(e, raw))
    assert listed, "dvc.yaml lists no params"
    missing = [k for k in listed if k not in keys]
    assert not missing, f"dvc.yaml lists params that params.yaml lacks: {missing}"


def test_prepare_sources_in_dvc_yaml_are_params():
    raw = read_yaml(PARAMS)
    text = DVC.read_text()
    for ref in re.findall(r"\$\{((?!item)[^}]+)\}", text):
        assert ref in dotted_keys(raw), f"dvc.yaml interpolates unknown param {ref}"


def test_cli_refuses_a_bad_params_file_naming_the_key(tmp_path, capsys):
    raw = read_yaml(PARAMS)
    raw["train"]["model"]["kappa"] = 0.1  # wrong place for kappa
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    code = main(["train", "--dataset", "mocap", "--model", "vhp", "--data", str(tmp_path / "x.zarr"),
                 "--out", str(tmp_path / "m"), "--params", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.model.kappa" in err and str(bad) in err
    assert not (tmp_path / "m").exists()


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for cmd in ["prepare", "train", "evaluate", "report", "retrain", "fetch"]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([cmd, "--help"])
        assert exit_info.value.code == 0
        assert "usage: vhp" in capsys.readouterr().out
