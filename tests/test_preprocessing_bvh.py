"""BVH reader (preprocessing.bvh) and ``vhp prepare mocap`` on BVH folders.

Checked against independent computations: forward kinematics with scipy's Euler
rotations for random skeletons and channel layouts, and the Acclaim path on a real CMU
trial converted to BVH (tests/bvh_convert.py; the ``reference_data`` fixture). Mutations of
the real file parse or are refused at the mutated line; through the command line a bad
file ends with exit status 2, one line and nothing written.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from bvh_convert import amc_joint_of_bvh, amc_to_bvh
from conftest import stage_params
from pipelines.cli import main
from preprocessing.acclaim import MAX_ABS_ANGLE_DEG, parse_amc, parse_asf
from preprocessing.bvh import parse_bvh
from preprocessing.errors import MocapFormatError
from preprocessing.mocap import MocapParams, prepare
from preprocessing.poses import features_to_positions
from preprocessing.skeletons import bvh_forward_kinematics, forward_kinematics
from preprocessing.store import open_dataset
from strategies import bvh_files
from test_fuzz_real_files import GARBAGE_LINES, HUGE, NOT_NUMBERS, mutate

ROOT = Path(__file__).resolve().parents[1]
# sha256 of the BVH conversion of subject 09's trials (tests/bvh_convert.py): pins the converter
BVH_SHA256 = {"09_03": "10b48e3afb5a1f0c803cd64709d7acb95fca892fc3aae0ba63e818a3dac8533e",
              "09_08": "c24d919a6edd4f7b036d1517eac3b3e3a63ac5f768c4b42b347b57c0816b4b42"}


@pytest.fixture(scope="module")
def bvh_path(reference_data: Path) -> Path:
    """A real CMU trial (09_03) converted to BVH."""
    return reference_data / "bvh" / "09" / "09_03.bvh"


def write_spec(spec: dict) -> str:
    """BVH text of a ``bvh_files`` draw, joints in depth-first order (names j0, j1, ...)."""
    children: dict[int, list[int]] = {}
    for k, p in enumerate(spec["parents"]):
        children.setdefault(p, []).append(k)
    lines: list[str] = ["HIERARCHY"]
    order: list[int] = []

    def block(k: int, depth: int) -> None:
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if k == 0 else 'JOINT'} j{k}")
        lines.append(pad + "{")
        o = spec["offsets"][k]
        lines.append(f"{pad}  OFFSET {o[0]} {o[1]} {o[2]}")
        lines.append(f"{pad}  CHANNELS {len(spec['channels'][k])} {' '.join(spec['channels'][k])}".rstrip())
        order.append(k)
        for c in children.get(k, []):
            block(c, depth + 1)
        if k in spec["ends"]:
            e = spec["ends"][k]
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {e[0]} {e[1]} {e[2]}", f"{pad}  }}"])
        lines.append(pad + "}")

    block(0, 0)
    # the values were drawn in joint-number order; the file lists them depth-first
    starts = np.cumsum([0] + [len(c) for c in spec["channels"]])
    cols = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in order]).astype(int)
    values = spec["values"][:, cols] if len(cols) else spec["values"]
    lines += ["MOTION", f"Frames: {len(values)}", f"Frame Time: {spec['frame_time']}"]
    lines += [" ".join(repr(float(v)) for v in row) for row in values]
    return "\n".join(lines) + "\n"


def scipy_positions(spec: dict) -> dict[str, np.ndarray]:
    """Joint positions by name with scipy's intrinsic Euler rotations ('ZXY': Rz Rx Ry)."""
    n = len(spec["values"])
    starts = np.cumsum([0] + [len(c) for c in spec["channels"]])
    pos: dict[str, np.ndarray] = {}
    rot: dict[int, np.ndarray] = {}
    for k, p in enumerate(spec["parents"]):
        chans = spec["channels"][k]
        vals = spec["values"][:, starts[k] : starts[k + 1]]
        rots = [(c[0], vals[:, i]) for i, c in enumerate(chans) if c.endswith("rotation")]
        local = Rotation.from_euler("".join(a for a, _ in rots), np.stack([v for _, v in rots], 1), degrees=True).as_matrix() if rots else np.broadcast_to(np.eye(3), (n, 3, 3))
        t = np.zeros((n, 3))
        for i, c in enumerate(chans):
            if c.endswith("position"):
                t[:, "XYZ".index(c[0])] = vals[:, i]
        shift = spec["offsets"][k] + t
        if p < 0:
            pos[f"j{k}"], rot[k] = shift, local
        else:
            pos[f"j{k}"] = pos[f"j{p}"] + np.einsum("nij,nj->ni", rot[p], shift)
            rot[k] = rot[p] @ local
        if k in spec["ends"]:
            pos[f"j{k}.end"] = pos[f"j{k}"] + np.einsum("nij,j->ni", rot[k], spec["ends"][k])
    return pos


