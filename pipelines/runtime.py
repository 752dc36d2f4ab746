"""Where a training run executes: errors, device, threads, determinism and the run lock."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch
from filelock import FileLock, Timeout

from pipelines.errors import RunLockedError, TrainingError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` fails clearly without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("base.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def set_threads(threads: int) -> int:
    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def set_determinism(seed: int) -> None:
    """Same seed and params -> same weights (CPU kernels in deterministic mode)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """One training run per (data set, model): a second one is refused, not interleaved.

    The lock lives in the run's checkpoint folder (the model folder is DVC's to
    clear). The refusal names the PID of the run holding it. On release the lock
    and PID files are removed, and the folder too when nothing else is in it.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".train.lock"), timeout=0)
    pid_file = folder / ".train.pid"
    try:
        lock.acquire()
    except Timeout as err:
        owner = pid_file.read_text().strip() if pid_file.exists() else "?"
        raise RunLockedError(
            f"{folder}: another training run (pid {owner}) is writing here; refusing to start"
        ) from err
    try:
        pid_file.write_text(str(os.getpid()))
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
