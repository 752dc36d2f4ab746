"""Carried wheels for bench/gpu.py, unpacked before torch is imported (standard library only).

The GPU machine has no network and no pythae. A wheel is a zip of its package folders, so
unpacking it into a folder first on sys.path installs it for `import` (no pip needed). A
carried wheel is unpacked only where this Python lacks the distribution or has one too old
for pythae 0.1.2 or the CUDA tests (pydantic 2 with its matching pydantic_core; typing_extensions
>= 4.6.1; pytest >= 7 with its pure-Python dependencies);
wheels built for another CPython are passed over.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

MINIMUM = {"pydantic": (2,), "typing_extensions": (4, 6, 1), "pytest": (7,)}
TOGETHER = ({"pydantic", "pydantic_core"},)  # versions that must match: unpacked as a pair


def _dist_of(wheel: Path) -> tuple[str, str]:
    """(normalised distribution name, python tag) of a wheel file name."""
    parts = wheel.name[:-4].split("-")
    return re.sub(r"[-_.]+", "_", parts[0]).lower(), parts[-3]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _usable(name: str) -> bool:
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        return False
    return _version(version) >= MINIMUM.get(name, (0,))


def install_wheels(wheels: Path, target: Path) -> dict[str, Any]:
    """Unpack the wheels this Python lacks into `target` and put `target` first on sys.path."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    chosen: dict[str, Path] = {}
    for wheel in sorted(Path(wheels).glob("*.whl")):
        name, python = _dist_of(wheel)
        if not (python.startswith("cp") and python != tag):
            chosen[name] = wheel
    missing = {n for n in chosen if not _usable(n)}
    for group in TOGETHER:
        if missing & group:
            missing |= group & set(chosen)
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(missing):
        with zipfile.ZipFile(chosen[name]) as archive:
            archive.extractall(target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    return {"unpacked": sorted(chosen[n].name for n in missing), "present": sorted(set(chosen) - missing),
            "target": str(target)}


def install_from_argv(argv: list[str], default_wheels: Path, default_site: str) -> dict[str, Any] | None:
    """bench/gpu.py's --wheels/--site read ahead of argparse (so the wheels precede torch's imports)."""
    def value(flag: str, default: Any) -> Any:
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return default

    if "--render-only" in argv:
        return None
    wheels = Path(value("--wheels", default_wheels))
    if not wheels.is_dir():
        return {"unpacked": [], "present": [], "missing_folder": str(wheels)}
    return install_wheels(wheels, Path(value("--site", default_site)))
