"""Checkpoint writes killed at chosen points, torn and tampered files.

A kill is injected at a named point of the atomic writer (``VHP_FAULT_INJECT``, see
``pipelines/checkpoint.py``) in a subprocess, so every run lands exactly where it
claims to: half-way through the write, after the write, after the fsync, after the
rename. The previous checkpoint must survive every kill before the rename and the new
one every kill after it.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from pipelines.checkpoint import FAULT_POINTS, CheckpointError, atomic_torch_save, load_payload, stale_temporaries

ROOT = Path(__file__).resolve().parents[1]

# The new payload is large enough that half of it is many pages of the file.
SAVER = textwrap.dedent(
    """
    import sys, torch
    from pipelines import checkpoint
    new = {"config": {"tag": "new"}, "state_dict": {"w": torch.arange(1_000_000, dtype=torch.float32)}}
    if sys.argv[2] == "direct":
        # A writer that is not atomic: straight into the target, same fault points.
        def direct(path, data):
            view = memoryview(data).cast("B")
            with open(path, "wb") as fh:
                fh.write(view[: len(view) // 2])
                fh.flush()
                checkpoint._fault_point("mid-write")
                fh.write(view[len(view) // 2 :])
        checkpoint.atomic_write_bytes = direct
    checkpoint.atomic_torch_save(sys.argv[1], new)
    print("saved", flush=True)
    """
)


def save_killed_at(path: Path, point: str, writer: str = "atomic") -> subprocess.CompletedProcess:
    script = path.parent.parent / "saver.py"
    script.write_text(SAVER)
    env = dict(os.environ, VHP_FAULT_INJECT=point)
    return subprocess.run([sys.executable, str(script), str(path), writer], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def old_payload() -> dict:
    return {"config": {"tag": "old"}, "state_dict": {"w": torch.full((5,), 7.0)}}


def assert_is(payload: dict, tag: str) -> None:
    assert payload["config"] == {"tag": tag}
    if tag == "old":
        assert torch.equal(payload["state_dict"]["w"], torch.full((5,), 7.0))
    else:
        assert torch.equal(payload["state_dict"]["w"], torch.arange(1_000_000, dtype=torch.float32))


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_kill_at_each_point_of_a_save_leaves_the_old_or_the_new_checkpoint(tmp_path, point):
    folder = tmp_path / "ck"
    path = folder / "checkpoint.pt"
    atomic_torch_save(path, old_payload())

    done = save_killed_at(path, point)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])
    assert "saved" not in done.stdout

    renamed = point == "after-rename"
    assert_is(load_payload(path), "new" if renamed else "old")
    leftovers = sorted(p.name for p in folder.iterdir() if p.name != "checkpoint.pt")
    if renamed:
        assert leftovers == []
    else:
        # The kill hit the write itself: its temporary is there, beside (not instead of) the checkpoint.
        assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.pt.") and leftovers[0].endswith(".tmp")
        assert [p.name for p in stale_temporaries(path)] == leftovers
        temporary = folder / leftovers[0]
        with pytest.raises(CheckpointError, match="torn or corrupted") if point == "mid-write" else nullcontext():
            assert_is(load_payload(temporary), "new")  # complete from after-write on

    # The next save replaces the checkpoint and removes the dead writer's temporary.
    atomic_torch_save(path, {"config": {"tag": "next"}, "state_dict": {}})
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]
    assert load_payload(path)["config"] == {"tag": "next"}


def test_the_kill_harness_catches_a_writer_that_is_not_atomic(tmp_path):
    """The same kill against a writer that writes straight into the target leaves a torn
    file, and loading it fails loudly: the test above would see it."""
    path = tmp_path / "ck" / "checkpoint.pt"
    atomic_torch_save(path, old_payload())
    done = save_killed_at(path, "mid-write", writer="direct")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    with pytest.raises(CheckpointError, match="torn or corrupted"):
        load_payload(path)


def test_a_torn_or_corrupted_checkpoint_is_refused_loudly(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save(path, {"config": {}, "state_dict": {"w": torch.arange(50_000, dtype=torch.float32)}})
    whole = path.read_bytes()
    for n_bytes in (0, 4, 100, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:n_bytes])
        with pytest.raises(CheckpointError, match="torn or corrupted|unreadable"):
            load_payload(path)
    # One flipped bit in the tensor data: torch.load alone would return wrong weights.
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"torn or corrupted checkpoint \(record '.*data/0' fails its CRC-32"):
        load_payload(path)


def test_an_unknown_fault_point_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VHP_FAULT_INJECT", "after-lunch")
    with pytest.raises(ValueError, match="after-lunch"):
        atomic_torch_save(tmp_path / "c.pt", old_payload())
    assert list(tmp_path.iterdir()) == []


class _WritesMarker:
    """Unpickling this calls ``open(marker, 'w')``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_a_tampered_checkpoint_is_refused_and_its_code_never_runs(tmp_path, container):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    payload = {"config": {}, "state_dict": {"w": torch.zeros(2)}, "extra": _WritesMarker(marker)}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match=r"refused to load: the file holds objects other than tensors"):
        load_payload(path)
    assert not marker.exists()


def test_a_checkpoint_older_than_a_config_field_loads_and_one_missing_any_other_is_refused(tmp_path):
    # ModelConfig has no defaults; a checkpoint written before std_calibration/std_per_dim
    # existed meant a fixed or learned sigma (pipelines.checkpoint.FIELDS_ADDED_LATER).
    from builders import model_config
    from pipelines.checkpoint import config_to_dict, load_model
    from vhp_core import build_model

    config = model_config(model="vhp", hidden=(8,), prior_hidden=(8,), std_calibration="none")
    state = build_model(config).state_dict()
    old = {k: v for k, v in config_to_dict(config).items() if k not in ("std_calibration", "std_per_dim")}
    atomic_torch_save(tmp_path / "old.pt", {"config": old, "state_dict": state})
    assert load_model(tmp_path / "old.pt")[0].config == config
    del old["latent_dim"]
    atomic_torch_save(tmp_path / "bad.pt", {"config": old, "state_dict": state})
    with pytest.raises(CheckpointError, match="latent_dim"):
        load_model(tmp_path / "bad.pt")