@given(spec=bvh_files())
@settings(max_examples=60, deadline=None)
def test_any_skeleton_and_channel_layout_matches_scipy_forward_kinematics(spec, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("bvh") / "random.bvh"
    path.write_text(write_spec(spec))
    read = parse_bvh(path)
    sk = read.skeleton
    assert [len(j.dof) for j in sk.joints] == [len(spec["channels"][int(j.name[1:])]) for j in sk.joints]
    assert read.motion.values.shape == spec["values"].shape
    got = bvh_forward_kinematics(sk, read.motion.values)
    expected = scipy_positions(spec)
    for i, name in enumerate(sk.joint_names):
        np.testing.assert_allclose(got[:, i], expected[name], atol=1e-8 * (1 + np.abs(expected[name]).max()))
    assert len(sk.edges()) == len(sk.joint_names) - 1


def _amc(cmu: Path, trial: str = "09_03"):
    sk = parse_asf(cmu / "09" / "09.asf")
    return sk, parse_amc(cmu / "09" / f"{trial}.amc", sk)


def test_the_bvh_of_a_cmu_trial_agrees_with_the_amc_path(bvh_path: Path, cmu_reference: Path) -> None:
    """Positions agree everywhere; channels agree (mod 360) where the conversion keeps them:
    the root and the bones whose ASF axis is zero. Translations are in inches (ASF units / 0.45)."""
    sk, motion = _amc(cmu_reference)
    read = parse_bvh(bvh_path)
    assert read.fps == 120.0 and read.motion.values.shape[0] == len(motion.values)
    amc_pos = forward_kinematics(sk, motion.in_degrees(), motion.dof_names)
    bvh_pos = bvh_forward_kinematics(read.skeleton, read.motion.values)[:, [read.skeleton.joint_names.index(n) for n in amc_joint_of_bvh(sk)]]
    np.testing.assert_allclose(bvh_pos, amc_pos, atol=1e-5)
    amc_col = {n: i for i, n in enumerate(motion.dof_names)}
    bvh_col = {n: i for i, n in enumerate(read.motion.dof_names)}
    straight = [b.name for b in sk.bones if not any(b.axis) and b.dof]
    assert {"lowerback", "thorax", "head"} <= set(straight)
    compared = 0
    for name in ["root"] + straight:
        dofs = sk.root_order if name == "root" else next(b.dof for b in sk.bones if b.name == name)
        for d in dofs:
            a = motion.values[:, amc_col[f"{name}.{d}"]]
            b = read.motion.values[:, bvh_col[f"{name}.{d}"]]
            if d.startswith("t"):
                np.testing.assert_allclose(b, a / sk.length_unit, atol=1e-6)
            else:
                np.testing.assert_allclose((b - a + 180) % 360 - 180, 0, atol=1e-5)
            compared += 1
    assert compared >= 20


def test_the_bvh_conversion_of_the_cmu_trials_is_unchanged(reference_data: Path, cmu_reference: Path) -> None:
    for trial, digest in BVH_SHA256.items():
        sk, motion = _amc(cmu_reference, trial)
        text = amc_to_bvh(sk, motion)
        assert hashlib.sha256(text.encode()).hexdigest() == digest, trial
        assert (reference_data / "bvh" / "09" / f"{trial}.bvh").read_text() == text


def _labels(folder: Path) -> None:
    (folder / "labels.csv").write_text("trial,motion\n09_03,run\n09_08,run fast\n")


@pytest.mark.parametrize("encoding", ["degrees", "sincos"])
def test_prepare_a_bvh_folder_gives_the_amc_path_features_up_to_the_documented_differences(tmp_path, encoding,
                                                                                          reference_data) -> None:
    amc_src, bvh_src = tmp_path / "amc" / "09", tmp_path / "bvh" / "09"
    amc_src.mkdir(parents=True)
    for name in ("09.asf", "09_03.amc", "09_08.amc"):
        shutil.copy(reference_data / "cmu" / "09" / name, amc_src / name)
    shutil.copytree(reference_data / "bvh" / "09", bvh_src)
    for top in (tmp_path / "amc", tmp_path / "bvh"):
        _labels(top)
    common = dict(segment_frames=16, val_fraction=0.0, angle_encoding=encoding, labels_csv="labels.csv", drop_root_translation=False)
    prepare(stage_params(MocapParams, "prepare_mocap", source=str(tmp_path / "amc"), **common), tmp_path / "a.zarr", progress=False)
    prepare(stage_params(MocapParams, "prepare_mocap", source=str(tmp_path / "bvh"), **common), tmp_path / "b.zarr", progress=False)
    a, b = open_dataset(tmp_path / "a.zarr"), open_dataset(tmp_path / "b.zarr")
    assert a.attrs["labels"] == b.attrs["labels"] and a.attrs["labels"]["motion"]["classes"] == ["run", "run fast"]
    assert b.attrs["motion_format"] == "bvh" and b.attrs["skeleton"]["format"] == "bvh"
    assert b.attrs["units"]["fps"] == a.attrs["units"]["fps"] == 30.0
    assert b.attrs["units"]["translation"] == "BVH file units"
    assert "root.tx" in b.attrs["channels"] and "root.rz" in b.attrs["channels"]
    sk = parse_asf(reference_data / "cmu" / "09" / "09.asf")
    pick = [b.attrs["skeleton"]["joint_names"].index(n) for n in amc_joint_of_bvh(sk)]
    for split in ("train", "test"):
        xa, xb = getattr(a, split), getattr(b, split)
        np.testing.assert_array_equal(np.asarray(xa.labels["frame"]), np.asarray(xb.labels["frame"]))
        np.testing.assert_array_equal(np.asarray(xa.labels["trial"]), np.asarray(xb.labels["trial"]))
        pa = features_to_positions(np.asarray(xa.x), a.attrs)
        pb = features_to_positions(np.asarray(xb.x), b.attrs)[:, pick]
        scale = np.abs(pa).max()
        np.testing.assert_allclose(pb, pa, atol=2e-5 * scale)


BAD = [
    ("", None, "empty file"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 3 Xrotation Yrotation Wrotation\n}\nMOTION\nFrames: 1\nFrame Time: 0.01\n1 2 3\n", 5, "unknown channel 'Wrotation'"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 2 Xrotation Xrotation\n}\nMOTION\nFrames: 1\nFrame Time: 0.01\n1 2\n", 5, "appears twice"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 zero 0\n  CHANNELS 1 Xrotation\n}\nMOTION\nFrames: 1\nFrame Time: 0.01\n1\n", 4, "'zero' is not a finite decimal number"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n}\nMOTION\nFrames: 2\nFrame Time: 0.01\n1\n", 11, "Frames: 2, but 1 frame lines follow (truncated file?)"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 2 Xrotation Yrotation\n}\nMOTION\nFrames: 2\nFrame Time: 0.01\n1 2\n1 2 3\n", 11, "frame 1: 3 values; the hierarchy has 2 channels"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 2 Xrotation Yrotation\n}\nMOTION\nFrames: 2\nFrame Time: 0.01\n1 2\n1 1e300\n", 11, "frame 1: r.ry = '1e300' is beyond the plausible bound of +-10000 degrees"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 2 Xposition Yrotation\n}\nMOTION\nFrames: 1\nFrame Time: 0.01\n2e5 0\n", 10, "r.tx = '2e5' is beyond the plausible bound of +-100000 file units"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n}\nMOTION\nFrames: 1\nFrame Time: 0.01\nnan\n", 10, "r.rx = 'nan' is not a finite decimal number"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n}\nMOTION\nFrames: 1\nFrame Time: 0\n1\n", 9, "Frame Time: '0' is not a plausible frame time"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n  JOINT a\n  {\n    OFFSET 1 0 0\n  }\n  JOINT a\n  {\n    OFFSET 1 0 0\n  }\n}\nMOTION\nFrames: 1\nFrame Time: 0.01\n1\n", 10, "joint 'a' defined twice (first on line 6)"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n}\nROOT s\n{\n}\n", 7, "a second ROOT"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n", 6, "the file ends where the end of joint 'r'"),
    ("HIERARCHY\nROOT r\n{\n  OFFSET 0 0 0\n  CHANNELS 1 Xrotation\n  Joint\n}\n", 8, "the file ends where '{' should be"),
]


