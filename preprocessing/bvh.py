"""Biovision BVH motions: any skeleton, any channel layout (the reader; the skeleton and its
forward kinematics are ``preprocessing.skeletons``' ``BvhSkeleton`` and ``bvh_forward_kinematics``).

Based on the BVH description of Biovision as written up by M. Meredith and S. Maddock,
"Motion Capture File Formats Explained" (University of Sheffield, 2001), and the CMU
notes at research.cs.wisc.edu/graphics/Courses/cs-838-1999/Jeff/BVH.html:

* ``HIERARCHY``, then one ``ROOT <name> { ... }`` block. A joint block holds
  ``OFFSET x y z`` (from its parent, in the parent's frame), ``CHANNELS n <channel>...``
  with channels out of ``Xposition Yposition Zposition Xrotation Yrotation Zrotation``
  in any order and any subset (the root usually has six, other joints three, some
  exporters give every joint six), child ``JOINT <name> { ... }`` blocks and at most
  one ``End Site { OFFSET x y z }``.
* ``MOTION``, ``Frames: <n>``, ``Frame Time: <seconds>``, then ``n`` lines of one
  value a channel, in the order the channels appear in the hierarchy.

Rotation channels are applied in the order written: ``Zrotation Xrotation Yrotation``
is the local rotation ``Rz @ Rx @ Ry`` (a vector is turned about Y first). Angles are
degrees. A joint sits at its parent's position plus the parent's global rotation
applied to ``OFFSET`` plus its own position channels; for the root these channels are
therefore added to its OFFSET (which is zero in nearly every file).

Channels are named ``<joint>.<dof>`` with the Acclaim dof names (``tx ty tz rx ry rz``)
so that the features, their encoding and the root options of ``preprocessing.mocap``
apply unchanged; the columns keep the file's order.

The motion values are read with the vectorised scanner of ``preprocessing.textscan``
(strict decimal numbers) and checked against the plausibility bounds of the Acclaim
reader: an angle beyond ``MAX_ABS_ANGLE_DEG`` degrees, or an offset or position
channel beyond ``MAX_ABS_POSITION`` file units is refused. Every error names the file
and line, and for a value the frame, the channel and the text of the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.acclaim import MAX_ABS_ANGLE_DEG, MAX_ABS_POSITION, ROTATION_DOFS, Motion
from preprocessing.errors import MocapFormatError
from preprocessing.skeletons import BvhJoint, BvhSkeleton
from preprocessing.textscan import Scan, parse_decimals, scan_file

__all__ = ["BvhMotion", "parse_bvh", "CHANNEL_DOFS"]

CHANNEL_DOFS = {
    "xposition": "tx", "yposition": "ty", "zposition": "tz",
    "xrotation": "rx", "yrotation": "ry", "zrotation": "rz",
}
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_FPS = 1e5  # a frame time below 10 us is a typing error
MIN_FPS = 1e-3


@dataclass(frozen=True)
class BvhMotion:
    skeleton: BvhSkeleton
    motion: Motion  # values (frames, channels) in degrees and file units
    frame_time: float  # seconds

    @property
    def fps(self) -> float:
        """Frames a second; a whole number when ``Frame Time`` is one written to a few digits
        (0.008333 s is 120 fps, not 120.0048)."""
        rate = 1.0 / self.frame_time
        whole = round(rate)
        return float(whole) if whole and abs(rate - whole) <= 1e-3 * whole else rate


# --------------------------------------------------------------------------- parsing


class _Tokens:
    """The hierarchy's tokens one at a time, with their lines."""

    def __init__(self, path: Path, sc: Scan) -> None:
        self.path, self.sc, self.i = path, sc, 0
        self._newlines: np.ndarray | None = None

    def line(self, i: int | None = None) -> int:
        i = self.i if i is None else i
        if self._newlines is None:
            self._newlines = np.flatnonzero(self.sc.buf == 10)
        if i >= len(self.sc):
            return int(len(self._newlines) + 1)
        return int(np.searchsorted(self._newlines, self.sc.start[i]) + 1)

    def fail(self, problem: str, i: int | None = None) -> None:
        raise MocapFormatError(self.path, self.line(i), problem)

    def next(self, what: str) -> str:
        if self.i >= len(self.sc):
            self.fail(f"the file ends where {what} should be")
        word = self.sc.token(self.i).decode("latin-1")
        self.i += 1
        return word

    def expect(self, *words: str) -> str:
        word = self.next(" or ".join(repr(w) for w in words))
        if word.upper() not in words:
            self.fail(f"expected {' or '.join(repr(w) for w in words)}, found {word!r}", self.i - 1)
        return word.upper()

    def numbers(self, count: int, what: str, bound: float) -> tuple[float, ...]:
        out = []
        for _ in range(count):
            word = self.next(f"a number of {what}")
            value = float(word) if _DECIMAL.fullmatch(word) else float("nan")
            if not np.isfinite(value):
                self.fail(f"{what}: {word!r} is not a finite decimal number", self.i - 1)
            if abs(value) > bound:
                self.fail(f"{what}: {word!r} is beyond the plausible bound of +-{bound:.6g} file units", self.i - 1)
            out.append(value)
        return tuple(out)


