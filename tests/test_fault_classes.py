"""Every fault class gets the same clean refusal.

* Every writer goes through ``preprocessing.atomic``: its files get the mode the umask
  gives, and a write that fails (disk full, quota, read-only) raises ``WriteError``
  naming the target and the cause, with no temporary left and the old file intact.
  Faults are real: the process's file-size limit (``RLIMIT_FSIZE``: the first write, or
  a later one, fails with EFBIG; works unprivileged) and, where the tests may mount
  one, a full tmpfs (ENOSPC).
* ``vhp prepare`` on a full disk: exit status 2, one line, no ``.<name>.zarr.tmp-*``.
* Errors a retry cannot fix are not retried by the train task.
* Every text reader fed bytes that are not UTF-8 parses or refuses with its own error
  naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from builders import ROOT, synthetic_group, write_params
from pipelines.cli import main
from preprocessing.atomic import atomic_write, atomic_write_text, new_file_mode
from preprocessing.errors import PreprocessingError, WriteError


# --------------------------------------------------------------------------- writers


def _dataset(path: Path, rows: int = 64) -> None:
    from preprocessing.store import identity_normalisation, write_dataset

    rng = np.random.default_rng(0)
    arrays = {"train/x": rng.random((rows, 8), dtype=np.float32), "test/x": rng.random((8, 8), dtype=np.float32)}
    attrs = {"dataset": "t", "likelihood": "gaussian", "x_shape": [8], "feature_names": [f"f{i}" for i in range(8)],
             "units": {}, "normalisation": identity_normalisation(), "labels": {}, "sources": [], "params": {}, "stand_in": False}
    write_dataset(path, arrays, attrs)


def _figure():
    from pipelines.plotting import new_figure

    fig = new_figure(2, 2)
    fig.add_subplot(1, 1, 1).plot(np.arange(50), np.sin(np.arange(50)))
    return fig


def _writers() -> dict:
    """name -> function(path) writing one output with the project's writer for it."""
    import torch

    from pipelines.checkpoint import atomic_torch_save, atomic_write_json
    from pipelines.plotting import save_figure
    from pipelines.sweep.results import results_figure
    from pipelines.report.vega import write_html_template
    from preprocessing.download import atomic_write_text as download_write_text

    from pipelines.sweep.results import aggregate

    summary = aggregate([{"dataset": "d", "model": "vhp", "kappa": k, "seed": 0, "test_log_likelihood": -k, "knn_accuracy": 0.5}
                         for k in (0.1, 1.0)])
    return {
        "atomic_write": lambda p: atomic_write(p, os.urandom(200_000)),
        "atomic_write_text": lambda p: atomic_write_text(p, "x" * 100_000),
        "checkpoint.atomic_torch_save": lambda p: atomic_torch_save(p, {"w": torch.arange(50_000, dtype=torch.float32)}),
        "checkpoint.atomic_write_json": lambda p: atomic_write_json(p, {"k": list(range(20_000))}),
        "figures.save_figure": lambda p: save_figure(_figure(), p),
        "sweep_results.results_figure": lambda p: results_figure(summary, p),
        "vega.write_html_template": write_html_template,
        "download.atomic_write_text": lambda p: download_write_text(p, os.urandom(60_000).hex()),  # new text: it skips an unchanged one
        "store.write_dataset": lambda p: _dataset(p, rows=20_000),
    }


