"""AMASS motions (SMPL / SMPL-H / SMPL-X pose parameters in ``.npz``) as joint angles.

Based on the AMASS archive layout (Mahmood et al., "AMASS: Archive of Motion Capture
as Surface Shapes", ICCV 2019): one ``.npz`` a trial, ``<dataset>/<subject>/<trial>.npz``,
holding ``poses`` (frames, 3 * joints; axis-angle in radians, the first joint being the
global orientation of the pelvis), ``trans`` (frames, 3; the pelvis translation in
metres) and ``mocap_framerate`` (frames a second); ``betas``, ``gender`` and ``dmpls``
describe the body surface and are not used. A subject's ``shape.npz`` (``betas``
without ``poses``) is skipped.

No SMPL body model is needed: the features are the joint rotations themselves. Every
joint's axis-angle rotation ``R`` becomes three Euler angles in degrees, channels
``<joint>.rx .ry .rz`` with ``R = Rz @ Ry @ Rx`` (the Acclaim order ``rx ry rz``), so
the feature encodings of ``preprocessing.mocap`` (degrees or sin/cos) apply unchanged;
``rx`` and ``rz`` are unwrapped along the trial (no jump of 360 degrees between
frames), ``ry`` lies in [-90, 90]. The root is the ``pelvis`` with channels ``tx ty tz``
(metres) and its rotation. Without the body model the joint offsets are unknown, so the
group records the kinematic tree (names and parents) but no drawable skeleton.

Plausibility bounds as for AMC: an axis-angle component beyond ``MAX_ABS_ANGLE_DEG``
degrees (in radians) or a translation beyond ``MAX_ABS_POSITION`` (metres) is refused
with the file, the frame, the joint and the value.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.acclaim import MAX_ABS_ANGLE_DEG, MAX_ABS_POSITION, Motion
from preprocessing.errors import MocapFormatError

__all__ = ["SmplTree", "AmassMotion", "read_amass", "axis_angle_to_matrix", "matrix_to_xyz_euler", "is_shape_file", "TREES"]

_BODY = ["pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
         "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist"]
_BODY_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]


def _hands() -> tuple[list[str], list[int]]:
    names, parents = [], []
    for side, wrist in (("left", 20), ("right", 21)):
        for finger in ("index", "middle", "pinky", "ring", "thumb"):
            for k in (1, 2, 3):
                names.append(f"{side}_{finger}{k}")
                parents.append(wrist if k == 1 else len(_BODY) + len(names) - 2)
    return names, parents


_HAND_NAMES, _HAND_PARENTS = _hands()
# Model by number of joints in ``poses`` (AMASS: SMPL-H 52 joints, SMPL-X 55, SMPL 24).
TREES: dict[int, tuple[str, list[str], list[int]]] = {
    24: ("SMPL", _BODY + ["left_hand", "right_hand"], _BODY_PARENTS + [20, 21]),
    52: ("SMPL-H", _BODY + _HAND_NAMES, _BODY_PARENTS + _HAND_PARENTS),
    55: ("SMPL-X", _BODY + ["jaw", "left_eye", "right_eye"] + _HAND_NAMES,
         _BODY_PARENTS + [15, 15, 15] + [p if p < 22 else p + 3 for p in _HAND_PARENTS]),
}
MAX_FPS = 1e5
ROTATION = ("rx", "ry", "rz")


@dataclass(frozen=True)
class SmplTree:
    """The kinematic tree of an SMPL-family model: joint names and parents, no offsets."""

    model: str
    names: tuple[str, ...]
    parents: tuple[int, ...]
    source: str = ""
    drawable = False  # no joint offsets without the body model

    @property
    def root(self) -> str:
        return self.names[0]

    def dof_names(self) -> list[str]:
        return [f"{self.root}.{t}" for t in ("tx", "ty", "tz")] + [f"{n}.{d}" for n in self.names for d in ROTATION]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "smpl",
            "model": self.model,
            "joint_names": list(self.names),
            "parents": list(self.parents),
            "rotation": "channels rx ry rz in degrees with R = Rz @ Ry @ Rx (from the axis-angle poses)",
            "position_unit": "metres",
            "note": "no SMPL body model is used: joint offsets are unknown, so no stick figures",
            "source": self.source,
        }


@dataclass(frozen=True)
class AmassMotion:
    tree: SmplTree
    motion: Motion
    fps: float


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: (..., 3) axis-angle in radians -> (..., 3, 3)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    small = theta < 1e-12
    k = np.where(small, 0.0, aa / np.where(small, 1.0, theta))
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    kmat = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1), np.stack([-ky, kx, zero], -1)], -2)
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * kmat + (1 - c) * (kmat @ kmat)


def matrix_to_xyz_euler(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) angles (rx, ry, rz) in radians with r = Rz @ Ry @ Rx."""
    sy = -r[..., 2, 0]
    ry = np.arcsin(np.clip(sy, -1.0, 1.0))
    gimbal = np.abs(sy) > 1 - 1e-9
    rx = np.where(gimbal, 0.0, np.arctan2(r[..., 2, 1], r[..., 2, 2]))
    rz = np.where(gimbal, np.arctan2(-r[..., 0, 1], r[..., 1, 1]), np.arctan2(r[..., 1, 0], r[..., 0, 0]))
    return np.stack([rx, ry, rz], axis=-1)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise MocapFormatError(path, None, f"not a readable .npz archive ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})") from err
    except OSError as err:
        raise MocapFormatError(path, None, f"cannot read file ({err.strerror or err})") from err


