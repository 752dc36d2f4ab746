"""AMASS-style ``.npz`` trials built from a CMU ASF/AMC trial (AMASS itself may not be redistributed).

The CMU bones' rotations relative to their parents (ASF axes baked in, as in
``bvh_convert``) go to the SMPL-H joint of the same place as axis-angle vectors (scipy),
the root translation to ``trans`` in metres; the other joints (most finger joints) stay
at zero. The file has the keys and dtypes of an AMASS SMPL-H trial: ``poses`` (N, 156),
``trans`` (N, 3), ``mocap_framerate``, ``betas`` (16), ``gender``, ``dmpls`` (N, 8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from bvh_convert import local_rotations
from preprocessing.acclaim import Motion
from preprocessing.skeletons import Skeleton
from preprocessing.amass import TREES

CMU_TO_SMPLH = {
    "root": "pelvis", "lfemur": "left_hip", "rfemur": "right_hip", "lowerback": "spine1", "ltibia": "left_knee",
    "rtibia": "right_knee", "upperback": "spine2", "lfoot": "left_ankle", "rfoot": "right_ankle", "thorax": "spine3",
    "ltoes": "left_foot", "rtoes": "right_foot", "lowerneck": "neck", "lclavicle": "left_collar",
    "rclavicle": "right_collar", "head": "head", "lhumerus": "left_shoulder", "rhumerus": "right_shoulder",
    "lradius": "left_elbow", "rradius": "right_elbow", "lwrist": "left_wrist", "rwrist": "right_wrist",
    "lfingers": "left_index1", "lthumb": "left_thumb1", "rfingers": "right_index1", "rthumb": "right_thumb1",
}
INCH = 0.0254


def amass_arrays(skeleton: Skeleton, motion: Motion, fps: float = 120.0) -> dict[str, np.ndarray]:
    _, names, _ = TREES[52]
    rot = local_rotations(skeleton, motion)
    n = len(motion.values)
    poses = np.zeros((n, 52, 3))
    for bone, joint in CMU_TO_SMPLH.items():
        if bone in rot:
            poses[:, names.index(joint)] = Rotation.from_matrix(rot[bone]).as_rotvec()
    column = {c: i for i, c in enumerate(motion.dof_names)}
    trans = np.stack([motion.values[:, column[f"root.{d}"]] for d in ("tx", "ty", "tz")], axis=1)
    trans = (trans + np.asarray(skeleton.root_position)) / skeleton.length_unit * INCH
    return {
        "poses": poses.reshape(n, 156),
        "trans": trans,
        "mocap_framerate": np.array(fps),
        "betas": np.zeros(16),
        "gender": np.array("male"),
        "dmpls": np.zeros((n, 8)),
    }


def write_amass(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