WRITERS = list(_writers())


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_gives_its_files_the_mode_of_the_umask(tmp_path, name, mask) -> None:
    old = os.umask(mask)
    try:
        assert new_file_mode() == 0o666 & ~mask
        target = tmp_path / ("out.zarr" if name == "store.write_dataset" else "out.bin")
        _writers()[name](target)
    finally:
        os.umask(old)
    files = _files(target)
    assert files
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f"{f}: {oct(f.stat().st_mode & 0o777)}"


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Files of this process cannot grow past ``limit`` bytes: writes fail with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("at", ["first", "later"])
@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_refuses_a_failed_write_naming_the_file_and_leaves_nothing(tmp_path, name, at) -> None:
    """EFBIG at the first byte, or after 4 KiB (a later write); the old output survives."""
    write = _writers()[name]
    target = tmp_path / ("out.zarr" if name == "store.write_dataset" else "out.bin")
    write(target)  # an old, complete output
    before = {f: f.read_bytes() for f in _files(target)}
    with pytest.raises(WriteError) as info, file_size_limit(0 if at == "first" else 4096):
        write(target)
    assert str(info.value).startswith(f"{target}: cannot write (File too large")
    assert info.value.errno == errno.EFBIG
    assert _leftovers(tmp_path, {target.name}) == []
    assert {f: f.read_bytes() for f in _files(target)} == before


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root): the RLIMIT_FSIZE tests cover the writers")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free: the first writes pass, a later one fails."""
    with open(disk / "filler", "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * (256 * 1024 - leave))


@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_on_a_full_disk_refuses_with_enospc(tiny_disk, name) -> None:
    target = tiny_disk / ("out.zarr" if name == "store.write_dataset" else "out.bin")
    _fill(tiny_disk, 8192)
    with pytest.raises(WriteError) as info:
        _writers()[name](target)
    assert str(info.value).startswith(f"{target}: cannot write (No space left on device")
    assert _leftovers(tiny_disk, {"filler"}) == []


def _mocap_params(tmp_path: Path, source: Path, **changes) -> Path:
    return write_params(tmp_path / "params.yaml", prepare_mocap={"source": str(source), **changes})


def test_prepare_on_a_full_disk_exits_2_with_one_line_and_no_temporary(tmp_path, capsys, cmu_reference) -> None:
    params = _mocap_params(tmp_path, cmu_reference, subjects=["09", "10"], segment_frames=16, frame_step=1)
    out = tmp_path / "out" / "mocap.zarr"
    out.parent.mkdir()
    with file_size_limit(16384):  # the CLI's own small files pass; the group's chunks do not
        code = main(["prepare", "mocap", "--out", str(out), "--params", str(params), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{out}: cannot write (File too large" in err
    assert list(out.parent.iterdir()) == []  # no .mocap.zarr.tmp-* folder


def test_prepare_on_a_real_full_tmpfs(tiny_disk, tmp_path, capsys, cmu_reference) -> None:
    params = _mocap_params(tmp_path, cmu_reference, subjects=["09", "10"], segment_frames=16, frame_step=1)
    out = tiny_disk / "mocap.zarr"
    _fill(tiny_disk, 16384)
    code = main(["prepare", "mocap", "--out", str(out), "--params", str(params), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err and str(out) in err, err
    assert [p.name for p in tiny_disk.iterdir()] == ["filler"]  # no .mocap.zarr.tmp-* folder


# --------------------------------------------------------------------------- retries


class _State:
    def __init__(self, err: BaseException) -> None:
        self.err = err

    def result(self):
        raise self.err


@pytest.mark.parametrize("err, retry", [
    (WriteError("m.pt", OSError(errno.ENOSPC, "No space left on device")), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), False),
    (OSError(errno.EROFS, "Read-only file system"), False),
    (PermissionError(errno.EACCES, "Permission denied"), False),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), False),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (RuntimeError("CUDA error: an illegal memory access"), True),
])
def test_the_train_task_retries_only_what_a_retry_can_fix(err, retry) -> None:
    from pipelines.errors import NonFiniteTrainingError
    from pipelines.train.flow import _no_retry_for_training_errors

    assert _no_retry_for_training_errors(None, None, _State(err)) is retry
    assert _no_retry_for_training_errors(None, None, _State(NonFiniteTrainingError("nan"))) is False


# --------------------------------------------------------------------------- undecodable input

NOT_UTF8 = b"\xff\xfe\x80\xc3\x28 \xe9t\xe9 \xa0\n"


def _readers(tmp_path: Path, reference: Path | None) -> dict:
    """name -> (file with non-UTF-8 bytes spliced in, function reading it); the real-file readers
    only with the reference data (``reference_data``)."""
    from pipelines.params_file import read_yaml
    from preprocessing.acclaim import parse_amc, parse_asf
    from preprocessing.amass import read_amass
    from preprocessing.bvh import parse_bvh
    from preprocessing.meshes import read_obj, read_ply
    from preprocessing.mocap_sources import _read_index

    def spliced(name: str, data: bytes, at: float = 0.5) -> Path:
        i = data.index(b"\n", int(len(data) * at)) + 1
        path = tmp_path / name
        path.write_bytes(data[:i] + NOT_UTF8 + data[i:])
        return path

    obj = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    ply = b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    readers = {
        "params.yaml": (spliced("params.yaml", (ROOT / "params.yaml").read_bytes()), read_yaml),
        "OBJ": (spliced("m.obj", obj, 0.0), read_obj),
        "PLY": (spliced("m.ply", ply, 0.0), read_ply),
        "npz": (spliced("t.npz", b"PK\x03\x04" + bytes(range(256)) * 4 + b"\n", 0.0), read_amass),
    }
    if reference is None:
        return readers
    cmu, bvh = reference / "cmu" / "09", (reference / "bvh" / "09" / "09_03.bvh").read_bytes()
    skeleton = parse_asf(cmu / "09.asf")
    return readers | {
        "ASF": (spliced("09.asf", (cmu / "09.asf").read_bytes()), parse_asf),
        "AMC": (spliced("09_03.amc", (cmu / "09_03.amc").read_bytes()), lambda p: parse_amc(p, skeleton)),
        "BVH": (spliced("09_03.bvh", bvh), parse_bvh),
        "BVH joint name": (spliced("name.bvh", bvh.replace(b"JOINT lfemur", b"JOINT lf\xffemur"), 0.0), parse_bvh),
        "INDEX.tsv": (spliced("INDEX.tsv", (reference / "cmu" / "INDEX.tsv").read_bytes()), _read_index),
    }


READERS = ["params.yaml", "ASF", "AMC", "BVH", "BVH joint name", "OBJ", "PLY", "npz", "INDEX.tsv"]
ON_REAL_FILES = ("ASF", "AMC", "BVH", "BVH joint name", "INDEX.tsv")  # need the reference data


@pytest.mark.parametrize("name", READERS)
def test_every_reader_given_bytes_that_are_not_utf8_reads_or_refuses_naming_the_file(tmp_path, name, request) -> None:
    from pipelines.params_file import ParamsError

    reference = request.getfixturevalue("reference_data") if name in ON_REAL_FILES else None
    path, read = _readers(tmp_path, reference)[name]
    try:
        got = read(path)
    except (PreprocessingError, ParamsError) as err:
        assert str(path) in str(err), err
        assert len(str(err).splitlines()) == 1
        if name == "params.yaml":
            assert "not UTF-8 text (line" in str(err)
        return
    # Accepted only where the format lets a reader skip the line (an unknown OBJ statement,
    # an unknown PLY header line) without changing the result, or as a name (BVH).
    assert name in ("OBJ", "PLY", "BVH joint name"), f"{name}: the spliced bytes were accepted"
    if name == "BVH joint name":
        assert "lf\xffemur" in got.skeleton.joint_names
    else:
        clean = tmp_path / f"clean{path.suffix}"
        clean.write_bytes(path.read_bytes().replace(NOT_UTF8, b""))
        ref = read(clean)
        np.testing.assert_array_equal(got.vertices, ref.vertices)
        np.testing.assert_array_equal(got.triangles, ref.triangles)


def test_the_cli_refuses_an_undecodable_params_file_in_one_line(tmp_path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_bytes((ROOT / "params.yaml").read_bytes() + NOT_UTF8)
    code = main(["prepare", "mocap", "--out", str(tmp_path / "m.zarr"), "--params", str(params), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(params) in err and "not UTF-8 text" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_read_only_output_folder_is_one_line(tmp_path, capsys, cmu_reference) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        params = _mocap_params(tmp_path, cmu_reference, subjects=["09"], segment_frames=16)
        code = main(["prepare", "mocap", "--out", str(out / "m.zarr"), "--params", str(params), "--no-progress"])
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Permission denied" in err, err


def test_write_error_survives_pickling_with_its_message() -> None:
    import pickle

    err = WriteError("/x/model.pt", OSError(errno.ENOSPC, "No space left on device"))
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "/x/model.pt: cannot write (No space left on device)" and back.errno == errno.ENOSPC


def test_train_on_a_full_disk_exits_2_in_one_line_and_is_not_retried(tmp_path, harness, capsys, monkeypatch) -> None:
    import pipelines.train.flow

    synthetic_group(tmp_path / "toy.zarr", n_train=64)
    params = write_params(tmp_path / "params.yaml", train={"epochs": 2, "checkpoint_every": 1},
                          model={"hidden": [512, 512]})  # a checkpoint of several MB: beyond the limit below
    calls = []
    real = pipelines.train.flow.train_one
    monkeypatch.setattr(pipelines.train.flow, "train_one", lambda *a, **k: calls.append(1) or real(*a, **k))
    out, checkpoints = tmp_path / "m", tmp_path / "ck"
    args = ["train", "--dataset", "toy", "--model", "vhp", "--data", str(tmp_path / "toy.zarr"), "--out", str(out),
            "--checkpoints", str(checkpoints), "--params", str(params), "--no-progress"]
    with file_size_limit(1 << 20):  # the captured console output stays below it, the checkpoint does not
        code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("vhp train")]
    assert code == 2 and len(lines) == 1 and "cannot write (File too large)" in lines[0] and "Traceback" not in err, err
    assert calls == [1]  # WriteError: no retry
    leftovers = [p for folder in (out, checkpoints) if folder.exists() for p in folder.rglob("*.tmp")]
    assert leftovers == []
