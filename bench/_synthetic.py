"""Synthetic binary data for the benches that time a step or an estimate without a data set."""

from __future__ import annotations

import torch


def synthetic_binary_batch(batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Binary data from 10 random prototypes with 5% flip noise (MNIST-sized stand-in)."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, dim, generator=gen) < 0.3
    labels = torch.randint(10, (batch,), generator=gen)
    flips = torch.rand(batch, dim, generator=gen) < 0.05
    return (prototypes[labels] ^ flips).float()
