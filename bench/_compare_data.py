"""The pythae comparison's data: dynamically binarised Fashion-MNIST from the prepare stage's zarr group.

Training images are kept as uint8 grey levels and every batch is a fresh Bernoulli draw
(seeded per epoch, the same for every row); test log-likelihoods use the group's fixed
binarised test set `test/x_binarised`.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "processed" / "fashion_mnist.zarr"


def ensure_data(path: Path) -> None:
    """Create the zarr group with the prepare stage's command when it is missing."""
    if path.exists():
        return
    cmd = [sys.executable, "-m", "pipelines.cli", "prepare", "fashion_mnist", "--out", str(path), "--no-progress"]
    print("preparing data:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


@dataclass
class Arrays:
    train: torch.Tensor  # (N, 1, 28, 28) uint8 grey levels (byte = round(255 x)); 4x smaller than float32
    test_binarised: torch.Tensor  # (10000, 1, 28, 28) float32 0/1, the group's fixed binarisation
    x_shape: tuple[int, ...]


def load_arrays(path: Path, train_n: int) -> Arrays:
    """Train grey levels and the fixed binarised test set from the zarr group."""
    from preprocessing.store import open_dataset

    ds = open_dataset(path, check_values=False)
    if ds.likelihood != "bernoulli" or "x_binarised" not in ds.test.extra:
        raise SystemExit(f"{path}: expected a Bernoulli data set with test/x_binarised")
    n = len(ds.train) if train_n <= 0 else min(train_n, len(ds.train))
    # Converted block by block so that no float copy of the whole set raises the peak RSS.
    train = torch.empty((n, *ds.x_shape), dtype=torch.uint8)
    for i in range(0, n, 5000):
        block = np.asarray(ds.train.x[i : min(n, i + 5000)])
        train[i : i + len(block)] = torch.from_numpy(np.rint(block * 255.0).astype(np.uint8))
    test = torch.from_numpy(np.asarray(ds.test.extra["x_binarised"][:], dtype=np.float32))
    return Arrays(train=train, test_binarised=test, x_shape=tuple(ds.x_shape))


def subset_indices(n_test: int, n: int, seed: int) -> torch.Tensor:
    """The fixed test subset shared by both libraries (a seeded permutation prefix)."""
    g = torch.Generator().manual_seed(seed + 12345)
    return torch.randperm(n_test, generator=g)[:n].sort().values


def epoch_batches(train: torch.Tensor, epoch: int, batch_size: int, seed: int):
    """The epoch's batches: a seeded shuffle and a fresh binarisation per batch, same for every row."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(train.shape[0], generator=g)
    for i in range(0, train.shape[0], batch_size):
        grey = train[order[i : i + batch_size]].float().div_(255.0)
        yield torch.bernoulli(grey, generator=g)
