"""Acclaim ASF skeletons and AMC motions (the CMU Graphics Lab format): the readers.

Based on the Acclaim format description as used by the CMU Motion Capture Database
(M. Schafer, "Acclaim Skeleton File Definition V1.10", 1994; the CMU "ASF/AMC" notes
at research.cs.wisc.edu/graphics/Courses/cs-838-1999/Jeff/ASF-AMC.html):

* ASF: ``:units`` (length scale, angle unit), ``:root`` (``order`` of the root's six
  channels, ``axis``, rest ``position``/``orientation``), ``:bonedata`` (per bone:
  ``direction`` in world coordinates, ``length``, ``axis`` angles + rotation order of
  the bone's local frame, ``dof`` channels, ``limits``) and ``:hierarchy``.
* AMC: optional ``:FULLY-SPECIFIED``, ``:DEGREES``/``:RADIANS`` header, then frames:
  a line with the frame number, then one line ``<bone> <values...>`` for every bone
  with degrees of freedom, in any order.

The skeleton they build and its forward kinematics live in ``preprocessing.skeletons``
(what drawing a stored motion needs, without the readers). Forward kinematics follow the
CMU convention: a bone's rotation relative to its parent is
``C M C^-1`` with ``C`` the rotation of its ``axis`` line and ``M`` the product of its
dof rotations applied in the listed order; its end point is the parent's end point plus
the global rotation applied to ``length * direction``.

The AMC reader validates every frame against the skeleton (each bone with degrees of
freedom present exactly once, the right number of values, only decimal numbers within
plausible bounds, consecutive frame numbers) and does so with vectorised NumPy over the
whole file (``textscan``), at a few microseconds a frame.

Plausibility bounds: a number beyond them is a typing or transfer error, not a pose.
An angle (AMC rotation channels; ASF axis, orientation and limits) must satisfy
``|angle| <= MAX_ABS_ANGLE_DEG`` = 1e4 degrees (about 28 turns; the CMU files reach
1154.5 degrees, where angles are unwrapped over several turns), a position or length
(AMC root translation; ASF position, direction, length) ``|x| <= MAX_ABS_POSITION`` =
1e5 ASF length units (the CMU root translations stay within 54). Every error names
the file and line, and for an AMC value the frame, the channel and the text of the value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from preprocessing.errors import MocapFormatError
from preprocessing.skeletons import ROTATION_DOFS, TRANSLATION_DOFS, Bone, Skeleton
from preprocessing.textscan import Scan, parse_decimals, scan, scan_file

_KNOWN_DOFS = ROTATION_DOFS + TRANSLATION_DOFS + ("l",)
_DEGREE_WORDS = ("deg", "degree", "degrees")
_SECTIONS = ("version", "name", "units", "documentation", "root", "bonedata", "hierarchy", "skin")
_ONE_LINE_SECTIONS = ("version", "name")  # the value is on the header line
_UNITS_KEYWORDS = ("mass", "length", "angle")
_ROOT_KEYWORDS = ("order", "axis", "position", "orientation")

MAX_ABS_ANGLE_DEG = 1e4  # degrees (see the module notes)
MAX_ABS_POSITION = 1e5  # ASF length units (see the module notes)


@dataclass(frozen=True)
class Motion:
    """The frames of one AMC file, as written in it."""

    path: str
    values: np.ndarray  # (frames, dofs) float64, columns as ``dof_names``
    frame_numbers: np.ndarray  # (frames,) int64, as in the file
    dof_names: tuple[str, ...]
    angle_unit: str  # 'deg' | 'rad'

    def in_degrees(self) -> np.ndarray:
        """``values`` with rotation channels in degrees (translations unchanged)."""
        if self.angle_unit == "deg":
            return self.values
        out = self.values.copy()
        rot = [i for i, n in enumerate(self.dof_names) if n.rsplit(".", 1)[1] in ROTATION_DOFS]
        out[:, rot] = np.degrees(out[:, rot])
        return out


# --------------------------------------------------------------------------- ASF


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MocapFormatError(path, None, f"cannot read file ({err.strerror or err})") from err
    return data.decode("latin-1")


def _floats(path: Path, line: int, words: list[str], count: int, what: str, bound: tuple[float, str]) -> tuple[float, ...]:
    """``count`` finite numbers with ``|x| <= bound[0]`` (``bound[1]`` names its unit)."""
    if len(words) != count:
        raise MocapFormatError(path, line, f"{what}: expected {count} numbers, found {len(words)}")
    try:
        values = tuple(float(w) for w in words)
    except ValueError:
        raise MocapFormatError(path, line, f"{what}: not a number in {' '.join(words)!r}") from None
    if not all(np.isfinite(values)):
        raise MocapFormatError(path, line, f"{what}: non-finite number in {' '.join(words)!r}")
    for word, value in zip(words, values):
        if abs(value) > bound[0]:
            raise MocapFormatError(path, line, f"{what}: {word!r} is beyond the plausible bound of +-{bound[0]:.6g} {bound[1]}")
    return values


def _rotation_order(path: Path, line: int, word: str) -> str:
    order = word.upper()
    if sorted(order) != ["X", "Y", "Z"]:
        raise MocapFormatError(path, line, f"rotation order {word!r} is not a permutation of XYZ")
    return order


def parse_asf(path: Path | str) -> Skeleton:
    """Read an ASF skeleton; raises ``MocapFormatError(path, line, problem)``.

    Sections, ``:units`` and ``:root`` keywords outside the Acclaim set are refused, and
    ``:name``/``:version`` hold one line: a lost or garbled section header would
    otherwise hide the lines below it in another section, silently.
    """
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise MocapFormatError(path, None, "empty file")
    # Only "\n" ends a line (as in the AMC reader and in editors): str.splitlines would also
    # split at a lone "\r", "\x0c" or "\x85" and shift every line number after it.
    lines = [ln.split("#", 1)[0].split() for ln in text.split("\n")]
    sections: dict[str, list[tuple[int, list[str]]]] = {}
    current = None
    for number, words in enumerate(lines, start=1):
        if not words:
            continue
        if words[0].startswith(":"):
            current = words[0][1:].lower()
            if current not in _SECTIONS:
                raise MocapFormatError(path, number, f"unknown section {words[0]!r}")
            if current in sections and current in ("root", "bonedata", "hierarchy", "units"):
                raise MocapFormatError(path, number, f"section ':{current}' appears twice")
            sections.setdefault(current, []).append((number, words[1:]))
            continue
        if current is None:
            raise MocapFormatError(path, number, f"text before the first section: {' '.join(words)!r}")
        if current in _ONE_LINE_SECTIONS:
            raise MocapFormatError(path, number, f"unexpected line in section ':{current}' (its value belongs on the header line): {' '.join(words)!r}")
        sections[current].append((number, words))

    def require(needed: str) -> list[tuple[int, list[str]]]:
        """A required section; checked just before it is read, so that the lines of a
        section whose header is missing are reported by the section they fell into."""
        if needed in sections:
            return sections[needed]
        # Point at where the section should have begun: before the next one, else the end.
        required = ("root", "bonedata", "hierarchy")
        later = [s for s in required[required.index(needed) + 1 :] if s in sections]
        if later:
            raise MocapFormatError(path, sections[later[0]][0][0], f"missing section ':{needed}' before ':{later[0]}'")
        raise MocapFormatError(path, len(lines), f"missing section ':{needed}' (the file ends here)")

    name = " ".join(sections.get("name", [(0, ["unnamed"])])[0][1]) or "unnamed"
    length_unit, angle_unit = 1.0, "deg"
    for number, words in sections.get("units", [])[1:]:
        if words[0] not in _UNITS_KEYWORDS:
            raise MocapFormatError(path, number, f"unknown units keyword {words[0]!r} (expected one of {', '.join(_UNITS_KEYWORDS)})")
        if words[0] == "length":
            length_unit = _floats(path, number, words[1:], 1, "units length", (MAX_ABS_POSITION, "(a scale)"))[0]
            if length_unit <= 0:
                raise MocapFormatError(path, number, "units length must be positive")
        elif words[0] == "angle":
            if len(words) != 2 or words[1].lower() not in _DEGREE_WORDS + ("rad", "radian", "radians"):
                raise MocapFormatError(path, number, f"units angle must be deg or rad, got {' '.join(words[1:])!r}")
            angle_unit = "deg" if words[1].lower() in _DEGREE_WORDS else "rad"
    position_bound = (MAX_ABS_POSITION, "length units")
    angle_bound = (MAX_ABS_ANGLE_DEG, "degrees") if angle_unit == "deg" else (float(np.radians(MAX_ABS_ANGLE_DEG)), f"radians ({MAX_ABS_ANGLE_DEG:.6g} degrees)")

    root_order: tuple[str, ...] | None = None
    root_axis, root_position, root_orientation = "XYZ", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    root_line = require("root")[0][0]
    for number, words in sections["root"][1:]:
        key = words[0].lower()
        if key not in _ROOT_KEYWORDS:
            raise MocapFormatError(path, number, f"unknown root keyword {words[0]!r} (expected one of {', '.join(_ROOT_KEYWORDS)})")
        if key == "order":
            root_order = tuple(w.lower() for w in words[1:])
            unknown = [d for d in root_order if d not in ROTATION_DOFS + TRANSLATION_DOFS]
            if unknown or len(set(root_order)) != len(root_order):
                raise MocapFormatError(path, number, f"root order {' '.join(words[1:])!r}: channels must be distinct TX TY TZ RX RY RZ")
        elif key == "axis":
            if len(words) != 2:
                raise MocapFormatError(path, number, "root axis needs one rotation order such as XYZ")
            root_axis = _rotation_order(path, number, words[1])
        elif key == "position":
            root_position = _floats(path, number, words[1:], 3, "root position", position_bound)
        elif key == "orientation":
            root_orientation = _floats(path, number, words[1:], 3, "root orientation", angle_bound)
    if root_order is None:
        raise MocapFormatError(path, root_line, "root has no 'order' line")

    bones: dict[str, dict[str, Any]] = {}
    block: dict[str, Any] | None = None
    key = None
    for number, words in require("bonedata")[1:]:
        head = words[0].lower()
        if head == "begin":
            if block is not None:
                raise MocapFormatError(path, number, "'begin' inside a bone (missing 'end')")
            block, key = {"line": number, "limits": []}, None
            continue
        if block is None:
            raise MocapFormatError(path, number, f"bone data outside begin/end: {' '.join(words)!r}")
        if head == "end":
            for needed in ("name", "direction", "length", "axis"):
                if needed not in block:
                    raise MocapFormatError(path, number, f"bone {block.get('name', '?')!r} has no '{needed}'")
            dof = block.get("dof", ())
            if block["limits"] and len(block["limits"]) != len(dof):
                raise MocapFormatError(path, number, f"bone {block['name']!r}: {len(block['limits'])} limits for {len(dof)} dof")
            if block["name"] in bones or block["name"] == "root":
                raise MocapFormatError(path, number, f"bone {block['name']!r} defined twice")
            bones[block["name"]] = block
            block = None
            continue
        if head == "id":
            key = None
        elif head == "name":
            if len(words) != 2:
                raise MocapFormatError(path, number, "a bone name must be one word")
            block["name"], block["name_line"], key = words[1], number, None
        elif head == "direction":
            block["direction"], key = _floats(path, number, words[1:], 3, "direction", position_bound), None
        elif head == "length":
            block["length"], key = _floats(path, number, words[1:], 1, "length", position_bound)[0], None
        elif head == "axis":
            if len(words) != 5:
                raise MocapFormatError(path, number, "axis needs three angles and a rotation order")
            block["axis"] = _floats(path, number, words[1:4], 3, "axis", angle_bound)
            block["axis_order"], key = _rotation_order(path, number, words[4]), None
        elif head == "dof":
            dof = tuple(w.lower() for w in words[1:])
            unknown = [d for d in dof if d not in _KNOWN_DOFS]
            if unknown or len(set(dof)) != len(dof) or not dof:
                raise MocapFormatError(path, number, f"dof {' '.join(words[1:])!r}: channels must be distinct rx ry rz tx ty tz l")
            if any(d not in ROTATION_DOFS for d in dof):
                raise MocapFormatError(path, number, f"dof {' '.join(words[1:])!r}: only rotations (rx ry rz) are supported for bones")
            block["dof"], key = dof, None
        elif head == "limits" or key == "limits":
            text = " ".join(words[1:] if head == "limits" else words).replace("(", " ").replace(")", " ").split()
            values = _floats(path, number, text, len(text), "limits", angle_bound) if text else ()
            if len(values) % 2:
                raise MocapFormatError(path, number, "limits come in (min max) pairs")
            block["limits"] += [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
            key = "limits"
        elif head in ("bodymass", "cofmass"):
            key = None
        else:
            raise MocapFormatError(path, number, f"unknown bone keyword {words[0]!r}")
    if block is not None:
        raise MocapFormatError(path, block["line"], f"bone {block.get('name', '?')!r} not closed by 'end' (truncated file?)")

    parents: dict[str, str] = {}
    hierarchy_end = require("hierarchy")[-1][0]  # its last line: where a missing entry shows
    in_hierarchy = {w for _, words in sections["hierarchy"][1:] for w in words}

    def unplaced() -> str:
        """Bones the hierarchy never names, with their lines: often the other end of an error."""
        missing = [f"{b!r} (line {bones[b]['name_line']})" for b in bones if b not in in_hierarchy]
        return f"; defined but not in the hierarchy: {', '.join(missing)}" if missing else ""

    inside = False
    for number, words in sections["hierarchy"][1:]:
        if words[0].lower() == "begin":
            inside = True
            continue
        if words[0].lower() == "end":
            inside = False
            continue
        if not inside:
            raise MocapFormatError(path, number, "hierarchy line outside begin/end")
        parent = words[0]
        if parent != "root" and parent not in bones:
            raise MocapFormatError(path, number, f"unknown bone {parent!r} in hierarchy{unplaced()}")
        for child in words[1:]:
            if child not in bones:
                raise MocapFormatError(path, number, f"unknown bone {child!r} in hierarchy{unplaced()}")
            if child in parents:
                raise MocapFormatError(path, number, f"bone {child!r} has two parents")
            parents[child] = parent
    orphans = [b for b in bones if b not in parents]
    if orphans:
        listed = ", ".join(f"{b!r} (line {bones[b]['name_line']})" for b in orphans)
        raise MocapFormatError(path, hierarchy_end, f"bones without a parent in the hierarchy: {listed}")
    # Parents before children (breadth first from the root); a cycle never reaches it.
    ordered: list[str] = []
    frontier = ["root"]
    while frontier:
        nxt = [b for b in bones if parents[b] in frontier]
        ordered += nxt
        frontier = nxt
    if len(ordered) != len(bones):
        raise MocapFormatError(path, hierarchy_end, f"hierarchy has a cycle among {sorted(set(bones) - set(ordered))}")
    return Skeleton(
        name=name,
        length_unit=length_unit,
        angle_unit=angle_unit,
        root_order=root_order,
        root_axis=root_axis,
        root_position=root_position,
        root_orientation=root_orientation,
        bones=tuple(
            Bone(
                name=b,
                parent=parents[b],
                direction=tuple(bones[b]["direction"]),
                length=bones[b]["length"],
                axis=tuple(bones[b]["axis"]),
                axis_order=bones[b]["axis_order"],
                dof=tuple(bones[b].get("dof", ())),
                limits=tuple(bones[b]["limits"]),
            )
            for b in _parents_first(list(bones), parents)
        ),
        source=str(path),
    )


def _parents_first(names: list[str], parents: Mapping[str, str]) -> list[str]:
    """File order where possible, but every parent before its children (depth-first)."""
    children: dict[str, list[str]] = {}
    for name in names:
        children.setdefault(parents[name], []).append(name)
    out: list[str] = []
    stack = list(reversed(children.get("root", [])))
    while stack:
        name = stack.pop()
        out.append(name)
        stack += list(reversed(children.get(name, [])))
    return out


# --------------------------------------------------------------------------- AMC


def _name_keys(sc: Scan, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, length) of tokens of at most 16 bytes: their bytes as two uint64 words."""
    words = sc.buf.view("<u8")
    start = sc.start[tokens]
    length = sc.end[tokens] - start
    at = start >> 3
    shift = ((start & 7) << 3).astype(np.uint64)
    w0, w1, w2 = (np.take(words, at + k) for k in range(3))
    lo = (w0 >> shift) | (w1 << (np.uint64(64) - shift))
    hi = (w1 >> shift) | (w2 << (np.uint64(64) - shift))
    lo &= (np.uint64(1) << (np.minimum(length, 8).astype(np.uint64) << np.uint64(3))) - np.uint64(1)
    hi &= (np.uint64(1) << (np.clip(length - 8, 0, 8).astype(np.uint64) << np.uint64(3))) - np.uint64(1)
    return lo, hi, length