def _joint(tok: _Tokens, name: str, parent: str, joints: list[BvhJoint], seen: dict[str, int]) -> None:
    """One joint block, from its '{' to its '}' (the name is read)."""
    at = tok.i - 1
    if name in seen:
        tok.fail(f"joint {name!r} defined twice (first on line {seen[name]})", at)
    seen[name] = tok.line(at)
    tok.expect("{")
    tok.expect("OFFSET")
    offset = tok.numbers(3, f"OFFSET of {name!r}", MAX_ABS_POSITION)
    dof: tuple[str, ...] = ()
    index = len(joints)
    joints.append(BvhJoint(name, parent, offset, dof))  # placeholder, completed below
    end_site = None
    while True:
        word = tok.next(f"the end of joint {name!r} ('}}')")
        key = word.upper()
        if key == "CHANNELS":
            if dof or index != len(joints) - 1:
                tok.fail(f"joint {name!r}: CHANNELS must come once, before its children", tok.i - 1)
            count_word = tok.next("the number of channels")
            if not count_word.isdigit() or int(count_word) > 6:
                tok.fail(f"joint {name!r}: channel count {count_word!r} is not a number from 0 to 6", tok.i - 1)
            names = []
            for _ in range(int(count_word)):
                ch = tok.next(f"a channel of {name!r}")
                if ch.lower() not in CHANNEL_DOFS:
                    tok.fail(f"joint {name!r}: unknown channel {ch!r} (expected Xposition ... Zrotation)", tok.i - 1)
                names.append(CHANNEL_DOFS[ch.lower()])
            if len(set(names)) != len(names):
                tok.fail(f"joint {name!r}: a channel appears twice in {' '.join(names)}", tok.i - 1)
            dof = tuple(names)
            joints[index] = BvhJoint(name, parent, offset, dof)
        elif key == "JOINT":
            _joint(tok, tok.next("a joint name"), name, joints, seen)
        elif key == "END":
            tok.expect("SITE")
            if end_site is not None:
                tok.fail(f"joint {name!r} has a second End Site", tok.i - 2)
            tok.expect("{")
            tok.expect("OFFSET")
            end_site = tok.numbers(3, f"End Site OFFSET of {name!r}", MAX_ABS_POSITION)
            tok.expect("}")
        elif key == "}":
            joints[index] = BvhJoint(name, parent, offset, joints[index].dof, end_site)
            return
        else:
            tok.fail(f"unexpected {word!r} in joint {name!r} (expected CHANNELS, JOINT, End Site or '}}')", tok.i - 1)


