"""Fuzzing of mutated real files: CMU ASF/AMC trials and the Surrey Face Model.

Real files (CMU trials and the Surrey Face Model from the shared
reference folder) are mutated one change at a time (a line
deleted, duplicated, swapped or inserted, a number corrupted or made huge, bytes
inserted, the file truncated, the line endings flipped). Each mutated file must either
parse to something valid or raise our own error naming the file and a line (or byte)
at, or within one frame or block of, the mutated place. Through the command line, a
mutated trial ends ``vhp prepare mocap`` with exit status 2, one line on stderr naming
the file, and nothing written.

The trials are short ones (128 and 362 frames), one with LF and one with CRLF line
endings, each with its subject's skeleton (one CRLF, one LF).
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.cli import main
from preprocessing.acclaim import MAX_ABS_ANGLE_DEG, MAX_ABS_POSITION, parse_amc, parse_asf
from preprocessing.skeletons import Skeleton
from preprocessing.errors import MeshFormatError, MocapFormatError
from preprocessing.meshes import MAX_ABS_COORDINATE, read_blendshapes, read_obj, read_sfm

ROOT = Path(__file__).resolve().parents[1]

# (trial, skeleton) under cmu/: 09_03 has LF endings and 09.asf CRLF; 10_03 the reverse.
PAIRS = [("09/09_03.amc", "09/09.asf"), ("10/10_03.amc", "10/10.asf")]
FRAME_LINES = 30  # a CMU frame: its number and 29 bone lines
ASF_BLOCK_LINES = 30  # the longest ASF block (the hierarchy) in the CMU skeletons

NOT_NUMBERS = ["nan", "inf", "-inf", "1e999", "--1", "1.2.3", "abc", "0x10", "1_0", "1e", "-", "9" * 400,
               "1,5", "\u221e", "\u0661\u0662", "+-3", ".", "e5", "1.5e+", ""]
HUGE = ["1e300", "-1e300", "1e308", "2e5", "-3.5e7", "1e10", "123456789012345678901234567890"]
GARBAGE_LINES = ["abc def", "12 13 14", ":DEGREES", "#", "root", "lfemur 1 2 3", "end", "begin", "\t", "\u00e9\u00e8 1"]


@pytest.fixture(scope="module")
def cmu(cmu_reference: Path) -> Path:
    """The CMU trials of the ``reference_data`` fixture (copies of the shared reference files)."""
    missing = [f for pair in PAIRS for f in pair if not (cmu_reference / f).is_file()]
    assert not missing, f"reference CMU files missing: {missing}"
    return cmu_reference


class Originals(dict):
    """Per trial: the AMC and ASF bytes, the parsed skeleton and frames (short repr for
    hypothesis' reports)."""

    def __repr__(self) -> str:
        return f"Originals({list(self)})"


@pytest.fixture(scope="module")
def originals(cmu: Path) -> Originals:
    out = Originals()
    for amc, asf in PAIRS:
        skeleton = parse_asf(cmu / asf)
        out[amc] = ((cmu / amc).read_bytes(), (cmu / asf).read_bytes(), skeleton, parse_amc(cmu / amc, skeleton).values)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-real")


# --------------------------------------------------------------------------- mutations

word_mutation = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6))  # (line, word)
mutation = st.one_of(
    st.tuples(st.just("delete_line"), st.integers(0, 10**6)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 10**6)),
    st.tuples(st.just("swap_lines"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("insert_line"), st.integers(0, 10**6), st.sampled_from(GARBAGE_LINES)),
    st.tuples(st.just("not_a_number"), word_mutation, st.sampled_from(NOT_NUMBERS)),
    st.tuples(st.just("huge"), word_mutation, st.sampled_from(HUGE)),
    st.tuples(st.just("insert_bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip_line_endings"),),
)


