"""Fashion-MNIST -> ``fashion_mnist.zarr``: 28x28 grayscale images in [0, 1] and labels.

Based on Xiao, Rasul & Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking
machine learning algorithms" (2017), read from the four gzipped idx files (LeCun's MNIST
format: a big-endian magic ``0x0000 08 <ndim>``, ``ndim`` big-endian ``uint32`` sizes,
then ``uint8`` data) that Debian's ``dataset-fashion-mnist`` package installs in
``/usr/share/datasets/fashion-mnist``. The likelihood is Bernoulli, as in the papers'
log-likelihood tables; ``test/x_binarised`` is one fixed binarisation of the test set
(pixel ~ Bernoulli(intensity), seeded) so that every model is scored on the same bits.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from preprocessing.embedded import sha256_file
from preprocessing.errors import ImageFormatError, SourceError
from preprocessing.store import identity_normalisation, write_dataset

__all__ = ["FashionMnistParams", "prepare", "read_idx", "CLASSES", "DEBIAN_DIR"]

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class FashionMnistParams:
    """The ``prepare_fashion_mnist`` section of params.yaml."""

    source: str  # folder with the four idx .gz files
    binarise_seed: int  # seed of the fixed binarised test set
    max_train: int  # keep the first n training images (0 = all; for quick runs)
    max_test: int

    def __post_init__(self) -> None:
        if self.max_train < 0 or self.max_test < 0:
            raise ValueError("max_train and max_test must be >= 0")


def read_idx(path: Path | str) -> np.ndarray:
    """The array of a gzipped (or plain) idx file of unsigned bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ImageFormatError(path, None, f"cannot read file ({err.strerror or err})") from err
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise ImageFormatError(path, None, f"corrupt or truncated gzip data ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ImageFormatError(path, None, "not an idx file (bad magic number)")
    if data[2] != 0x08:
        raise ImageFormatError(path, None, f"idx data type 0x{data[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ImageFormatError(path, None, "idx header truncated")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ImageFormatError(path, None, f"idx shape {shape} needs {size} bytes of data, the file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def prepare(params: FashionMnistParams, out: Path | str, progress: bool = True) -> None:
    """Read the idx files, scale to [0, 1], binarise the test set, write ``out``."""
    folder = Path(params.source)
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise SourceError(folder, f"missing {missing} (on Debian: apt-get install dataset-fashion-mnist)")
    parts = {key: read_idx(folder / name) for key, name in FILES.items()}
    arrays = {}
    for split, limit in (("train", params.max_train), ("test", params.max_test)):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ImageFormatError(folder / FILES[f"{split}_images"], None, f"images have shape {images.shape}; expected (n, 28, 28)")
        if labels.shape != (len(images),):
            raise ImageFormatError(folder / FILES[f"{split}_labels"], None, f"{labels.shape} labels for {len(images)} images")
        if labels.max() >= len(CLASSES):
            raise ImageFormatError(folder / FILES[f"{split}_labels"], None, f"label {labels.max()} outside 0..{len(CLASSES) - 1}")
        if limit:
            images, labels = images[:limit], labels[:limit]
        arrays[f"{split}/x"] = (images.astype(np.float32) / np.float32(255.0))[:, None]
        arrays[f"{split}/label"] = labels.astype(np.int64)
    rng = np.random.default_rng(params.binarise_seed)
    arrays["test/x_binarised"] = (rng.random(arrays["test/x"].shape, dtype=np.float32) < arrays["test/x"]).astype(np.float32)
    attrs = {
        "dataset": "fashion_mnist",
        "likelihood": "bernoulli",
        "x_shape": [1, 28, 28],
        "feature_names": ["intensity"],
        "units": {"x": "intensity in [0, 1] (byte / 255)", "x_binarised": "0 or 1, Bernoulli(intensity) with binarise_seed"},
        "normalisation": identity_normalisation(),
        "labels": {"label": {"kind": "categorical", "classes": CLASSES}},
        "sources": [{"path": str(folder / name), "sha256": sha256_file(folder / name)} for name in FILES.values()],
        "params": asdict(params),
        "stand_in": False,
        "source": "Fashion-MNIST idx files",
    }
    write_dataset(out, arrays, attrs)
