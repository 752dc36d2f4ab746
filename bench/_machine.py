"""The machine facts every bench records beside its figures: matmul peaks, memory, load, CPU, versions.

A figure measured on shared cores means little without the state of the machine it came
from, so each bench records the same facts the same way: the fp32/bf16 matmul peaks of the
run (what fraction of the machine a figure reaches), the process's peak and current resident
memory (the kernel's VmHWM/VmRSS), the load average and the share of CPU time that was busy
or stolen by the hypervisor during the run, the CPU (lscpu, torch's CPU capability) and the
versions of Python and the packages measured.

Standard library and torch only: bench/gpu.py imports it on a machine without the pipeline.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------- matmul peaks


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5, rounds: int = 3) -> float:
    """Best-of-rounds GFLOP/s of an n x n x n matmul in `dtype`.

    n is halved (down to 256) while one matmul takes longer than 0.25 s: a CPU without
    native bf16 emulates it at about 1 GFLOP/s, where one 2048^3 product takes over 10 s
    and a peak measurement several minutes.
    """
    while True:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        a @ b
        if time.perf_counter() - start < 0.25 or n <= 256:
            break
        n //= 2
    a @ b
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peaks(threads: int | None = None) -> dict[str, float]:
    """{'fp32': GFLOP/s, 'bf16': GFLOP/s} with `threads` torch threads (None: as set)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return {name: matmul_peak_gflops(dtype) for name, dtype in PRECISIONS.items()}


# --------------------------------------------------------------------------- memory


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (MB)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float | None:
    """Resident set size of this process now (MB), None where /proc is missing."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs), so that a later
    phase's peak is not masked by an earlier one (data loading)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- load


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_times() -> dict[str, int]:
    """The machine's cumulative CPU time counters (USER_HZ ticks) from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, map(int, fields)))


def machine_load(start: dict[str, int], end: dict[str, int]) -> dict[str, float | None]:
    """Busy and stolen fractions of the machine's CPU time between two cpu_times() readings."""
    if not start or not end:
        return {"busy_fraction": None, "steal_fraction": None}
    delta = {k: end[k] - start[k] for k in start}
    total = sum(delta.values()) or 1
    return {"busy_fraction": 1.0 - (delta["idle"] + delta["iowait"]) / total, "steal_fraction": delta["steal"] / total}


# --------------------------------------------------------------------------- CPU and versions


def lscpu(field: str) -> str | None:
    """One field of `lscpu` ('Model name', 'Flags', ...), None where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


def version(name: str) -> str | None:
    """The installed version of distribution `name`, None where it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """What `platform` calls the CPU (processor, else machine type)."""
    return platform.processor() or platform.machine()


def cores_line() -> str:
    """'x86_64, 2 cores': the short machine line of the claims-type benches."""
    return f"{platform.machine()}, {os.cpu_count()} cores"


def memory_gib() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def machine_info(load: tuple[float, float, float], packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The CPU, memory, interpreter and versions (numpy, torch and `packages`), and the load at the start."""
    import numpy as np

    flags = lscpu("Flags") or ""
    return {
        "cpu_model": lscpu("Model name"),
        "cpus": os.cpu_count(),
        "cores_per_socket": lscpu("Core(s) per socket"),
        "threads_per_core": lscpu("Thread(s) per core"),
        "flags_bf16": "avx512_bf16" in flags,
        "flags_avx512": "avx512f" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        **{name: version(name) for name in packages},
        "numpy": np.__version__,
        "load_average_at_start": load,
    }
