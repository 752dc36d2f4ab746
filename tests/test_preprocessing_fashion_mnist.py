"""Fashion-MNIST idx reading and the fashion_mnist stage (synthetic idx files; real ones where installed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import ImageFormatError, SourceError
from preprocessing.fashion_mnist import DEBIAN_DIR, FILES, FashionMnistParams, prepare, read_idx
from preprocessing.store import open_dataset
from conftest import stage_params


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _folder(tmp_path: Path, n_train: int = 30, n_test: int = 12) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "fm"
    folder.mkdir()
    for split, n in (("train", n_train), ("test", n_test)):
        (folder / FILES[f"{split}_images"]).write_bytes(gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)))))
        (folder / FILES[f"{split}_labels"]).write_bytes(gzip.compress(_idx(rng.integers(0, 10, n))))
    return folder


def test_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "a.idx").write_bytes(_idx(a))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)


@pytest.mark.parametrize(
    "content, message",
    [
        (gzip.compress(b"\x01\x02\x08\x01\x00\x00\x00\x01x"), "bad magic"),
        (gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01xxxx"), "data type 0x0d"),
        (gzip.compress(_idx(np.zeros((4, 2))))[:-9], "corrupt or truncated gzip"),
        (gzip.compress(_idx(np.zeros((4, 2)))[:-1]), r"shape \(4, 2\) needs 8 bytes of data, the file has 7"),
    ],
)
def test_bad_idx_files(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "x.gz").write_bytes(content)
    with pytest.raises(ImageFormatError, match=message) as info:
        read_idx(tmp_path / "x.gz")
    assert str(tmp_path / "x.gz") in str(info.value)


def test_prepare_scales_labels_and_binarises(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    prepare(stage_params(FashionMnistParams, "prepare_fashion_mnist", source=str(folder), binarise_seed=5), tmp_path / "f.zarr", progress=False)
    ds = open_dataset(tmp_path / "f.zarr")
    assert ds.likelihood == "bernoulli" and ds.x_shape == (1, 28, 28)
    raw = read_idx(folder / FILES["train_images"])
    np.testing.assert_array_equal(ds.train.x[:, 0], raw.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.test.labels["label"][:], read_idx(folder / FILES["test_labels"]))
    bits = ds.test.extra["x_binarised"][:]
    assert set(np.unique(bits).tolist()) <= {0.0, 1.0}
    x = ds.test.x[:]
    assert (bits[x == 0] == 0).all() and (bits[x == 1] == 1).all()
    prepare(stage_params(FashionMnistParams, "prepare_fashion_mnist", source=str(folder), binarise_seed=5), tmp_path / "g.zarr", progress=False)
    np.testing.assert_array_equal(open_dataset(tmp_path / "g.zarr").test.extra["x_binarised"][:], bits)  # fixed


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="dataset-fashion-mnist"):
        prepare(stage_params(FashionMnistParams, "prepare_fashion_mnist", source=str(tmp_path)), tmp_path / "f.zarr", progress=False)


def test_debian_fashion_mnist(tmp_path: Path) -> None:
    if not Path(DEBIAN_DIR, FILES["test_images"]).is_file():
        pytest.skip(f"Fashion-MNIST not installed in {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)")
    prepare(stage_params(FashionMnistParams, "prepare_fashion_mnist", max_train=500, max_test=200), tmp_path / "f.zarr", progress=False)
    ds = open_dataset(tmp_path / "f.zarr")
    assert len(ds.train) == 500 and len(ds.test) == 200
    assert ds.attrs["labels"]["label"]["classes"][9] == "Ankle boot"
    assert len(read_idx(Path(DEBIAN_DIR, FILES["train_labels"]))) == 60000
