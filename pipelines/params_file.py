"""The strict params.yaml reader: a mapping -> a frozen dataclass, refusing unknown and missing keys.

Every key must be set in the file (the records have no defaults), and a key the
dataclass does not know is refused, each with a message naming the file and the
dotted key (``train.model.latent_dim``). Value checks live in the records'
``__post_init__`` and are reported the same way. The records themselves are in
``pipelines.params`` (and the ``prepare_*`` ones beside their preprocessing code).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that cannot become the stage configs."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(path, "", "file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ParamsError(path, "", f"not UTF-8 text (line {line}, byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ParamsError(path, "", f"cannot read ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(path, "", f"not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ParamsError(path, "", "top level must be a mapping of sections")
    return data


def _convert(tp: Any, value: Any, path: Path | str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        problems = []
        for member in inner:
            try:
                return _convert(member, value, path, key)
            except ParamsError as err:
                problems.append(err.problem)
        raise ParamsError(path, key, " or ".join(problems))
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(path, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(path, key, f"must be a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_convert(item_type, v, path, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(path, key, f"must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, path, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(path, key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(path, key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-3 (no dot) as a string; accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ParamsError(path, key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(path, key, f"must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, path: Path | str = "params.yaml", key: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown and missing keys."""
    if not isinstance(data, dict):
        raise ParamsError(path, key, f"must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{key}.{u}" if key else u for u in unknown)
        raise ParamsError(path, names, f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        dotted = f"{key}.{name}" if key else name
        if name not in data:
            raise ParamsError(path, dotted, "missing key")
        kwargs[name] = _convert(hints[name], data[name], path, dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ParamsError(path, key or cls.__name__, str(err)) from err


def section(cls: type[T], params: dict[str, Any], name: str, path: Path | str = DEFAULT_PARAMS) -> T:
    """The frozen config of one params.yaml section."""
    if name not in params:
        raise ParamsError(path, name, "missing section")
    return from_dict(cls, params[name], path, name)


def load_section(cls: type[T], name: str, path: Path | str = DEFAULT_PARAMS, **overrides: Any) -> T:
    """The record of one section of a params file, with some keys replaced (tests, benchmarks)."""
    data = dict(read_yaml(path).get(name) or {})
    data.pop("enabled", None)  # prepare_fashion_mnist.enabled: a pipeline switch, not a knob of the stage
    data.update(overrides)
    return from_dict(cls, data, path, name)


def dotted_keys(data: Any, prefix: str = "") -> set[str]:
    """All dotted keys of a nested mapping (``train.model.latent_dim`` ...)."""
    keys: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            dotted = f"{prefix}.{k}" if prefix else str(k)
            keys.add(dotted)
            keys |= dotted_keys(v, dotted)
    return keys
