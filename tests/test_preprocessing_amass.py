"""AMASS reader (preprocessing.amass) and ``vhp prepare mocap`` on AMASS folders.

The archives are SMPL-H-shaped ``.npz`` files built from the reference CMU trials
(tests/amass_fixture.py). The Euler channels are checked against scipy's rotations of
the axis-angle input; the folder layout, labels, frame-rate resampling, bounds and
refusals through the command line as for the other formats.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from amass_fixture import amass_arrays, write_amass
from conftest import stage_params
from pipelines.cli import main
from preprocessing.acclaim import parse_amc, parse_asf
from preprocessing.amass import TREES, axis_angle_to_matrix, matrix_to_xyz_euler, read_amass
from preprocessing.errors import MocapFormatError
from preprocessing.mocap import MocapParams, prepare
from preprocessing.store import open_dataset
from strategies import seeds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def arrays(cmu_reference: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for subject, trial in (("09", "09_03"), ("09", "09_08"), ("10", "10_03")):
        sk = parse_asf(cmu_reference / subject / f"{subject}.asf")
        out[trial] = amass_arrays(sk, parse_amc(cmu_reference / subject / f"{trial}.amc", sk))
    return out


def amass_folder(base: Path, arrays: dict, rates: dict[str, float] | None = None) -> Path:
    """AMASS layout: CMU/<subject>/<trial>_poses.npz plus each subject's shape.npz."""
    for trial, arr in arrays.items():
        subject = trial.split("_")[0]
        arr = dict(arr, mocap_framerate=np.array((rates or {}).get(trial, 120.0)))
        write_amass(base / "CMU" / subject / f"{trial}_poses.npz", arr)
        write_amass(base / "CMU" / subject / "shape.npz", {"betas": np.zeros(16), "gender": np.array("male")})
    (base / "labels.csv").write_text("trial,motion\n09_03_poses,run\n09_08_poses,run\n10_03_poses,kick\n")
    return base


def test_euler_channels_rebuild_the_axis_angle_rotations_as_scipy_does(arrays, tmp_path) -> None:
    path = write_amass(tmp_path / "t.npz", arrays["10_03"])
    read = read_amass(path)
    assert read.fps == 120.0 and read.tree.model == "SMPL-H" and len(read.tree.names) == 52
    values = read.motion.values
    assert values.shape == (362, 3 + 52 * 3)
    np.testing.assert_array_equal(values[:, :3], arrays["10_03"]["trans"])
    euler = values[:, 3:].reshape(len(values), 52, 3)  # rx, ry, rz in degrees
    rebuilt = Rotation.from_euler("ZYX", euler[..., ::-1].reshape(-1, 3), degrees=True).as_matrix()
    expected = Rotation.from_rotvec(arrays["10_03"]["poses"].reshape(-1, 3)).as_matrix()
    np.testing.assert_allclose(rebuilt, expected, atol=1e-9)
    # unwrapped along the trial: no jump near 360 degrees between frames in rx, rz
    assert np.abs(np.diff(euler[..., [0, 2]], axis=0)).max() < 180
    assert np.abs(euler[..., 1]).max() <= 90 + 1e-9


@given(seed=seeds)
@settings(max_examples=50, deadline=None)
def test_axis_angle_to_euler_and_back_for_any_rotation(seed) -> None:
    rng = np.random.default_rng(seed)
    aa = rng.normal(size=(64, 3)) * rng.uniform(0, 4)
    aa[0] = 0.0  # the identity
    aa[1] = [0.0, np.pi / 2, 0.0]  # gimbal lock
    r = axis_angle_to_matrix(aa)
    np.testing.assert_allclose(r, Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)
    e = matrix_to_xyz_euler(r)
    np.testing.assert_allclose(Rotation.from_euler("ZYX", e[:, ::-1]).as_matrix(), r, atol=1e-7)


def test_prepare_an_amass_folder(arrays, tmp_path) -> None:
    src = amass_folder(tmp_path / "amass", arrays)
    params = stage_params(MocapParams, "prepare_mocap", source=str(src), labels_csv="labels.csv", segment_frames=30,
                          val_fraction=0.0, frame_step=1, target_fps=30.0)
    prepare(params, tmp_path / "m.zarr", progress=False)
    d = open_dataset(tmp_path / "m.zarr")
    assert d.attrs["motion_format"] == "amass" and "skeleton" not in d.attrs
    assert d.attrs["kinematic_tree"]["model"] == "SMPL-H" and d.attrs["kinematic_tree"]["parents"][:3] == [-1, 0, 0]
    assert d.attrs["labels"]["motion"]["classes"] == ["kick", "run"]
    assert d.attrs["labels"]["subject"]["classes"] == ["CMU/09", "CMU/10"]
    assert d.attrs["units"]["fps"] == 30.0 and d.attrs["units"]["translation"] == "metres"
    assert "pelvis.tx" not in d.attrs["channels"] and d.attrs["channels"][:3] == ["pelvis.rx", "pelvis.ry", "pelvis.rz"]
    assert not any("shape.npz" in s["path"] for s in d.attrs["sources"])
    frames = np.concatenate([np.asarray(d.train.labels["frame"]), np.asarray(d.test.labels["frame"])])
    assert set(np.unique(frames % 4)) == {0}  # 120 fps -> 30 fps: every fourth frame
    assert len(frames) == sum(len(range(0, len(a["poses"]), 4)) for a in arrays.values())


