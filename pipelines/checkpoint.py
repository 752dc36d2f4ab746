"""Checkpoints and small atomic file writes.

A checkpoint is a plain dict of tensors and primitives (weights, optimiser,
RNG states, constraint state, config), so it loads with
``torch.load(weights_only=True)``: a tampered file carrying arbitrary pickled
objects is refused rather than executed. Every file is written to a temporary
path beside its target and renamed into place, so a kill at any moment leaves
either the previous complete file or the new complete file, never half of one.
The temporary name carries the writer's host and process id; the next write to
the same target removes those whose process is gone (a writer killed mid-save),
and no reader ever opens them.

``load_payload`` is strict: it checks every record of the zip archive against
its CRC-32 before unpickling, so a torn or corrupted file raises
``CheckpointError`` instead of yielding garbage weights.

Fault injection: with the environment variable ``VHP_FAULT_INJECT`` set to one
of ``FAULT_POINTS``, every atomic write in that process kills the process with
SIGKILL at that point: ``mid-write`` (half the bytes in the temporary file),
``after-write`` (all bytes written and flushed, not yet fsynced),
``after-fsync`` (the temporary complete, not yet renamed) and ``after-rename``
(the target replaced, its directory not yet fsynced). Tests use it to show
that a kill at each point leaves the previous or the new file.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import pickle
import signal
import socket
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vhp_core import ModelConfig


from pipelines.errors import CheckpointError  # noqa: E402,F401  (raised by the loaders below)
from preprocessing.atomic import TMP_SUFFIX as _TMP_SUFFIX  # noqa: E402
from preprocessing.atomic import atomic_write  # noqa: E402




FAULT_POINTS = ("mid-write", "after-write", "after-fsync", "after-rename")


def _fault_point(point: str) -> None:
    """Kill this process at ``point`` when ``VHP_FAULT_INJECT`` names it (see the module notes)."""
    chosen = os.environ.get("VHP_FAULT_INJECT")
    if not chosen:
        return
    if chosen not in FAULT_POINTS:
        raise ValueError(f"VHP_FAULT_INJECT={chosen!r} is none of {', '.join(FAULT_POINTS)}")
    if chosen == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of writes to ``path`` left by a process of this host that is gone."""
    path = Path(path)
    prefix, host = f".{path.name}.", socket.gethostname()
    stale = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*{_TMP_SUFFIX}"):
        owner = tmp.name[len(prefix) : -len(_TMP_SUFFIX)].rpartition(".")[0]  # drop mkstemp's random part
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and not _process_alive(int(pid)):
            stale.append(tmp)
    return stale


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """``preprocessing.atomic.atomic_write`` with this process as the temporary's owner
    (so ``stale_temporaries`` can tell a dead writer's leftovers) and the fault points."""
    path = Path(path)
    atomic_write(path, data, tag=_owner(), hook=_fault_point)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def atomic_torch_save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def _check_archive(path: Path) -> None:
    """Refuse a torn or corrupted zip-format checkpoint: every record must match its CRC-32."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return  # not a zip archive: torch's weights-only unpickler decides below
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as err:
        raise CheckpointError(f"{path}: torn or corrupted checkpoint (incomplete zip archive: {err})") from err
    if bad is not None:
        raise CheckpointError(f"{path}: torn or corrupted checkpoint (record {bad!r} fails its CRC-32 check)")


def load_payload(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; refuse anything else.

    Raises ``CheckpointError`` for a missing, torn, corrupted, tampered or foreign file;
    callers polling a checkpoint that is being rewritten need not retry (the writer
    renames complete files into place), so any error here is real.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        _check_archive(path)
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"containers (tampered or not written by vhp): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"{path}: not a vhp checkpoint (no 'config'/'state_dict')")
    return payload


def config_to_dict(config: "ModelConfig") -> dict[str, Any]:
    return dataclasses.asdict(config)


# ModelConfig fields added after checkpoints were first written, with what a checkpoint
# without them meant: the Gaussian sigma was fixed or learned, never calibrated.
FIELDS_ADDED_LATER: dict[str, Any] = {"std_calibration": "none", "std_per_dim": False}


def config_from_dict(data: dict[str, Any]) -> "ModelConfig":
    """The ModelConfig stored in a checkpoint; a checkpoint older than a field in
    ``FIELDS_ADDED_LATER`` gets that field's old meaning, any other missing field is refused."""
    from vhp_core import ModelConfig

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {key: value for key, value in FIELDS_ADDED_LATER.items() if key not in data}
    for key, value in data.items():
        if key not in fields:
            raise CheckpointError(f"checkpoint config has unknown key {key!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    missing = sorted(fields - set(kwargs))
    if missing:
        raise CheckpointError(f"checkpoint config lacks {', '.join(map(repr, missing))}")
    return ModelConfig(**kwargs)


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint alone (config stored beside the weights)."""
    from vhp_core import build_model

    payload = load_payload(path)
    config = config_from_dict(payload["config"])
    model = build_model(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored config ({err})") from err
    model.eval()
    return model, payload

