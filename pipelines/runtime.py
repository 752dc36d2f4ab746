"""Where a training run executes: errors, device, threads, determinism and the run lock."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch
from filelock import FileLock, Timeout

from pipelines.errors import RunLockedError, TrainingError
from vhp_core.precision import apply_tf32_policy


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` fails clearly without a GPU.

    On CUDA the TF32 policy of ``vhp_core.precision`` is applied (fp32 stays IEEE fp32).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("base.device is 'cuda' but no CUDA device is available")
        apply_tf32_policy()
    return device


def set_threads(threads: int) -> int:
    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def set_determinism(seed: int) -> None:
    """Same seed and params -> same weights (deterministic kernels; seeds every device's generator).

    cuBLAS is deterministic only with a fixed workspace, which must be set before its first
    use: CUBLAS_WORKSPACE_CONFIG is set here unless the environment already chose one.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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