def test_trials_at_different_rates_need_target_fps(arrays, tmp_path) -> None:
    src = amass_folder(tmp_path / "amass", arrays, rates={"10_03": 60.0})
    base = dict(source=str(src), segment_frames=30, val_fraction=0.0)
    with pytest.raises(MocapFormatError, match="60 fps, but .* has 120 fps: set prepare_mocap.target_fps"):
        prepare(stage_params(MocapParams, "prepare_mocap", **base), tmp_path / "m.zarr", progress=False)
    prepare(stage_params(MocapParams, "prepare_mocap", **base, frame_step=1, target_fps=20.0), tmp_path / "m.zarr", progress=False)
    d = open_dataset(tmp_path / "m.zarr")
    n = {t: len(a["poses"]) for t, a in arrays.items()}
    # 60 fps -> 20: every third frame; 120 fps -> 20: every sixth
    expected = len(range(0, n["10_03"], 3)) + len(range(0, n["09_03"], 6)) + len(range(0, n["09_08"], 6))
    assert len(d.train) + len(d.test) == expected
    with pytest.raises(ValueError, match="set frame_step to 1"):
        stage_params(MocapParams, "prepare_mocap", **base, frame_step=4, target_fps=20.0)


def _bad(arr: dict, **change) -> dict:
    out = {k: np.array(v, copy=True) for k, v in arr.items()}
    out.update(change)
    return out


def test_bounds_and_layout_are_checked_with_the_frame_and_the_value(arrays, tmp_path) -> None:
    a = arrays["09_03"]
    poses = a["poses"].copy()
    poses[17, 3 * 4 + 1] = 1e4
    cases = [
        (_bad(a, poses=poses), r"frame 17: poses\[17, 13\] \(joint 'left_knee' axis-angle component 1\) = 10000.0 is beyond the plausible bound"),
        (_bad(a, trans=np.where(np.arange(len(a["trans"]))[:, None] == 5, np.nan, a["trans"])), r"frame 5: trans\[5, 0\] \(component x\) = nan is not finite"),
        ({k: v for k, v in a.items() if k != "trans"}, "missing arrays? trans"),
        (_bad(a, poses=a["poses"][:, :150]), r"poses has shape \(128, 150\)"),
        (_bad(a, trans=a["trans"][:-1]), r"trans has shape \(127, 3\)"),
        (_bad(a, mocap_framerate=np.array(0.0)), "mocap_framerate"),
        (_bad(a, poses=a["poses"].astype(str)), "poses holds <U"),
    ]
    for k, (arr, message) in enumerate(cases):
        path = write_amass(tmp_path / f"bad{k}.npz", arr)
        with pytest.raises(MocapFormatError, match=message) as info:
            read_amass(path)
        assert str(info.value).startswith(f"{path}: ")


def test_bytes_that_are_not_an_archive_or_hold_pickles_are_refused(arrays, tmp_path) -> None:
    (tmp_path / "text.npz").write_bytes(b"\xff\xfe not utf-8 \xc3\x28")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "pickle.npz", "w") as z:
        z.writestr("poses.npy", buf.getvalue())
    for name in ("text.npz", "pickle.npz"):
        with pytest.raises(MocapFormatError, match="not a readable .npz archive") as info:
            read_amass(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


@given(at=st.floats(0, 1), junk=st.binary(min_size=1, max_size=8), cut=st.booleans())
@settings(max_examples=60, deadline=None)
def test_corrupted_archive_bytes_read_or_are_refused(arrays, tmp_path_factory, at, junk, cut) -> None:
    path = write_amass(tmp_path_factory.mktemp("amass-fuzz") / "t.npz", arrays["09_03"])
    data = path.read_bytes()
    i = int(at * len(data))
    path.write_bytes(data[:i] if cut else data[:i] + junk + data[i + len(junk):])
    try:
        read = read_amass(path)
    except MocapFormatError as err:
        assert str(path) in str(err) and err.problem
        return
    assert np.isfinite(read.motion.values).all() and read.motion.values.shape[1] == 159


def test_prepare_refuses_a_bad_archive_with_exit_2_one_line_and_nothing_written(arrays, tmp_path, capsys) -> None:
    src = amass_folder(tmp_path / "amass", arrays)
    bad = src / "CMU" / "09" / "09_08_poses.npz"
    bad.write_bytes(bad.read_bytes()[:1000])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare_mocap"].update(source=str(src), format="amass")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "mocap.zarr"
    code = main(["prepare", "mocap", "--out", str(out), "--params", str(tmp_path / "params.yaml"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(bad) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["amass", "params.yaml"]


def test_a_folder_of_several_formats_asks_for_one(arrays, tmp_path) -> None:
    src = amass_folder(tmp_path / "amass", arrays)
    (src / "x.bvh").write_text("HIERARCHY\n")
    with pytest.raises(MocapFormatError, match="holds bvh and amass files: set prepare_mocap.format"):
        prepare(stage_params(MocapParams, "prepare_mocap", source=str(src)), tmp_path / "m.zarr", progress=False)


def test_every_model_tree_is_a_tree() -> None:
    for joints, (model, names, parents) in TREES.items():
        assert len(names) == len(parents) == joints == len(set(names))
        assert parents[0] == -1 and all(0 <= p < k for k, p in enumerate(parents) if k)


def test_a_turning_pelvis_is_unwrapped_along_the_trial(arrays, tmp_path) -> None:
    """Two whole turns about the vertical: rz climbs to 720 degrees instead of jumping back by 360."""
    a = dict(arrays["09_03"])
    n = len(a["poses"])
    turn = np.linspace(0.0, 4 * np.pi, n)
    poses = np.zeros_like(a["poses"])
    poses[:, :3] = Rotation.from_euler("z", turn[:, None]).as_rotvec()
    read = read_amass(write_amass(tmp_path / "turn.npz", dict(a, poses=poses)))
    rz = read.motion.values[:, read.motion.dof_names.index("pelvis.rz")]
    np.testing.assert_allclose(rz, np.degrees(turn), atol=1e-6)
