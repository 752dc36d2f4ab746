"""Skeletons as a motion group stores them, and their forward kinematics.

``Skeleton`` (with its ``Bone``\ s) is the Acclaim ASF skeleton, which also carries AMASS's
kinematic trees; ``BvhSkeleton`` (with its ``BvhJoint``\ s) a BVH hierarchy. Both go into the
zarr attributes as ``to_dict()`` and come back with ``from_dict``; ``forward_kinematics`` and
``bvh_forward_kinematics`` turn frames of joint angles into joint positions. The parsers
(``preprocessing.acclaim``, ``preprocessing.bvh``) build these; whoever draws a stored motion
(``preprocessing.poses``) needs this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

ROTATION_DOFS = ("rx", "ry", "rz")
TRANSLATION_DOFS = ("tx", "ty", "tz")


def _drawing_keys(skeleton: Skeleton | BvhSkeleton) -> dict[str, Any]:
    """The keys every stored skeleton ends with: what a drawing needs (joints, bones as index pairs), its source."""
    return {"joint_names": skeleton.joint_names, "edges": [list(e) for e in skeleton.edges()], "source": skeleton.source}


@dataclass(frozen=True)
class Bone:
    name: str
    parent: str
    direction: tuple[float, float, float]  # unit vector, world coordinates at rest
    length: float  # in ASF length units (before dividing by units.length)
    axis: tuple[float, float, float]  # angles of the bone's local frame (ASF angle unit)
    axis_order: str  # e.g. 'XYZ': rotate about X first
    dof: tuple[str, ...]  # channels in the order they appear in the AMC, e.g. ('rx', 'ry', 'rz')
    limits: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Skeleton:
    name: str
    length_unit: float  # ASF ':units length' (CMU: 0.45, i.e. lengths are inches * 0.45)
    angle_unit: str  # 'deg' | 'rad' (unit of axis angles; default for AMC values)
    root_order: tuple[str, ...]  # e.g. ('tx', 'ty', 'tz', 'rx', 'ry', 'rz')
    root_axis: str  # e.g. 'XYZ'
    root_position: tuple[float, float, float]
    root_orientation: tuple[float, float, float]
    bones: tuple[Bone, ...]  # parents before children
    source: str = ""
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({b.name: i for i, b in enumerate(self.bones)})

    @property
    def joint_names(self) -> list[str]:
        """Joints of the stick figure: the root, then the end point of every bone."""
        return ["root"] + [b.name for b in self.bones]

    def dof_names(self) -> list[str]:
        """Every channel of an AMC frame as '<bone>.<dof>', root first, ASF bone order."""
        names = [f"root.{d}" for d in self.root_order]
        for bone in self.bones:
            names += [f"{bone.name}.{d}" for d in bone.dof]
        return names

    def edges(self) -> list[tuple[int, int]]:
        """(parent joint, child joint) index pairs into ``joint_names``."""
        joints = {name: i for i, name in enumerate(self.joint_names)}
        return [(joints[b.parent], joints[b.name]) for b in self.bones]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (stored in the zarr attributes)."""
        return {
            "name": self.name,
            "units": {"length": self.length_unit, "angle": self.angle_unit},
            "position_unit": "ASF length / units.length (inches for CMU)",
            "root": {
                "order": list(self.root_order),
                "axis": self.root_axis,
                "position": list(self.root_position),
                "orientation": list(self.root_orientation),
            },
            "bones": [
                {
                    "name": b.name,
                    "parent": b.parent,
                    "direction": list(b.direction),
                    "length": b.length,
                    "axis": list(b.axis),
                    "axis_order": b.axis_order,
                    "dof": list(b.dof),
                    "limits": [list(lim) for lim in b.limits],
                }
                for b in self.bones
            ],
            **_drawing_keys(self),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Skeleton":
        return cls(
            name=d["name"],
            length_unit=float(d["units"]["length"]),
            angle_unit=d["units"]["angle"],
            root_order=tuple(d["root"]["order"]),
            root_axis=d["root"]["axis"],
            root_position=tuple(d["root"]["position"]),
            root_orientation=tuple(d["root"]["orientation"]),
            bones=tuple(
                Bone(
                    name=b["name"],
                    parent=b["parent"],
                    direction=tuple(b["direction"]),
                    length=float(b["length"]),
                    axis=tuple(b["axis"]),
                    axis_order=b["axis_order"],
                    dof=tuple(b["dof"]),
                    limits=tuple(tuple(lim) for lim in b["limits"]),
                )
                for b in d["bones"]
            ),
            source=d.get("source", ""),
        )


@dataclass(frozen=True)
class BvhJoint:
    name: str
    parent: str  # "" for the root
    offset: tuple[float, float, float]
    dof: tuple[str, ...]  # channels in file order, e.g. ('tx', 'ty', 'tz', 'rz', 'rx', 'ry')
    end_site: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class BvhSkeleton:
    name: str
    joints: tuple[BvhJoint, ...]  # parents before children (file order)
    source: str = ""
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def root(self) -> str:
        return self.joints[0].name

    def dof_names(self) -> list[str]:
        """Every channel of a frame as '<joint>.<dof>', in the file's column order."""
        return [f"{j.name}.{d}" for j in self.joints for d in j.dof]

    @property
    def joint_names(self) -> list[str]:
        """Joints of the stick figure: every joint, then every end site ('<joint>.end')."""
        return [j.name for j in self.joints] + [f"{j.name}.end" for j in self.joints if j.end_site is not None]

    def edges(self) -> list[tuple[int, int]]:
        names = {n: i for i, n in enumerate(self.joint_names)}
        out = [(names[j.parent], names[j.name]) for j in self.joints if j.parent]
        out += [(names[j.name], names[f"{j.name}.end"]) for j in self.joints if j.end_site is not None]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (stored in the zarr attributes)."""
        return {
            "format": "bvh",
            "name": self.name,
            "root": self.root,
            "position_unit": "BVH file units",
            "rotation": "channels applied in file order: 'rz rx ry' is Rz @ Rx @ Ry; degrees",
            "joints": [
                {"name": j.name, "parent": j.parent, "offset": list(j.offset), "dof": list(j.dof),
                 "end_site": list(j.end_site) if j.end_site is not None else None}
                for j in self.joints
            ],
            **_drawing_keys(self),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BvhSkeleton":
        return cls(
            name=d["name"],
            joints=tuple(
                BvhJoint(j["name"], j["parent"], tuple(j["offset"]), tuple(j["dof"]),
                         tuple(j["end_site"]) if j["end_site"] is not None else None)
                for j in d["joints"]
            ),
            source=d.get("source", ""),
        )


def axis_rotation(axis: str, angles_rad: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations about one coordinate axis."""
    c, s = np.cos(angles_rad), np.sin(angles_rad)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if axis == "x":
        m = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "y":
        m = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        m = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.moveaxis(np.array(m), (0, 1), (-2, -1))


def euler_matrix(order: str, angles_rad: np.ndarray) -> np.ndarray:
    """Rotation applying the angles (..., len(order)) about the axes of ``order`` in turn:
    'XYZ' gives Rz @ Ry @ Rx."""
    angles_rad = np.asarray(angles_rad, dtype=np.float64)
    flat = angles_rad.reshape(-1, len(order))
    out = np.broadcast_to(np.eye(3), (len(flat), 3, 3)).copy()
    for k, axis in enumerate(order.lower()):
        out = axis_rotation(axis, flat[:, k]) @ out
    return out.reshape(*angles_rad.shape[:-1], 3, 3)


def forward_kinematics(skeleton: Skeleton, frames: np.ndarray, dof_names: list[str] | tuple[str, ...] | None = None, angle_unit: str = "deg") -> np.ndarray:
    """Joint positions (N, J, 3) of frames (N, D) whose columns are ``dof_names``
    (default: ``skeleton.dof_names()``); channels missing from ``dof_names`` are zero.

    Positions are in the ASF's length unit divided by ``units length`` (inches for CMU),
    joints ordered as ``skeleton.joint_names``.
    """
    frames = np.atleast_2d(np.asarray(frames, dtype=np.float64))
    n = len(frames)
    names = list(dof_names) if dof_names is not None else skeleton.dof_names()
    column = {name: i for i, name in enumerate(names)}
    to_rad = np.radians if angle_unit == "deg" else (lambda a: a)
    deg_to_rad = np.radians if skeleton.angle_unit == "deg" else (lambda a: np.asarray(a, dtype=np.float64))

    def channel(bone: str, dof: str) -> np.ndarray:
        i = column.get(f"{bone}.{dof}")
        return frames[:, i] if i is not None else np.zeros(n)

    positions = np.zeros((n, len(skeleton.bones) + 1, 3))
    rotations: dict[str, np.ndarray] = {}
    # Root: translation channels plus rest position; rotation C M C^-1 about its axis.
    root_rot = [d for d in skeleton.root_order if d in ROTATION_DOFS]
    c_root = euler_matrix(skeleton.root_axis, deg_to_rad(np.asarray(skeleton.root_orientation)))
    m_root = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    for d in root_rot:
        m_root = axis_rotation(d[1], to_rad(channel("root", d))) @ m_root
    rotations["root"] = c_root @ m_root @ c_root.T
    translation = np.stack([channel("root", d) for d in TRANSLATION_DOFS], axis=1)
    positions[:, 0] = (translation + np.asarray(skeleton.root_position)) / skeleton.length_unit
    joint = {"root": 0}
    for j, bone in enumerate(skeleton.bones, start=1):
        c = euler_matrix(bone.axis_order, deg_to_rad(np.asarray(bone.axis)))
        m = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        for d in bone.dof:
            m = axis_rotation(d[1], to_rad(channel(bone.name, d))) @ m
        rotations[bone.name] = rotations[bone.parent] @ (c @ m @ c.T)
        offset = np.asarray(bone.direction) * (bone.length / skeleton.length_unit)
        positions[:, j] = positions[:, joint[bone.parent]] + rotations[bone.name] @ offset
        joint[bone.name] = j
    return positions


def bvh_forward_kinematics(skeleton: BvhSkeleton, frames: np.ndarray, dof_names: list[str] | tuple[str, ...] | None = None) -> np.ndarray:
    """Positions (N, J, 3) of ``skeleton.joint_names`` for frames (N, D) whose columns
    are ``dof_names`` (default: every channel); channels not given are zero. Angles in
    degrees, positions in the file's units."""
    frames = np.atleast_2d(np.asarray(frames, dtype=np.float64))
    n = len(frames)
    names = list(dof_names) if dof_names is not None else skeleton.dof_names()
    column = {name: i for i, name in enumerate(names)}

    def channel(joint: str, dof: str) -> np.ndarray:
        i = column.get(f"{joint}.{dof}")
        return frames[:, i] if i is not None else np.zeros(n)

    index = {n_: i for i, n_ in enumerate(skeleton.joint_names)}
    positions = np.zeros((n, len(index), 3))
    rotations: dict[str, np.ndarray] = {}
    for j in skeleton.joints:
        local = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        for d in j.dof:
            if d in ROTATION_DOFS:
                local = local @ axis_rotation(d[1], np.radians(channel(j.name, d)))
        shift = np.asarray(j.offset) + np.stack([channel(j.name, d) for d in ("tx", "ty", "tz")], axis=1)
        if j.parent:
            parent_rot = rotations[j.parent]
            positions[:, index[j.name]] = positions[:, index[j.parent]] + (parent_rot @ shift[..., None])[..., 0]
            rotations[j.name] = parent_rot @ local
        else:
            positions[:, index[j.name]] = shift
            rotations[j.name] = local
        if j.end_site is not None:
            positions[:, index[f"{j.name}.end"]] = positions[:, index[j.name]] + rotations[j.name] @ np.asarray(j.end_site)
    return positions