def mutate(data: bytes, op: tuple) -> tuple[bytes, set[int]]:
    """The mutated bytes and the 1-based lines of the change (in the mutated file)."""
    lines = data.split(b"\n")  # a CRLF line keeps its "\r"
    n = len(lines)
    kind = op[0]
    if kind == "delete_line":
        i = op[1] % n
        del lines[i]
        return b"\n".join(lines), {i, i + 1}
    if kind == "duplicate_line":
        i = op[1] % n
        lines.insert(i, lines[i])
        return b"\n".join(lines), {i + 2}
    if kind == "swap_lines":
        i, j = op[1] % n, op[2] % n
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines), {i + 1, j + 1}
    if kind == "insert_line":
        i = op[1] % (n + 1)
        lines.insert(i, op[2].encode("utf-8"))
        return b"\n".join(lines), {i + 1}
    if kind in ("not_a_number", "huge"):
        # Replace a value: a word after the first on a line that has one.
        (line, word), text = op[1], op[2]
        candidates = [k for k, ln in enumerate(lines) if len(ln.split()) >= 2]
        i = candidates[line % len(candidates)]
        words = lines[i].rstrip(b"\r").split()
        k = 1 + word % (len(words) - 1)
        words[k] = text.encode("utf-8")
        lines[i] = b" ".join(words) + (b"\r" if lines[i].endswith(b"\r") else b"")
        return b"\n".join(lines), {i + 1}
    if kind == "insert_bytes":
        at = int(op[1] * len(data))
        first = data[:at].count(b"\n") + 1
        return data[:at] + op[2] + data[at:], set(range(first, first + op[2].count(b"\n") + 1))
    if kind == "truncate":
        cut = data[: int(op[1] * len(data))]
        return cut, {cut.count(b"\n") + 1, cut.rstrip(b"\r\n").count(b"\n") + 1}
    if kind == "flip_line_endings":
        crlf = b"\r\n" in data
        return (data.replace(b"\r\n", b"\n") if crlf else data.replace(b"\n", b"\r\n")), set()
    raise AssertionError(kind)


def assert_located(err: MocapFormatError | MeshFormatError, path: Path, places: set[int], window: int) -> None:
    """Our error, naming the file and a line within ``window`` lines of a mutated place
    (its own line, or one it names as the other end of the problem, "(line N)")."""
    assert str(path) in str(err) and err.problem
    assert err.line is not None, f"no line in {err}"
    assert f"{path}:{err.line}:" in str(err)
    named = {err.line} | {int(n) for n in re.findall(r"\(line (\d+)\)", err.problem)}
    distance = min(abs(line - p) for line in named for p in places)
    assert distance <= window, f"lines {sorted(named)} are far from {sorted(places)}: {err}"


def skeleton_within_bounds(sk: Skeleton) -> bool:
    numbers = [abs(v) for b in sk.bones for v in (*b.direction, b.length)] + [abs(v) for v in sk.root_position]
    angles = [abs(v) for b in sk.bones for v in (*b.axis, *(x for lim in b.limits for x in lim))] + [abs(v) for v in sk.root_orientation]
    angle_bound = MAX_ABS_ANGLE_DEG if sk.angle_unit == "deg" else np.radians(MAX_ABS_ANGLE_DEG)
    return max(numbers) <= MAX_ABS_POSITION and max(angles, default=0) <= angle_bound


# --------------------------------------------------------------------------- AMC / ASF


@given(pair=st.sampled_from(PAIRS), op=mutation)
@settings(max_examples=150)
def test_mutated_real_amc_parses_or_names_the_file_and_the_mutated_line(originals, work, pair, op) -> None:
    amc_bytes, _, skeleton, values = originals[pair[0]]
    data, places = mutate(amc_bytes, op)
    path = work / Path(pair[0]).name
    path.write_bytes(data)
    # A value changed on a bone line must be refused on that line (comments may change).
    value_changed = op[0] in ("not_a_number", "huge") and data.split(b"\n")[min(places) - 1][:1].isalpha()
    try:
        motion = parse_amc(path, skeleton)
    except MocapFormatError as err:
        if not data.split():
            assert err.line is None and "empty file" in str(err) and str(path) in str(err)
            return
        assert_located(err, path, places, 0 if value_changed else FRAME_LINES + 1)
        if value_changed and op[0] == "huge":
            assert f"= {op[2]!r} is beyond the plausible bound" in str(err) and "frame " in str(err)
        return
    assert not value_changed, f"{op} accepted"
    assert motion.values.shape[1] == len(skeleton.dof_names()) and len(motion.values) >= 1
    degrees = np.abs(motion.in_degrees())
    rotation = np.array([not n.rsplit(".", 1)[1].startswith("t") for n in motion.dof_names])
    assert (degrees[:, rotation] <= MAX_ABS_ANGLE_DEG).all() and (degrees[:, ~rotation] <= MAX_ABS_POSITION).all()
    if op[0] == "flip_line_endings":
        np.testing.assert_array_equal(motion.values, values)