@pytest.mark.parametrize("text, line, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_malformed_bvh_is_refused_with_the_file_and_line(tmp_path, text, line, message) -> None:
    path = tmp_path / "bad.bvh"
    path.write_text(text)
    with pytest.raises(MocapFormatError) as info:
        parse_bvh(path)
    assert info.value.line == line and str(path) in str(info.value)
    if message:
        assert message in str(info.value)


def test_a_joint_with_no_channels_and_six_channel_joints_are_read(bvh_path: Path) -> None:
    read = parse_bvh(bvh_path)
    dofs = {j.name: j.dof for j in read.skeleton.joints}
    assert dofs["lhipjoint"] == () and dofs["root"] == ("tx", "ty", "tz", "rz", "ry", "rx")
    assert read.motion.values.shape == (128, 90)


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def bvh_original(bvh_path: Path) -> tuple[bytes, np.ndarray]:
    return bvh_path.read_bytes(), parse_bvh(bvh_path).motion.values


bvh_mutation = st.one_of(
    st.tuples(st.just("delete_line"), st.integers(0, 10**6)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 10**6)),
    st.tuples(st.just("swap_lines"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("insert_line"), st.integers(0, 10**6), st.sampled_from(GARBAGE_LINES)),
    st.tuples(st.just("not_a_number"), st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), st.sampled_from(NOT_NUMBERS)),
    st.tuples(st.just("huge"), st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), st.sampled_from(HUGE)),
    st.tuples(st.just("insert_bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip_line_endings"),),
)


