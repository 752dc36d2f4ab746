"""The processed-data contract: one zarr group a data set, written atomically, checked on open.

Layout (zarr format 3, after the zarr user guide's advice on chunking and attributes)::

    <name>.zarr/
        train/x, test/x           float32 (n, *x_shape), chunked along the sample axis only
        val/x, val/<label>        optional (schema 2): whole training trials/segments held out
                                  for model selection, recorded in attrs['split']
        train/<label>, test/<label>   int64 (categorical codes, or integer indices) or float32
        test/x_binarised ...      optional extra arrays shaped like x
        attrs: schema_version, dataset, likelihood, x_shape, feature_names, units,
               normalisation, labels, sources, params, stand_in, + per data set extras

Chunks hold whole samples (about 2 MB of them) so that a training batch is a slice of
few chunks, and are compressed with Blosc-zstd. ``write_dataset`` builds the group in a
temporary folder beside the target and renames it into place, so a crash leaves either
the old complete group or the new complete one. ``open_dataset`` checks the schema
before a consumer starts and raises ``DatasetError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from preprocessing.atomic import atomic_folder
from preprocessing.errors import DatasetError, PreprocessingError, WriteError

__all__ = [
    "SCHEMA_VERSION",
    "CHUNK_BYTES",
    "Split",
    "Dataset",
    "DatasetError",
    "PreprocessingError",
    "open_dataset",
    "write_dataset",
    "normalise",
    "denormalise",
    "identity_normalisation",
]

SCHEMA_VERSION = 2  # 2: the optional 'val' split; groups of version 1 (no val) are still read
READABLE_SCHEMAS = (1, 2)
CHUNK_BYTES = 2 * 2**20  # target bytes of one chunk (whole samples)
LIKELIHOODS = ("gaussian", "bernoulli")
LABEL_KINDS = ("categorical", "continuous")
REQUIRED_ATTRS = (
    "schema_version",
    "dataset",
    "likelihood",
    "x_shape",
    "feature_names",
    "units",
    "normalisation",
    "labels",
    "sources",
    "params",
    "stand_in",
)
SPLITS = ("train", "test")
OPTIONAL_SPLITS = ("val",)


@dataclass(frozen=True)
class Split:
    """One split: ``x`` (n, *x_shape) and label arrays (n,), all lazy zarr arrays."""

    x: Any  # zarr.Array, float32
    labels: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. 'x_binarised'

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Dataset:
    path: Path
    name: str
    attrs: dict
    train: Split
    test: Split
    likelihood: str  # 'gaussian' | 'bernoulli'
    x_shape: tuple[int, ...]  # per-sample shape, e.g. (59,) or (1, 64, 64)
    val: Split | None = None  # held-out training trials for model selection (schema 2), if prepared


# --------------------------------------------------------------------------- normalisation


def identity_normalisation() -> dict:
    """The ``normalisation`` attribute of data stored in their own units."""
    return {"kind": "none", "mean": [0.0], "std": [1.0]}


def _norm_arrays(attrs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    norm = attrs["normalisation"]
    return np.asarray(norm["mean"], dtype=np.float64), np.asarray(norm["std"], dtype=np.float64)


def normalise(raw: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Raw features (n, D) -> stored features, ``(raw - mean) / std`` (float32).

    ``mean``/``std`` are lists of length 1 or D, broadcast over the flattened sample.
    """
    mean, std = _norm_arrays(attrs)
    flat = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    return ((flat - mean) / std).astype(np.float32).reshape(np.shape(raw))