@given(pair=st.sampled_from(PAIRS), op=mutation)
@settings(max_examples=150)
def test_mutated_real_asf_parses_or_names_the_file_and_the_mutated_line(originals, work, pair, op) -> None:
    _, asf_bytes, skeleton, _ = originals[pair[0]]
    data, places = mutate(asf_bytes, op)
    path = work / Path(pair[1]).name
    path.write_bytes(data)
    try:
        sk = parse_asf(path)
    except MocapFormatError as err:
        if not data.split():
            assert err.line is None and "empty file" in str(err) and str(path) in str(err)
            return
        assert_located(err, path, places, ASF_BLOCK_LINES)
        if op[0] == "huge" and "beyond the plausible bound" in str(err):
            assert err.line in places and repr(op[2]) in str(err)
        return
    assert len(sk.joint_names) == len(sk.bones) + 1 and skeleton_within_bounds(sk)
    if op[0] == "flip_line_endings":
        assert {**sk.to_dict(), "source": ""} == {**skeleton.to_dict(), "source": ""}


@pytest.mark.parametrize("kind", ["huge", "not_a_number"])
def test_every_value_line_of_a_real_amc_refuses_a_bad_number_on_that_line(originals, work, kind) -> None:
    """Deterministic sweep: one bad value on each of the first 60 value lines (two frames)."""
    amc_bytes, _, skeleton, _ = originals[PAIRS[0][0]]
    path = work / "sweep.amc"
    lines = amc_bytes.split(b"\n")
    with_values = [i for i, ln in enumerate(lines) if len(ln.split()) >= 2]  # as ``mutate`` counts
    bone_lines = [i for i in with_values if lines[i][:1].isalpha()]
    text = "1e300" if kind == "huge" else "1.2.3"
    for n, i in enumerate(bone_lines[:60]):
        data, places = mutate(amc_bytes, (kind, (with_values.index(i), n), text))
        path.write_bytes(data)
        with pytest.raises(MocapFormatError) as info:
            parse_amc(path, skeleton)
        assert places == {i + 1} and info.value.line == i + 1 and repr(text) in str(info.value)


@pytest.mark.parametrize("kind", ["delete_line", "duplicate_line"])
def test_every_line_of_a_real_asf_deleted_or_duplicated_is_reported_near_it(originals, work, kind) -> None:
    """Deterministic sweep over every line of both skeletons (a few hundred parses)."""
    for amc, asf in PAIRS:
        data = originals[amc][1]
        path = work / f"sweep-{Path(asf).name}"
        for i in range(data.count(b"\n") + 1):
            mutated, places = mutate(data, (kind, i))
            path.write_bytes(mutated)
            try:
                parse_asf(path)
            except MocapFormatError as err:
                assert_located(err, path, places, ASF_BLOCK_LINES)


@pytest.mark.parametrize("separator", [b"\r", b"\x0c", b"\x0b", b"\x85", b"\x1e"])
def test_a_stray_control_byte_does_not_shift_the_reported_line(originals, work, separator) -> None:
    """Only "\\n" ends a line, in the ASF reader as in the AMC reader and in editors."""
    data = originals[PAIRS[0][0]][1]
    lines = data.split(b"\n")
    bad = next(i for i, ln in enumerate(lines) if ln.split()[:1] == [b"length"] and i > 20)
    lines[5] = separator + lines[5]  # early in the file, before the bad number
    lines[bad] = b"length 1e300" + (b"\r" if lines[bad].endswith(b"\r") else b"")
    path = work / "stray.asf"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(MocapFormatError, match="length: '1e300' is beyond the plausible bound") as info:
        parse_asf(path)
    assert info.value.line == bad + 1, str(info.value)


# --------------------------------------------------------------------------- command line

CLI_MUTATIONS = [
    ("09_03.amc", ("huge", (1800, 2), "1e300")),
    ("09_03.amc", ("not_a_number", (700, 1), "abc")),
    ("09_03.amc", ("delete_line", 2000)),
    ("09_03.amc", ("truncate", 0.6)),
    ("09_03.amc", ("insert_bytes", 0.3, b"\x00\xff")),
    ("09.asf", ("huge", (120, 0), "1e300")),
    ("09.asf", ("delete_line", 11)),  # its ":root" line
    ("09.asf", ("truncate", 0.8)),
]