_MIX = np.uint64(0x9E3779B97F4A7C15)


@functools.lru_cache(maxsize=64)
def _name_table(names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Byte keys of the bone names, sorted by a hash of the two words for lookup."""
    table = scan(" ".join(names).encode("latin-1"))
    known_lo, known_hi, known_len = _name_keys(table, np.arange(len(names)))
    known_key = known_lo ^ (known_hi * _MIX) ^ known_len.astype(np.uint64)
    order = np.argsort(known_key, kind="stable")
    return known_lo, known_hi, known_len, order, known_key[order]


def _lookup_names(sc: Scan, tokens: np.ndarray, names: list[str]) -> np.ndarray:
    """Index into ``names`` of every token (exact byte comparison), -1 when unknown."""
    ids = np.full(len(tokens), -1, dtype=np.int64)
    if len(tokens) == 0:
        return ids
    known_lo, known_hi, known_len, order, sorted_key = _name_table(tuple(names))
    long_known = known_len > 16
    lo, hi, length = _name_keys(sc, tokens)
    # A hash of the two words finds the candidate; the bytes themselves decide.
    key = lo ^ (hi * _MIX) ^ length.astype(np.uint64)
    pos = np.minimum(np.searchsorted(sorted_key, key), len(names) - 1)
    cand = order[pos]
    hit = (sorted_key[pos] == key) & (known_lo[cand] == lo) & (known_hi[cand] == hi) & (known_len[cand] == length)
    hit &= ~long_known[cand]
    ids[hit] = cand[hit]
    # Names longer than 16 bytes (none in CMU files) are compared one by one.
    if long_known.any():
        long_names = {n.encode("latin-1"): i for i, n in enumerate(names) if len(n) > 16}
        for j in np.flatnonzero(~hit & (length > 16)):
            ids[j] = long_names.get(sc.token(tokens[j]), -1)
    return ids


def _frame_of_line(frame_line: np.ndarray) -> np.ndarray:
    return np.cumsum(frame_line) - 1


def parse_amc(path: Path | str, skeleton: Skeleton) -> Motion:
    """Read an AMC motion and validate every frame against ``skeleton``.

    Raises ``MocapFormatError(path, line, problem)`` for an unreadable or empty file,
    an unknown header keyword, a line that is neither a frame number nor a bone, an
    unknown bone, a bone listed twice or missing in a frame, a wrong number of values,
    a value that is not a finite decimal number, and frame numbers that do not count
    up by one.
    """
    path = Path(path)
    try:
        sc = scan_file(path)
    except OSError as err:
        raise MocapFormatError(path, None, f"cannot read file ({err.strerror or err})") from err
    n_tok = len(sc)
    if n_tok == 0:
        raise MocapFormatError(path, None, "empty file")
    line_first = np.flatnonzero(sc.first)  # token index opening each non-blank line
    line_len = np.diff(np.append(line_first, n_tok))
    opener = sc.buf[sc.start[line_first]]
    is_digit = (opener >= 48) & (opener <= 57)
    is_comment = opener == 35
    body = np.flatnonzero(is_digit)
    if len(body) == 0:
        raise MocapFormatError(path, int(sc.line_of(n_tok - 1)), "no frames (no line with a frame number up to the end of the file)")
    head_end = body[0]

    angle_unit = skeleton.angle_unit
    for line in range(head_end):
        if is_comment[line]:
            continue
        tok = line_first[line]
        word = sc.token(tok).decode("latin-1")
        if opener[line] != 58:  # ':'
            raise MocapFormatError(path, int(sc.line_of(tok)), f"unexpected text before the first frame: {word!r}")
        keyword = word.upper()
        if keyword == ":DEGREES":
            angle_unit = "deg"
        elif keyword == ":RADIANS":
            angle_unit = "rad"
        elif keyword not in (":FULLY-SPECIFIED", ":FULLY_SPECIFIED"):
            raise MocapFormatError(path, int(sc.line_of(tok)), f"unknown header keyword {word!r}")

    lines = np.arange(head_end, len(line_first))
    lines = lines[~is_comment[lines]]
    frame_line = is_digit[lines]
    n_frames = int(frame_line.sum())
    frame_tok = line_first[lines[frame_line]]
    bone_lines = lines[~frame_line]
    bone_tok = line_first[bone_lines]

    def fail(line_pos: int, problem: str) -> None:
        """Raise for the body line ``lines[line_pos]``, naming its frame."""
        tok = line_first[lines[line_pos]]
        frame = _frame_of_line(frame_line)[line_pos]
        frame_no = sc.token(frame_tok[frame]).decode("latin-1") if frame >= 0 else "?"
        raise MocapFormatError(path, int(sc.line_of(tok)), f"frame {frame_no}: {problem}")

    def fail_at_token(tok: int, problem: str) -> None:
        """Raise for the body line holding token ``tok``."""
        fail(int(np.searchsorted(lines, np.searchsorted(line_first, tok, side="right") - 1)), problem)

    # Frame lines: one token, the frame number, counting up by one.
    bad = np.flatnonzero(line_len[lines[frame_line]] != 1)
    if len(bad):
        fail(int(np.flatnonzero(frame_line)[bad[0]]), "frame number line has more than one token")
    numbers, ok = parse_decimals(sc, frame_tok)
    first_no = numbers[0] if ok[0] else -1.0
    expected = first_no + np.arange(n_frames)
    digits = np.floor(np.log10(np.maximum(expected, 1))).astype(np.int64) + 1
    token_len = sc.end[frame_tok] - sc.start[frame_tok]
    bad = np.flatnonzero(~ok | (numbers != expected) | (token_len != digits))
    if len(bad):
        i = int(bad[0])
        tok = frame_tok[i]
        text = sc.token(tok).decode("latin-1")
        prev = sc.token(frame_tok[i - 1]).decode("latin-1") if i else None
        problem = f"frame number {text!r} does not follow {prev!r}" if prev else f"frame number {text!r} is not an integer"
        raise MocapFormatError(path, int(sc.line_of(tok)), problem)

    # Bone lines: known bone, right number of values.
    names = ["root"] + [b.name for b in skeleton.bones]
    n_values = np.array([len(skeleton.root_order)] + [len(b.dof) for b in skeleton.bones])
    offsets = np.concatenate([[0], np.cumsum(n_values)[:-1]])
    # Files write the bones in the same order every frame: then the names of the first
    # frame, compared byte for byte with all others, give every line's bone at once.
    per_frame = len(bone_lines) // max(n_frames, 1)
    uniform = (
        per_frame > 0
        and per_frame * n_frames == len(bone_lines)
        and bool(frame_line[:: per_frame + 1].all())
        and len(lines) == n_frames * (per_frame + 1)
    )
    if uniform:
        lo, hi, length = _name_keys(sc, bone_tok)
        grid = lambda a: a.reshape(n_frames, per_frame)  # noqa: E731
        uniform = bool((grid(lo) == lo[:per_frame]).all() and (grid(hi) == hi[:per_frame]).all() and (grid(length) == length[:per_frame]).all())
    if uniform:
        ids = np.tile(_lookup_names(sc, bone_tok[:per_frame], names), n_frames)
    else:
        ids = _lookup_names(sc, bone_tok, names)
    bone_pos = np.flatnonzero(~frame_line)
    unknown = np.flatnonzero(ids < 0)
    if len(unknown):
        word = sc.token(bone_tok[unknown[0]]).decode("latin-1")
        kind = "unknown bone" if word[:1].isalpha() else "unexpected token"
        fail(int(bone_pos[unknown[0]]), f"{kind} {word!r} (not in {skeleton.source or 'the skeleton'})")
    found = line_len[bone_lines] - 1
    bad = np.flatnonzero(found != n_values[ids])
    if len(bad):
        b = int(bad[0])
        fail(int(bone_pos[b]), f"bone {names[ids[b]]!r} has {found[b]} values; the skeleton gives it {n_values[ids[b]]}")

    # Every bone with values exactly once a frame.
    frame_idx = _frame_of_line(frame_line)[~frame_line]
    counts = np.bincount(frame_idx * len(names) + ids, minlength=n_frames * len(names)).reshape(n_frames, len(names))
    need = n_values > 0
    wrong = (counts[:, need] != 1).any(axis=1) | (counts[:, ~need] > 1).any(axis=1)
    if wrong.any():
        f = int(np.flatnonzero(wrong)[0])
        frame_no = sc.token(frame_tok[f]).decode("latin-1")
        twice = [names[j] for j in np.flatnonzero(counts[f] > 1)]
        missing = [names[j] for j in np.flatnonzero(need & (counts[f] == 0))]
        problem = f"bone {twice[0]!r} appears twice" if twice else f"missing bone{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        truncated = " (truncated file?)" if f == n_frames - 1 and missing else ""
        line = int(sc.line_of(frame_tok[f]))
        raise MocapFormatError(path, line, f"frame {frame_no}: {problem}{truncated}")

    # Values: every token of a bone line after the name (frame lines hold one token).
    body_tok = line_first[head_end]
    if is_comment[head_end:].any():
        is_value_line = np.zeros(len(line_first), dtype=bool)
        is_value_line[bone_lines] = True
        value_tok = np.flatnonzero(np.repeat(is_value_line, line_len) & ~sc.first)
    else:
        value_tok = np.flatnonzero(~sc.first[body_tok:]) + body_tok
    values, ok = parse_decimals(sc, value_tok)
    if not ok.all():
        tok = int(value_tok[int(np.flatnonzero(~ok)[0])])
        fail_at_token(tok, f"value {sc.token(tok).decode('latin-1')!r} is not a finite decimal number")

    n_dofs = int(n_values.sum())
    if uniform:
        # File order to skeleton order: one column permutation for all frames.
        order = ids[:per_frame]
        columns = np.concatenate([offsets[b] + np.arange(n_values[b]) for b in order])
        out = np.empty((n_frames, n_dofs))
        out[:, columns] = values.reshape(n_frames, n_dofs)
    else:
        # Scatter into (frames, dofs): column = bone offset + position inside the line.
        per_line = n_values[ids]
        line_start = np.repeat(np.cumsum(per_line) - per_line, per_line)
        within = np.arange(len(value_tok)) - line_start
        column = np.repeat(offsets[ids], per_line) + within
        row = np.repeat(frame_idx, per_line)
        out = np.empty((n_frames, n_dofs))
        out[row, column] = values

    # Plausibility bounds a channel: angles in the file's unit, the root translation in length units.
    dof_names = tuple(skeleton.dof_names())
    rotation = np.array([name.rsplit(".", 1)[1] in ROTATION_DOFS for name in dof_names])
    angle_limit = MAX_ABS_ANGLE_DEG if angle_unit == "deg" else float(np.radians(MAX_ABS_ANGLE_DEG))
    limit = np.where(rotation, angle_limit, MAX_ABS_POSITION)
    if not (np.abs(out) <= limit).all():
        value_column = np.tile(columns, n_frames) if uniform else column
        v = int(np.flatnonzero(np.abs(values) > limit[value_column])[0])
        c = int(value_column[v])
        if not rotation[c]:
            bound = f"{MAX_ABS_POSITION:.6g} length units"
        elif angle_unit == "deg":
            bound = f"{MAX_ABS_ANGLE_DEG:.6g} degrees"
        else:
            bound = f"{angle_limit:.6g} radians ({MAX_ABS_ANGLE_DEG:.6g} degrees)"
        tok = int(value_tok[v])
        fail_at_token(tok, f"{dof_names[c]} = {sc.token(tok).decode('latin-1')!r} is beyond the plausible bound of +-{bound}")
    return Motion(
        path=str(path),
        values=out,
        frame_numbers=expected.astype(np.int64),
        dof_names=dof_names,
        angle_unit=angle_unit,
    )
