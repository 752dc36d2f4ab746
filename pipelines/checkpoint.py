"""Checkpoints and small atomic file writes.

A checkpoint is a plain dict of tensors and primitives (weights, optimiser,
RNG states, constraint state, config), so it loads with
``torch.load(weights_only=True)``: a tampered file carrying arbitrary pickled
objects is refused rather than executed. Every file is written to a temporary
path beside its target and renamed into place, so a kill at any moment leaves
either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vhp_core import ModelConfig


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, tampered or mismatched."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def atomic_torch_save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_payload(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
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


def config_from_dict(data: dict[str, Any]) -> "ModelConfig":
    from vhp_core import ModelConfig

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise CheckpointError(f"checkpoint config has unknown key {key!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
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