@pytest.mark.parametrize("target, op", CLI_MUTATIONS, ids=[f"{t}-{op[0]}" for t, op in CLI_MUTATIONS])
def test_prepare_refuses_a_mutated_real_file_with_exit_2_one_line_and_no_output(cmu, tmp_path, capsys, target, op) -> None:
    raw = tmp_path / "raw" / "09"
    raw.mkdir(parents=True)
    for name in ("09.asf", "09_03.amc", "09_08.amc"):  # a mutated trial beside an intact one
        shutil.copy(cmu / "09" / name, raw / name)
    data, _ = mutate((raw / target).read_bytes(), op)
    (raw / target).write_bytes(data)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare_mocap"]["source"] = str(tmp_path / "raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "mocap.zarr"

    code = main(["prepare", "mocap", "--out", str(out), "--params", str(tmp_path / "params.yaml"), "--no-progress"])

    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert f"{raw / target}:" in lines[0] and "Traceback" not in captured.err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]


# --------------------------------------------------------------------------- face meshes


@pytest.fixture(scope="module")
def sfm(shared_data: Path) -> Path:
    folder = shared_data / "sfm"
    if not (folder / "sfm_reference.obj").is_file():
        pytest.skip("shared Surrey Face Model files not found")
    return folder


def _python_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


@pytest.mark.shared_data
@given(op=mutation)
@settings(max_examples=80)
def test_mutated_real_obj_mesh_reads_or_names_the_file_and_the_mutated_line(sfm, work, op) -> None:
    if op[0] == "insert_bytes":
        op = ("insert_line", 0, "")  # the OBJ reader counts lines with str.splitlines
    data, places = mutate((sfm / "sfm_reference.obj").read_bytes(), op)
    path = work / "mesh.obj"
    path.write_bytes(data)
    on_vertex = op[0] in ("not_a_number", "huge") and data.split(b"\n")[min(places) - 1].startswith(b"v ")
    # The OBJ reader reads numbers with Python's float(), which also takes "1_0"; it must
    # refuse everything float() refuses, non-finite values and values beyond the bound.
    too_big = on_vertex and not (abs(_python_float(op[2])) <= MAX_ABS_COORDINATE)
    try:
        mesh = read_obj(path)
    except MeshFormatError as err:
        assert str(path) in str(err)
        if on_vertex:
            assert err.line in places, str(err)
        return
    assert not too_big, f"{op} accepted"
    assert np.isfinite(mesh.vertices).all() and (np.abs(mesh.vertices) <= MAX_ABS_COORDINATE).all()
    assert mesh.triangles.min() >= 0 and mesh.triangles.max() < len(mesh.vertices)


@pytest.mark.shared_data
@pytest.mark.parametrize("value", [1e30, -2e6, float("nan"), float("inf")])
def test_a_corrupted_coordinate_in_the_real_sfm_binaries_is_refused_at_its_byte(sfm, tmp_path, value) -> None:
    # Shape mean: after the class version (4 bytes) and its rows, cols (8 bytes).
    data = bytearray((sfm / "sfm_shape_3448.bin").read_bytes())
    k = 3 * 1000 + 1  # y of vertex 1000
    struct.pack_into("<f", data, 12 + 4 * k, value)
    (tmp_path / "shape.bin").write_bytes(bytes(data))
    with pytest.raises(MeshFormatError, match=rf"shape.bin: byte {12 + 4 * k}: shape mean value {k} \(row {k}, column 0\)") as info:
        read_sfm(tmp_path / "shape.bin")
    assert ("not finite" if not np.isfinite(value) else "beyond the plausible bound of +-1e+06") in str(info.value)
    # Blendshapes: a count, then per shape a name (length + bytes) and a matrix.
    data = bytearray((sfm / "expression_blendshapes_3448.bin").read_bytes())
    (name_len,) = struct.unpack_from("<Q", data, 8)
    at = 8 + 8 + name_len + 8 + 4 * 7
    struct.pack_into("<f", data, at, value)
    (tmp_path / "shapes.bin").write_bytes(bytes(data))
    with pytest.raises(MeshFormatError, match=rf"shapes.bin: byte {at}: blendshape .* deformation value 7 "):
        read_blendshapes(tmp_path / "shapes.bin")