def parse_bvh(path: Path | str) -> BvhMotion:
    """Read a BVH file; raises ``MocapFormatError(path, line, problem)``."""
    path = Path(path)
    try:
        sc = scan_file(path)
    except OSError as err:
        raise MocapFormatError(path, None, f"cannot read file ({err.strerror or err})") from err
    if len(sc) == 0:
        raise MocapFormatError(path, None, "empty file")
    tok = _Tokens(path, sc)
    tok.expect("HIERARCHY")
    tok.expect("ROOT")
    joints: list[BvhJoint] = []
    _joint(tok, tok.next("the root's name"), "", joints, {})
    word = tok.next("MOTION")
    if word.upper() == "ROOT":
        tok.fail("a second ROOT: one skeleton a file is supported", tok.i - 1)
    if word.upper() != "MOTION":
        tok.fail(f"expected 'MOTION' after the hierarchy, found {word!r}", tok.i - 1)
    skeleton = BvhSkeleton(path.stem, tuple(joints), str(path))
    frames_at = tok.i
    tok.expect("FRAMES:")
    count = tok.next("the number of frames")
    if not count.isdigit():
        tok.fail(f"Frames: {count!r} is not a whole number", tok.i - 1)
    n_frames = int(count)
    tok.expect("FRAME")
    tok.expect("TIME:")
    ft_word = tok.next("the frame time")
    frame_time = float(ft_word) if _DECIMAL.fullmatch(ft_word) else float("nan")
    if not (1.0 / MAX_FPS <= frame_time <= 1.0 / MIN_FPS):
        tok.fail(f"Frame Time: {ft_word!r} is not a plausible frame time in seconds ({1 / MAX_FPS:g} to {1 / MIN_FPS:g})", tok.i - 1)
    values = _read_frames(tok, skeleton, n_frames, frames_at)
    names = tuple(skeleton.dof_names())
    motion = Motion(path=str(path), values=values, frame_numbers=np.arange(n_frames, dtype=np.int64), dof_names=names, angle_unit="deg")
    return BvhMotion(skeleton, motion, frame_time)


def _read_frames(tok: _Tokens, skeleton: BvhSkeleton, n_frames: int, frames_at: int) -> np.ndarray:
    sc = tok.sc
    body = tok.i
    n_channels = sum(len(j.dof) for j in skeleton.joints)
    if body < len(sc) and not sc.first[body]:
        tok.fail("the first frame must begin on a new line after 'Frame Time:'", body)
    first = np.flatnonzero(sc.first[body:]) + body  # tokens opening each frame line
    found = len(first)
    if n_channels == 0:
        tok.fail("the hierarchy has no channels", frames_at)
    if found != n_frames:
        where = None if found < n_frames else int(first[n_frames])
        truncated = " (truncated file?)" if found < n_frames else ""
        tok.fail(f"Frames: {n_frames}, but {found} frame lines follow{truncated}", where if where is not None else len(sc))
    if n_frames == 0:
        tok.fail("Frames: 0 (no motion)", frames_at)
    per_line = np.diff(np.append(first, len(sc)))
    bad = np.flatnonzero(per_line != n_channels)
    if len(bad):
        f = int(bad[0])
        tok.fail(f"frame {f}: {per_line[f]} values; the hierarchy has {n_channels} channels", int(first[f]))
    tokens = np.arange(body, len(sc))
    values, ok = parse_decimals(sc, tokens)
    names = skeleton.dof_names()
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        tok.fail(f"frame {k // n_channels}: {names[k % n_channels]} = {sc.token(int(tokens[k])).decode('latin-1')!r} is not a finite decimal number", int(tokens[k]))
    rotation = np.array([n.rsplit(".", 1)[1] in ROTATION_DOFS for n in names])
    limit = np.tile(np.where(rotation, MAX_ABS_ANGLE_DEG, MAX_ABS_POSITION), n_frames)
    over = np.flatnonzero(np.abs(values) > limit)
    if len(over):
        k = int(over[0])
        c = k % n_channels
        unit = f"{MAX_ABS_ANGLE_DEG:.6g} degrees" if rotation[c] else f"{MAX_ABS_POSITION:.6g} file units"
        tok.fail(f"frame {k // n_channels}: {names[c]} = {sc.token(int(tokens[k])).decode('latin-1')!r} is beyond the plausible bound of +-{unit}", int(tokens[k]))
    return values.reshape(n_frames, n_channels)