def is_shape_file(path: Path) -> bool:
    """AMASS's per-subject ``shape.npz``: body shape only, no motion."""
    return path.name == "shape.npz"


def read_amass(path: Path | str) -> AmassMotion:
    """One AMASS trial; raises ``MocapFormatError(path, None, problem)``."""
    path = Path(path)
    data = _load(path)
    missing = [k for k in ("poses", "trans", "mocap_framerate") if k not in data]
    if missing:
        raise MocapFormatError(path, None, f"missing array{'s' if len(missing) > 1 else ''} {', '.join(missing)} (an AMASS trial has poses, trans and mocap_framerate)")
    poses, trans, rate = data["poses"], data["trans"], data["mocap_framerate"]
    for name, arr in (("poses", poses), ("trans", trans), ("mocap_framerate", rate)):
        if arr.dtype.kind not in "fiu":
            raise MocapFormatError(path, None, f"{name} holds {arr.dtype} values, not numbers")
    if poses.ndim != 2 or poses.shape[1] % 3 or poses.shape[1] // 3 not in TREES:
        raise MocapFormatError(path, None, f"poses has shape {poses.shape}; expected (frames, 3 * joints) with {sorted(TREES)} joints (SMPL, SMPL-H, SMPL-X)")
    if len(poses) == 0:
        raise MocapFormatError(path, None, "poses has no frames")
    if trans.shape != (len(poses), 3):
        raise MocapFormatError(path, None, f"trans has shape {trans.shape}; poses gives {len(poses)} frames, so ({len(poses)}, 3) is expected")
    if rate.size != 1 or not np.isfinite(float(rate.reshape(-1)[0])) or not 1e-3 <= float(rate.reshape(-1)[0]) <= MAX_FPS:
        raise MocapFormatError(path, None, f"mocap_framerate {rate.reshape(-1)[:3].tolist()} is not one frame rate between 0.001 and {MAX_FPS:g}")
    model, names, parents = TREES[poses.shape[1] // 3]
    tree = SmplTree(model, tuple(names), tuple(parents), str(path))
    poses = poses.astype(np.float64)
    trans = trans.astype(np.float64)
    angle_limit = float(np.radians(MAX_ABS_ANGLE_DEG))
    for arr, what, limit, unit in ((poses, "poses", angle_limit, f"radians ({MAX_ABS_ANGLE_DEG:.6g} degrees)"), (trans, "trans", MAX_ABS_POSITION, "metres")):
        bad = ~np.isfinite(arr) | (np.abs(np.nan_to_num(arr, nan=np.inf)) > limit)
        if bad.any():
            f, c = (int(i) for i in np.argwhere(bad)[0])
            where = f"joint {names[c // 3]!r} axis-angle component {c % 3}" if what == "poses" else f"component {'xyz'[c]}"
            problem = "is not finite" if not np.isfinite(arr[f, c]) else f"is beyond the plausible bound of +-{limit:.6g} {unit}"
            raise MocapFormatError(path, None, f"frame {f}: {what}[{f}, {c}] ({where}) = {float(arr[f, c])!r} {problem}")
    euler = matrix_to_xyz_euler(axis_angle_to_matrix(poses.reshape(len(poses), -1, 3)))  # (N, J, 3)
    euler = np.unwrap(euler, axis=0)  # rx, rz continuous; ry stays in [-pi/2, pi/2]
    values = np.concatenate([trans, np.degrees(euler).reshape(len(poses), -1)], axis=1)
    motion = Motion(path=str(path), values=values, frame_numbers=np.arange(len(values), dtype=np.int64),
                    dof_names=tuple(tree.dof_names()), angle_unit="deg")
    return AmassMotion(tree, motion, float(rate.reshape(-1)[0]))
