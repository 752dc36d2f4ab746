"""Queries of a trained model that the train and evaluate stages share.

Pure functions of a model and arrays (no files, no figures): the test split's
inputs as every test-set number reads them, the posterior means of the encoder,
the decoder's means, and the loss terms averaged over a set of points. The train
stage scores its val and test splits with ``mean_loss_terms`` and the evaluate
stage its test split, so the two stages' numbers agree. Nothing here imports a
stage's package (``pipelines.train``, ``pipelines.evaluate``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def rows(array: Any, index: np.ndarray | None = None) -> np.ndarray:
    """Rows of a zarr or NumPy array as float32 (all rows, or those of a sorted index)."""
    if index is None:
        return np.asarray(array[:], dtype=np.float32)
    if isinstance(array, np.ndarray):
        return array[index].astype(np.float32)
    # Orthogonal selection with a sorted index reads each zarr chunk once.
    return np.asarray(array.oindex[np.asarray(index)], dtype=np.float32)


def test_inputs(dataset: Any) -> np.ndarray:
    """The test split as float32 rows, as every test-set number is computed on."""
    # Bernoulli likelihoods need binary data; the group carries a fixed seeded binarisation.
    if dataset.likelihood == "bernoulli":
        binarised = (getattr(dataset.test, "extra", None) or {}).get("x_binarised")
        if binarised is not None:
            return rows(binarised)
    return rows(dataset.test.x)


@torch.no_grad()
def encode_means(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """E_q[z|x] for every row of x: (N, latent) float64."""
    parts = [model.encode(torch.from_numpy(x[i:i + batch_size]))[0] for i in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()


@torch.no_grad()
def decode_means(model: torch.nn.Module, z: np.ndarray, batch_size: int) -> np.ndarray:
    """Flat decoder means of latent points: (N, D) float64."""
    dtype = next(model.parameters()).dtype
    z_t = torch.as_tensor(np.asarray(z), dtype=dtype)
    parts = [model.decoder_mean_flat(chunk) for chunk in torch.split(z_t, batch_size)]
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, model.config.data_dim))


@torch.no_grad()
def mean_loss_terms(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> dict[str, float]:
    """Batch-size-weighted means of the loss terms at lambda = 1 over x (z drawn from the global torch RNG)."""
    sums = {"elbo": 0.0, "reconstruction": 0.0, "nll": 0.0, "regulariser": 0.0}
    device = next(model.parameters()).device
    for i in range(0, len(x), batch_size):
        batch = torch.from_numpy(x[i:i + batch_size]).to(device)
        terms = model.loss(batch)
        for key in sums:
            sums[key] += float(getattr(terms, key)) * len(batch)
    return {k: v / max(len(x), 1) for k, v in sums.items()}
