"""The zarr contract: NumPy -> zarr -> open_dataset is exact; bad groups fail clearly; writes are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from preprocessing.store import (
    CHUNK_BYTES,
    DatasetError,
    PreprocessingError,
    denormalise,
    identity_normalisation,
    normalise,
    open_dataset,
    write_dataset,
)


def _attrs(**extra) -> dict:
    attrs = {
        "dataset": "toy",
        "likelihood": "gaussian",
        "x_shape": [3],
        "feature_names": ["a", "b", "c"],
        "units": {"x": "none"},
        "normalisation": {"kind": "standardise", "mean": [1.0, 2.0, 3.0], "std": [0.5, 1.0, 2.0]},
        "labels": {"kind": {"kind": "categorical", "classes": ["p", "q"]}, "t": {"kind": "continuous"}},
        "sources": [],
        "params": {"seed": 0},
        "stand_in": True,
    }
    attrs.update(extra)
    return attrs


def _arrays(n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"{split}/x"] = rng.standard_normal((n, 3)).astype(np.float32)
        out[f"{split}/kind"] = rng.integers(0, 2, n).astype(np.int64)
        out[f"{split}/t"] = rng.random(n).astype(np.float32)
    return out


def test_round_trip_is_exact(tmp_path: Path) -> None:
    arrays = _arrays()
    write_dataset(tmp_path / "toy.zarr", arrays, _attrs())
    ds = open_dataset(tmp_path / "toy.zarr")
    assert ds.name == "toy" and ds.likelihood == "gaussian" and ds.x_shape == (3,)
    assert ds.attrs["schema_version"] == 2 and ds.val is None
    for split in ("train", "test"):
        part = getattr(ds, split)
        np.testing.assert_array_equal(part.x[:], arrays[f"{split}/x"])
        np.testing.assert_array_equal(part.labels["kind"][:], arrays[f"{split}/kind"])
        np.testing.assert_array_equal(part.labels["t"][:], arrays[f"{split}/t"])
        assert part.x.dtype == np.float32 and part.labels["kind"].dtype == np.int64


def test_chunks_hold_whole_samples_of_about_chunk_bytes(tmp_path: Path) -> None:
    arrays = {
        "train/x": np.zeros((3000, 1, 16, 16), dtype=np.float32),  # 1 kB a sample
        "test/x": np.zeros((10, 1, 16, 16), dtype=np.float32),
    }
    write_dataset(tmp_path / "img.zarr", arrays, _attrs(x_shape=[1, 16, 16], feature_names=["i"], labels={}, normalisation=identity_normalisation()))
    ds = open_dataset(tmp_path / "img.zarr")
    assert ds.train.x.chunks == (2048, 1, 16, 16)  # CHUNK_BYTES / 1 kB
    assert ds.test.x.chunks == (10, 1, 16, 16)
    assert CHUNK_BYTES >= 2**20
    assert ds.train.x.compressors  # compressed


def test_normalisation_inverts() -> None:
    attrs = _attrs()
    raw = np.random.default_rng(1).standard_normal((7, 3)) * 5 + 2
    np.testing.assert_allclose(denormalise(normalise(raw, attrs), attrs), raw, rtol=1e-6, atol=1e-5)
    scalar = {"normalisation": {"kind": "standardise", "mean": [1.0], "std": [4.0]}}
    np.testing.assert_allclose(denormalise(normalise(raw, scalar), scalar), raw, rtol=1e-6, atol=1e-5)


def test_replacing_an_existing_group_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "toy.zarr"
    write_dataset(target, _arrays(seed=0), _attrs())
    second = _arrays(seed=1)
    write_dataset(target, second, _attrs())
    np.testing.assert_array_equal(open_dataset(target).train.x[:], second["train/x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.zarr"]


def test_failed_write_keeps_the_old_group_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "toy.zarr"
    write_dataset(target, _arrays(), _attrs())
    bad = _arrays(seed=3)
    bad["train/x"][4, 1] = np.nan
    with pytest.raises(DatasetError, match=r"toy\.zarr.*NaN or inf.*sample 4"):
        write_dataset(target, bad, _attrs())
    bad = _arrays(seed=3)
    bad["test/kind"] = bad["test/kind"][:-1]  # wrong length: caught after the arrays are written
    with pytest.raises(DatasetError, match="samples"):
        write_dataset(target, bad, _attrs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.zarr"]
    np.testing.assert_array_equal(open_dataset(target).train.x[:], _arrays()["train/x"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.attrs.update({"schema_version": 99}), "schema mismatch: schema_version 99"),
        (lambda g: g.attrs.__delitem__("labels"), "schema mismatch: missing attributes \\['labels'\\]"),
        (lambda g: g.attrs.update({"likelihood": "poisson"}), "likelihood"),
        (lambda g: g.attrs.update({"x_shape": [4]}), "shape"),
        (lambda g: g["train"].__delitem__("x"), "missing array 'train/x'"),
        (lambda g: g["test"].__delitem__("kind"), "missing label array 'test/kind'"),
        (lambda g: _replace(g, "train/x", np.zeros((50, 3), dtype=np.float64)), "dtype float64"),
        (lambda g: _replace(g, "train/t", np.zeros(49, dtype=np.float32)), "49 samples"),
        (lambda g: _replace(g, "test/x", np.full((20, 3), np.inf, dtype=np.float32)), "NaN or inf"),
        (lambda g: _replace(g, "train/kind", np.full(50, 2, dtype=np.int64)), "class code 2 outside 0..1"),
    ],
)
def test_open_dataset_names_file_and_problem(tmp_path: Path, mutate, message: str) -> None:
    target = tmp_path / "toy.zarr"
    write_dataset(target, _arrays(), _attrs())
    mutate(zarr.open_group(str(target), mode="a"))
    with pytest.raises(DatasetError, match=message) as info:
        open_dataset(target)
    assert str(target) in str(info.value)
    assert isinstance(info.value, PreprocessingError)


def _replace(group, name: str, data: np.ndarray) -> None:
    split, key = name.split("/")
    del group[split][key]
    group[split].create_array(key, data=data, chunks=data.shape)


def test_bernoulli_data_outside_unit_interval_is_refused(tmp_path: Path) -> None:
    arrays = {k: v for k, v in _arrays().items() if k.endswith("/x")}
    attrs = _attrs(likelihood="bernoulli", labels={}, normalisation=identity_normalisation())
    write_dataset(tmp_path / "b.zarr", arrays, attrs)
    with pytest.raises(DatasetError, match=r"outside \[0.0, 1.0\]"):
        open_dataset(tmp_path / "b.zarr")


def test_missing_and_foreign_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such data set"):
        open_dataset(tmp_path / "absent.zarr")
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(DatasetError, match="junk.zarr"):
        open_dataset(tmp_path / "junk.zarr")


def test_attributes_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not JSON"):
        write_dataset(tmp_path / "toy.zarr", _arrays(), _attrs(params={"f": float("nan")}))
    assert not list(tmp_path.iterdir())
    json.dumps(_attrs())  # the fixture itself is plain JSON


def test_val_split_round_trips_and_schema_1_groups_still_open(tmp_path: Path) -> None:
    arrays = _arrays()
    rng = np.random.default_rng(1)
    arrays.update({"val/x": rng.standard_normal((7, 3)).astype(np.float32),
                   "val/kind": rng.integers(0, 2, 7).astype(np.int64), "val/t": rng.random(7).astype(np.float32)})
    write_dataset(tmp_path / "toy.zarr", arrays, _attrs())
    ds = open_dataset(tmp_path / "toy.zarr")
    assert ds.val is not None
    np.testing.assert_array_equal(ds.val.x[:], arrays["val/x"])
    np.testing.assert_array_equal(ds.val.labels["kind"][:], arrays["val/kind"])
    # a group written before the val split (schema 1) opens, without val
    write_dataset(tmp_path / "old.zarr", _arrays(), _attrs(schema_version=1))
    old = open_dataset(tmp_path / "old.zarr")
    assert old.attrs["schema_version"] == 1 and old.val is None
    # a val split missing a label array is refused, naming it
    del arrays["val/t"]
    with pytest.raises(DatasetError, match="val/t"):
        write_dataset(tmp_path / "bad.zarr", arrays, _attrs())
