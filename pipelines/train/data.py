"""The training data: a zarr group's training split in memory, or streamed a window of chunks at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.params import TrainParams


@dataclass
class TrainingData:
    """Training inputs as a tensor, or a zarr array streamed a window of chunks at a time.

    Streaming keeps memory flat as the data grow. A uniformly random batch would touch
    dozens of compressed chunks for one or two rows each, so a streamed epoch instead
    visits windows of ``window_rows`` consecutive rows in random order and shuffles
    rows within each window (``epoch_permutation``); a batch then reads at most two
    windows, each decompressed once and kept while batches draw from it.
    """

    x: Any                     # torch.Tensor (in memory) or a zarr array (streamed)
    n: int
    binarise: bool
    data_id: str
    streamed: bool = False
    window_rows: int = 0       # streamed only: rows read at once (whole chunks)
    pin: bool = False          # streamed only: batches come in pinned memory (asynchronous copy to a GPU)
    _windows: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        """Where batches are made: the in-memory tensor's device; the CPU for streamed data."""
        return self.x.device if isinstance(self.x, torch.Tensor) else torch.device("cpu")

    def on_device(self, device: torch.device | str) -> TrainingData:
        """The data as a run on ``device`` reads them.

        On a GPU, in-memory data (those within ``train.memory_budget_mb``) move there once,
        so a step copies nothing from the host and the dynamic binarisation draws on the
        device; streamed data stay on the host and hand out batches in pinned memory,
        which the training loop copies asynchronously. Elsewhere the data are unchanged.
        """
        device = torch.device(device)
        if device.type != "cuda":
            return self
        if self.streamed:
            return dataclasses.replace(self, pin=True)
        return dataclasses.replace(self, x=self.x.to(device))

    def epoch_permutation(self, gen: torch.Generator) -> torch.Tensor:
        if not self.streamed or self.window_rows <= 0:
            return torch.randperm(self.n, generator=gen)
        w = self.window_rows
        starts = torch.randperm(math.ceil(self.n / w), generator=gen) * w
        return torch.cat([s + torch.randperm(min(w, self.n - s), generator=gen) for s in starts.tolist()])

    def _window(self, index: int) -> torch.Tensor:
        if index not in self._windows:
            if len(self._windows) >= 2:  # a batch straddles at most two windows
                self._windows.pop(next(iter(self._windows)))
            lo = index * self.window_rows
            hi = min(lo + self.window_rows, self.n)
            self._windows[index] = torch.from_numpy(np.asarray(self.x[lo:hi], dtype=np.float32))
        return self._windows[index]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.streamed and self.window_rows <= 0:
            # no window: read exactly the rows asked for (sorted, as zarr wants)
            order = torch.argsort(idx)
            rows = np.asarray(self.x.get_orthogonal_selection((idx[order].numpy(),)), dtype=np.float32)
            xb = torch.empty((len(idx),) + rows.shape[1:], dtype=torch.float32)
            xb[order] = torch.from_numpy(rows)
        elif self.streamed:
            window = idx // self.window_rows
            xb = torch.empty((len(idx),) + tuple(self.x.shape[1:]), dtype=torch.float32)
            for w in torch.unique(window).tolist():
                sel = window == w
                xb[sel] = self._window(w)[idx[sel] - w * self.window_rows]
        else:
            xb = self.x[idx]
        if self.binarise:
            # dynamic binarisation: a fresh Bernoulli draw every time a batch is seen
            xb = torch.bernoulli(xb)
        if self.pin:
            xb = xb.pin_memory()
        return xb


def load_training_data(dataset: Any, params: TrainParams) -> TrainingData:
    """Training split of an opened zarr group (``preprocessing.store.Dataset``)."""
    arr = dataset.train.x
    n = int(arr.shape[0])
    if params.max_train_samples:
        n = min(n, params.max_train_samples)
    nbytes = n * int(np.prod(arr.shape[1:])) * 4
    binarise = dataset.likelihood == "bernoulli"
    data_id = data_id_of(dataset)
    if nbytes > params.memory_budget_mb * 2**20:
        chunk_rows = int(arr.chunks[0])
        # about 16 MB a window (whole chunks, 8 of the usual 2 MB ones): two cached windows
        # keep memory flat, and a batch still mixes rows of many samples
        row_bytes = max(1, int(np.prod(arr.shape[1:])) * 4)
        window_chunks = max(1, (16 * 2**20) // (chunk_rows * row_bytes))
        return TrainingData(x=arr, n=n, binarise=binarise, data_id=data_id, streamed=True,
                            window_rows=chunk_rows * window_chunks)
    x = torch.from_numpy(np.asarray(arr[:n], dtype=np.float32))
    return TrainingData(x=x, n=n, binarise=binarise, data_id=data_id)


def data_id_of(dataset: Any) -> str:
    attrs = dict(dataset.attrs)
    blob = json.dumps({k: attrs.get(k) for k in ("sources", "params", "schema_version")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