@given(op=bvh_mutation)
@settings(max_examples=150, deadline=None)
def test_mutated_real_bvh_parses_or_names_the_file_and_the_line(bvh_original, tmp_path_factory, op) -> None:
    data, places = mutate(bvh_original[0], op)
    path = tmp_path_factory.mktemp("fuzz-bvh") / "09_03.bvh"
    path.write_bytes(data)
    lines = data.split(b"\n")
    motion_line = next((i for i, ln in enumerate(lines) if ln.strip() == b"MOTION"), len(lines))
    on_frame = op[0] in ("not_a_number", "huge") and min(places) - 1 > motion_line + 2
    try:
        read = parse_bvh(path)
    except MocapFormatError as err:
        assert str(path) in str(err) and err.problem
        if not data.split():
            assert err.line is None
            return
        assert err.line is not None, str(err)
        if on_frame:
            assert err.line in places, f"{op}: {err}"
        return
    assert not on_frame or abs(float(op[2])) <= MAX_ABS_ANGLE_DEG, f"{op} accepted"
    assert np.isfinite(read.motion.values).all()
    if op[0] == "flip_line_endings":
        np.testing.assert_array_equal(read.motion.values, bvh_original[1])


CLI_MUTATIONS = [("huge", (60000, 5), "1e300"), ("not_a_number", (40000, 3), "abc"), ("truncate", 0.7),
                 ("delete_line", 20), ("insert_bytes", 0.5, b"\xff\xfe")]


@pytest.mark.parametrize("op", CLI_MUTATIONS, ids=[op[0] for op in CLI_MUTATIONS])
def test_prepare_refuses_a_mutated_bvh_with_exit_2_one_line_and_nothing_written(tmp_path, capsys, op,
                                                                                reference_data) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(reference_data / "bvh", raw)
    target = raw / "09" / "09_03.bvh"
    target.write_bytes(mutate(target.read_bytes(), op)[0])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare_mocap"].update(source=str(raw), format="bvh")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "mocap.zarr"
    code = main(["prepare", "mocap", "--out", str(out), "--params", str(tmp_path / "params.yaml"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{target}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]


# --------------------------------------------------------------------------- bvhio (measurement)


def test_positions_agree_with_bvhio_where_it_is_installed(bvh_path: Path) -> None:
    """bvhio (MIT, PyPI) is not a dependency; where it is installed it is an independent parse."""
    bvhio = pytest.importorskip("bvhio")
    read = parse_bvh(bvh_path)
    ours = bvh_forward_kinematics(read.skeleton, read.motion.values)
    root = bvhio.readAsHierarchy(str(bvh_path))
    layout = [j for j, _, _ in root.layout()]
    pick = [read.skeleton.joint_names.index(j.Name) for j in layout]
    for k in (0, 37, 127):
        root.loadPose(k)
        theirs = np.array([tuple(j.PositionWorld) for j in layout])
        np.testing.assert_allclose(ours[k, pick], theirs, atol=1e-4)  # bvhio computes in float32


def test_trials_with_different_channel_layouts_are_refused_as_for_amc(tmp_path, reference_data) -> None:
    raw = tmp_path / "raw" / "09"
    shutil.copytree(reference_data / "bvh" / "09", raw)
    other = raw / "09_08.bvh"
    other.write_text(other.read_text().replace("CHANNELS 3 Zrotation Yrotation Xrotation", "CHANNELS 3 Xrotation Yrotation Zrotation", 1))
    with pytest.raises(MocapFormatError, match="degrees of freedom differ from .*09_03.bvh; one data set needs one channel layout") as info:
        prepare(stage_params(MocapParams, "prepare_mocap", source=str(tmp_path / "raw"), segment_frames=16), tmp_path / "m.zarr", progress=False)
    assert str(other) in str(info.value) and not (tmp_path / "m.zarr").exists()
