"""Acclaim ASF/AMC -> BVH text, as the public CMU BVH conversions do it (for the tests).

Each ASF bone becomes a BVH joint placed at the bone's start (its parent's end point),
rotated by the bone's rotation relative to its parent, ``C M C^-1`` (the ASF ``axis``
baked in, so every BVH joint frame is aligned with the world at rest), written as
``Zrotation Yrotation Xrotation`` (``Rz @ Ry @ Rx``) with angles in (-180, 180]. A bone
without degrees of freedom gets ``CHANNELS 0``. The children's OFFSET is the bone's
vector (``direction * length``); a leaf bone ends in an End Site. Lengths and the root
translation are divided by ``units length`` (inches for CMU), as in
``skeletons.forward_kinematics``.

Documented differences from the AMC channels, then: translations in inches rather
than ASF units; rotations of bones whose ASF ``axis`` is not zero are re-expressed in
the world-aligned frame (three channels); angles are wrapped into (-180, 180].
"""

from __future__ import annotations

import numpy as np

from preprocessing.acclaim import Motion
from preprocessing.skeletons import ROTATION_DOFS, Skeleton, axis_rotation, euler_matrix


def zyx_angles(r: np.ndarray) -> np.ndarray:
    """Angles (N, 3) in degrees as (rz, ry, rx) with r = Rz @ Ry @ Rx."""
    ry = np.arcsin(np.clip(-r[:, 2, 0], -1.0, 1.0))
    rx = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    rz = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    return np.degrees(np.stack([rz, ry, rx], axis=1))


def local_rotations(skeleton: Skeleton, motion: Motion) -> dict[str, np.ndarray]:
    """Every bone's (and the root's) rotation relative to its parent, (N, 3, 3)."""
    frames = motion.in_degrees()
    column = {n: i for i, n in enumerate(motion.dof_names)}
    n = len(frames)
    rad = np.radians if skeleton.angle_unit == "deg" else np.asarray

    def m_of(bone: str, dofs) -> np.ndarray:
        m = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        for d in dofs:
            if d in ROTATION_DOFS:
                m = axis_rotation(d[1], np.radians(frames[:, column[f"{bone}.{d}"]])) @ m
        return m

    c = euler_matrix(skeleton.root_axis, rad(np.asarray(skeleton.root_orientation, dtype=float)))
    out = {"root": c @ m_of("root", skeleton.root_order) @ c.T}
    for b in skeleton.bones:
        c = euler_matrix(b.axis_order, rad(np.asarray(b.axis, dtype=float)))
        out[b.name] = c @ m_of(b.name, b.dof) @ c.T
    return out


def amc_to_bvh(skeleton: Skeleton, motion: Motion, frame_time: float = 1 / 120) -> str:
    scale = 1.0 / skeleton.length_unit
    children: dict[str, list] = {}
    for b in skeleton.bones:
        children.setdefault(b.parent, []).append(b)
    vec = {b.name: np.asarray(b.direction) * b.length * scale for b in skeleton.bones}
    rot = local_rotations(skeleton, motion)
    frames = motion.in_degrees()
    column = {n: i for i, n in enumerate(motion.dof_names)}
    lines = ["HIERARCHY", "ROOT root", "{"]
    root_pos = np.asarray(skeleton.root_position) * scale
    lines += [f"\tOFFSET {root_pos[0]:.9g} {root_pos[1]:.9g} {root_pos[2]:.9g}",
              "\tCHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation"]
    columns = [np.stack([frames[:, column[f"root.{d}"]] * scale if f"root.{d}" in column else np.zeros(len(frames))
                         for d in ("tx", "ty", "tz")], axis=1), zyx_angles(rot["root"])]

    def joint(b, offset: np.ndarray, depth: int) -> None:
        pad = "\t" * depth
        lines.append(f"{pad}JOINT {b.name}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}\tOFFSET {offset[0]:.9g} {offset[1]:.9g} {offset[2]:.9g}")
        if b.dof:
            lines.append(f"{pad}\tCHANNELS 3 Zrotation Yrotation Xrotation")
            columns.append(zyx_angles(rot[b.name]))
        else:
            lines.append(f"{pad}\tCHANNELS 0")
        if children.get(b.name):
            for child in children[b.name]:
                joint(child, vec[b.name], depth + 1)
        else:
            v = vec[b.name]
            lines.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET {v[0]:.9g} {v[1]:.9g} {v[2]:.9g}", f"{pad}\t}}"])
        lines.append(f"{pad}}}")

    for b in children.get("root", []):
        joint(b, np.zeros(3), 1)
    lines.append("}")
    values = np.concatenate(columns, axis=1)
    lines += ["MOTION", f"Frames: {len(values)}", f"Frame Time: {frame_time:.9g}"]
    lines += [" ".join(f"{v:.9g}" for v in row) for row in values]
    return "\n".join(lines) + "\n"


def amc_joint_of_bvh(skeleton: Skeleton) -> list[str]:
    """For every joint of ``skeletons.forward_kinematics`` (root, then every bone's end),
    the BVH joint at the same place (root; a child joint of the bone, or its End Site)."""
    children: dict[str, list[str]] = {}
    for b in skeleton.bones:
        children.setdefault(b.parent, []).append(b.name)
    return ["root"] + [children[b.name][0] if b.name in children else f"{b.name}.end" for b in skeleton.bones]
