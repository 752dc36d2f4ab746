"""What the features of a stored motion group mean as poses, for whoever reads ``mocap.zarr``.

The angle encoding (``encode`` for ``prepare_mocap``, ``decode`` its inverse) and the way
back from stored features to joint positions (``features_to_positions``) and bones
(``skeleton_edges``), through the skeleton kept in the group's attributes and its
forward kinematics (``preprocessing.skeletons``: the ASF skeleton, which also carries
AMASS's trees, and the BVH hierarchy). Evaluation draws its stick figures with these
alone, so it does not depend on how motions are read, labelled or split.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from preprocessing.skeletons import ROTATION_DOFS, BvhSkeleton, Skeleton, bvh_forward_kinematics, forward_kinematics
from preprocessing.store import denormalise


def encode(channels_deg: np.ndarray, channels: list[str], encoding: str) -> tuple[np.ndarray, list[str]]:
    """Channel values (N, C) in degrees (translations in ASF units) -> raw features."""
    if encoding == "degrees":
        return channels_deg, list(channels)
    cols, names = [], []
    for i, name in enumerate(channels):
        if name.rsplit(".", 1)[1] in ROTATION_DOFS:
            rad = np.radians(channels_deg[:, i])
            cols += [np.sin(rad), np.cos(rad)]
            names += [f"{name}.sin", f"{name}.cos"]
        else:
            cols.append(channels_deg[:, i])
            names.append(name)
    return np.stack(cols, axis=1), names


def decode(raw: np.ndarray, feature_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Raw features -> channel values (degrees), the inverse of ``encode``."""
    cols, names = [], []
    i = 0
    while i < len(feature_names):
        name = feature_names[i]
        if name.endswith(".sin"):
            cols.append(np.degrees(np.arctan2(raw[:, i], raw[:, i + 1])))
            names.append(name[: -len(".sin")])
            i += 2
        else:
            cols.append(raw[:, i])
            names.append(name)
            i += 1
    return np.stack(cols, axis=1), names


def features_to_positions(features: np.ndarray, attrs: Mapping[str, Any], normalised: bool = True) -> np.ndarray:
    """Joint positions (N, J, 3) of features (N, D) as stored in ``mocap.zarr``.

    Undoes the standardisation (unless ``normalised`` is False) and the angle encoding,
    puts the channels back into a full frame (dropped root channels are zero: the figure
    stands at the origin), and runs the skeleton's forward kinematics. Joints follow
    ``joint_names(attrs)``; positions in inches for CMU skeletons.
    """
    features = np.atleast_2d(np.asarray(features, dtype=np.float64))
    raw = denormalise(features, attrs) if normalised else features
    channels_deg, names = decode(raw, list(attrs["feature_names"]))
    if attrs["skeleton"].get("format") == "bvh":
        return bvh_forward_kinematics(BvhSkeleton.from_dict(attrs["skeleton"]), channels_deg, names)
    skeleton = Skeleton.from_dict(attrs["skeleton"])
    return forward_kinematics(skeleton, channels_deg, names, angle_unit="deg")


def joint_names(attrs: Mapping[str, Any]) -> list[str]:
    return list(attrs["skeleton"]["joint_names"])


def skeleton_edges(attrs: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(parent joint, child joint) index pairs into the positions' joint axis."""
    return [tuple(e) for e in attrs["skeleton"]["edges"]]