def denormalise(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Stored features -> raw features (float64): the inverse of ``normalise``."""
    mean, std = _norm_arrays(attrs)
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    return (flat * std + mean).reshape(x.shape)


# --------------------------------------------------------------------------- writing


def _jsonable(value: Any) -> Any:
    """Attributes as plain JSON types (NumPy scalars and arrays, tuples, paths)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number {value} in attributes")
    return value


def _chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return max(1, min(shape[0], math.ceil(CHUNK_BYTES / max(row, 1))))


def _check_arrays(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Refuse to write what ``open_dataset`` would refuse to read."""
    for name, arr in arrays.items():
        parts = name.split("/")
        if len(parts) != 2 or parts[0] not in SPLITS + OPTIONAL_SPLITS or not parts[1]:
            raise DatasetError(path, f"array name {name!r} is not '<train|val|test>/<name>'")
        if arr.dtype not in (np.float32, np.int64):
            raise DatasetError(path, f"array {name!r} has dtype {arr.dtype}; expected float32 or int64")
        if arr.dtype == np.float32 and not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0])
            raise DatasetError(path, f"array {name!r} holds NaN or inf (first in sample {bad})")
    for split in SPLITS:
        if f"{split}/x" not in arrays:
            raise DatasetError(path, f"missing array '{split}/x'")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs and k != "schema_version"]
    if missing:
        raise DatasetError(path, f"missing attributes {missing}")


def write_dataset(path: Path | str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write a data set group atomically (``preprocessing.atomic.atomic_folder``): build it
    beside ``path``, check it, then rename it into place (an existing group is replaced only
    after the new one is complete). Nothing is left behind on failure."""
    path = Path(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    attrs = dict(attrs)
    attrs.setdefault("schema_version", SCHEMA_VERSION)
    _check_arrays(path, arrays, attrs)
    try:
        attrs = _jsonable(attrs)
        json.dumps(attrs)
    except (TypeError, ValueError) as err:
        raise DatasetError(path, f"attributes are not JSON: {err}") from err
    try:
        with atomic_folder(path) as tmp:
            root = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
            root.attrs.update(attrs)
            present = SPLITS + tuple(s for s in OPTIONAL_SPLITS if any(k.startswith(f"{s}/") for k in arrays))
            groups = {split: root.create_group(split) for split in present}
            for name, arr in arrays.items():
                split, key = name.split("/")
                groups[split].create_array(
                    key,
                    data=arr,
                    chunks=(_chunk_rows(arr.shape, arr.dtype.itemsize), *arr.shape[1:]),
                    compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                )
            open_dataset(tmp, check_values=False)
    except DatasetError as err:
        raise DatasetError(path, err.problem) from err
    except WriteError:
        raise
    except OSError as err:  # disk full, quota, read-only: one line naming the group, nothing left
        raise WriteError(path, err) from err


# --------------------------------------------------------------------------- reading


def _require(cond: bool, path: Path, problem: str) -> None:
    if not cond:
        raise DatasetError(path, problem)


def _check_attrs(path: Path, attrs: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    _require(not missing, path, f"schema mismatch: missing attributes {missing}")
    _require(
        attrs["schema_version"] in READABLE_SCHEMAS,
        path,
        f"schema mismatch: schema_version {attrs['schema_version']!r}, this code reads "
        f"{' and '.join(map(str, READABLE_SCHEMAS))} (rerun the prepare stage)",
    )
    _require(isinstance(attrs["dataset"], str) and attrs["dataset"] != "", path, "attribute 'dataset' must be a name")
    likelihood = attrs["likelihood"]
    _require(likelihood in LIKELIHOODS, path, f"attribute 'likelihood' is {likelihood!r}; expected one of {LIKELIHOODS}")
    x_shape = attrs["x_shape"]
    _require(
        isinstance(x_shape, list) and len(x_shape) >= 1 and all(isinstance(d, int) and d > 0 for d in x_shape),
        path,
        f"attribute 'x_shape' must be a list of positive integers, got {x_shape!r}",
    )
    names = attrs["feature_names"]
    _require(isinstance(names, list) and all(isinstance(n, str) for n in names), path, "attribute 'feature_names' must be a list of strings")
    if len(x_shape) == 1:
        _require(len(names) == x_shape[0], path, f"{len(names)} feature_names for x_shape {x_shape}")
    norm = attrs["normalisation"]
    _require(isinstance(norm, Mapping) and {"kind", "mean", "std"} <= set(norm), path, "attribute 'normalisation' needs kind, mean and std")
    size = int(np.prod(x_shape))
    for key in ("mean", "std"):
        vals = norm[key]
        _require(isinstance(vals, list) and len(vals) in (1, size), path, f"normalisation {key} must have 1 or {size} values")
        _require(all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals), path, f"normalisation {key} must be finite numbers")
    _require(all(v > 0 for v in norm["std"]), path, "normalisation std must be positive")
    labels = attrs["labels"]
    _require(isinstance(labels, Mapping), path, "attribute 'labels' must map label names to descriptions")
    for name, spec in labels.items():
        _require(isinstance(spec, Mapping) and spec.get("kind") in LABEL_KINDS, path, f"label {name!r}: kind must be one of {LABEL_KINDS}")
        if spec["kind"] == "categorical":
            classes = spec.get("classes")
            _require(isinstance(classes, list) and len(classes) >= 1, path, f"label {name!r}: categorical labels need a list of classes")
    _require(isinstance(attrs["sources"], list), path, "attribute 'sources' must be a list")
    _require(isinstance(attrs["params"], Mapping), path, "attribute 'params' must be a mapping")
    _require(isinstance(attrs["stand_in"], bool), path, "attribute 'stand_in' must be true or false")
    return likelihood, tuple(x_shape)


def _check_array(path: Path, arr: Any, name: str, dtypes: tuple, shape_tail: tuple[int, ...] | None, n: int | None) -> None:
    _require(isinstance(arr, zarr.Array), path, f"'{name}' is not an array")
    _require(np.dtype(arr.dtype) in [np.dtype(d) for d in dtypes], path, f"array '{name}' has dtype {arr.dtype}; expected {' or '.join(np.dtype(d).name for d in dtypes)}")
    if shape_tail is not None:
        _require(tuple(arr.shape[1:]) == shape_tail, path, f"array '{name}' has shape {arr.shape}; expected (n, {', '.join(map(str, shape_tail))})")
    else:
        _require(arr.ndim == 1, path, f"array '{name}' has shape {arr.shape}; expected (n,)")
    if n is not None:
        _require(arr.shape[0] == n, path, f"array '{name}' has {arr.shape[0]} samples; its x has {n}")
    _require(tuple(arr.chunks[1:]) == tuple(arr.shape[1:]), path, f"array '{name}' is chunked {arr.chunks}; chunks must hold whole samples")


def _check_values(path: Path, arr: Any, name: str, low: float | None, high: float | None, integer_max: int | None) -> None:
    rows = arr.chunks[0]
    for begin in range(0, arr.shape[0], rows):
        block = arr[begin : begin + rows]
        if integer_max is not None:
            bad = (block < 0) | (block >= integer_max)
            if bad.any():
                i = begin + int(np.flatnonzero(bad)[0])
                raise DatasetError(path, f"array '{name}' sample {i}: class code {block[i - begin]} outside 0..{integer_max - 1}")
            continue
        if block.dtype.kind != "f":
            continue
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            i = begin + int(np.flatnonzero(~finite)[0])
            raise DatasetError(path, f"array '{name}' holds NaN or inf (first in sample {i})")
        if low is not None and (block.min() < low or block.max() > high):
            raise DatasetError(path, f"array '{name}' has values outside [{low}, {high}]")


def open_dataset(path: Path | str, check_values: bool = True) -> Dataset:
    """Open a processed data set and check it against the schema.

    Raises ``DatasetError`` (naming ``path`` and the problem) for a missing or foreign
    group, missing attributes or arrays, wrong dtypes or shapes, and, when
    ``check_values``, NaN/inf, class codes outside their classes or Bernoulli data
    outside [0, 1].
    """
    path = Path(path)
    _require(path.exists(), path, "no such data set (run the prepare stage first)")
    try:
        root = zarr.open_group(store=str(path), mode="r")
    except Exception as err:  # zarr raises several types for a folder that is no group
        raise DatasetError(path, f"not a zarr group ({type(err).__name__}: {err})") from err
    attrs = dict(root.attrs)
    likelihood, x_shape = _check_attrs(path, attrs)
    label_specs = attrs["labels"]
    splits = {}
    for split in SPLITS + OPTIONAL_SPLITS:
        if split in OPTIONAL_SPLITS and split not in root:
            continue
        _require(split in root and isinstance(root[split], zarr.Group), path, f"missing group '{split}'")
        group = root[split]
        _require("x" in group, path, f"missing array '{split}/x'")
        x = group["x"]
        _check_array(path, x, f"{split}/x", (np.float32,), x_shape, None)
        n = x.shape[0]
        _require(n >= 1, path, f"array '{split}/x' is empty")
        labels = {}
        for name, spec in label_specs.items():
            _require(name in group, path, f"missing label array '{split}/{name}'")
            dtypes = (np.int64,) if spec["kind"] == "categorical" else (np.int64, np.float32)
            _check_array(path, group[name], f"{split}/{name}", dtypes, None, n)
            labels[name] = group[name]
        extra = {}
        for name in group.array_keys():
            if name == "x" or name in labels:
                continue
            _check_array(path, group[name], f"{split}/{name}", (np.float32,), x_shape, n)
            extra[name] = group[name]
        if check_values:
            bounds = (0.0, 1.0) if likelihood == "bernoulli" else (None, None)
            _check_values(path, x, f"{split}/x", *bounds, None)
            for name, arr in extra.items():
                _check_values(path, arr, f"{split}/{name}", *bounds, None)
            for name, spec in label_specs.items():
                n_classes = len(spec["classes"]) if spec["kind"] == "categorical" else None
                _check_values(path, labels[name], f"{split}/{name}", None, None, n_classes)
        splits[split] = Split(x=x, labels=labels, extra=extra)
    return Dataset(
        path=path,
        name=attrs["dataset"],
        attrs=attrs,
        train=splits["train"],
        test=splits["test"],
        likelihood=likelihood,
        x_shape=x_shape,
        val=splits.get("val"),
    )
