"""Readers of face meshes: the Surrey Face Model (cereal binary), OBJ and PLY, and a
procedural parametric head.

* Surrey Face Model (Huber et al., "A Multiresolution 3D Morphable Face Model and
  Fitting Framework", VISAPP 2016), as saved by the eos library with cereal's binary
  archive (little-endian): a ``uint32`` class version of ``MorphableModel``, then the
  shape ``PcaModel`` (mean, orthonormal basis, eigenvalues as Eigen matrices, each
  ``int32 rows, int32 cols`` and column-major ``float32`` data; the triangle list as a
  ``uint64`` count of ``int32[3]``), the colour model in the same layout, and the
  texture coordinates (``uint64`` count of ``float64[2]``). Expression blendshapes are
  a ``uint64`` count of (``uint64``-length name, Eigen vector) pairs. Eigenvalues are
  variances: an identity is ``mean + basis @ (alpha * sqrt(eigenvalues))``,
  ``alpha ~ N(0, 1)`` (eos's ``draw_sample``).
* OBJ: ``v x y z`` and ``f a b c ...`` (``a/t/n`` forms, negative indices, polygons
  fanned into triangles).
* PLY: ASCII and binary (little/big endian) vertex ``x y z`` and face index lists.
* A procedural head: a closed ellipsoid mesh with a nose, eye sockets, brows, cheeks,
  lips, chin and ears as smooth bumps whose sizes are the identity parameters. It is a
  stand-in for a face model when none is available.

Plausibility bound: every vertex coordinate read from a file (a mesh, the shape
mean, a blendshape deformation) must be finite with ``|x| <= MAX_ABS_COORDINATE`` =
1e6 in the file's units (a kilometre in millimetres; the Surrey Face Model's mean
stays within 106 mm), and a shape standard deviation ``sqrt(eigenvalue)`` too. A
larger number is a corrupted file, not a face. Errors name the file, the line (OBJ)
or byte offset (binary) or vertex index (PLY), and the value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.errors import MeshFormatError

MAX_ABS_COORDINATE = 1e6  # file units (see the module notes)


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (T, 3) int64


@dataclass(frozen=True)
class MorphableModel:
    mean: np.ndarray  # (V, 3) float64
    basis: np.ndarray  # (3V, K) float64, orthonormal columns
    eigenvalues: np.ndarray  # (K,) variances
    triangles: np.ndarray  # (T, 3) int64
    texture_coordinates: np.ndarray  # (V, 2) or (0, 2)

    def sample(self, alpha: np.ndarray) -> np.ndarray:
        """Vertices (V, 3) of shape coefficients ``alpha`` (K,) in standard deviations."""
        alpha = np.asarray(alpha, dtype=np.float64)
        return self.mean + (self.basis[:, : len(alpha)] @ (alpha * np.sqrt(self.eigenvalues[: len(alpha)]))).reshape(-1, 3)


@dataclass(frozen=True)
class Blendshapes:
    names: tuple[str, ...]
    deformations: np.ndarray  # (n, V, 3)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise MeshFormatError(path, None, f"cannot read file ({err.strerror or err})") from err


class _Cereal:
    """Sequential reader of a cereal binary archive with exact bounds checks."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.at = path, data, 0

    def fail(self, problem: str) -> None:
        raise MeshFormatError(self.path, None, f"byte {self.at}: {problem}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            self.fail(f"file ends inside {what} (needs {n} bytes, {len(self.data) - self.at} left)")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def matrix(self, what: str, max_elements: int = 10**8, bound: float | None = None) -> np.ndarray:
        """An Eigen float matrix; with ``bound``, every value finite and ``|x| <= bound``."""
        rows, cols = self.unpack("ii", f"{what} shape")
        if rows < 0 or cols < 0 or rows * cols > max_elements:
            self.fail(f"{what} has impossible shape {rows} x {cols}")
        start = self.at
        data = np.frombuffer(self.take(4 * rows * cols, what), dtype="<f4")
        if bound is not None:
            bad = np.flatnonzero(~(np.abs(data) <= bound))
            if len(bad):
                k = int(bad[0])
                self.at = start + 4 * k
                kind = "is not finite" if not np.isfinite(data[k]) else f"is beyond the plausible bound of +-{bound:.6g}"
                self.fail(f"{what} value {k} (row {k % rows}, column {k // rows}) = {float(data[k])!r} {kind}")
        return data.reshape(cols, rows).T.astype(np.float64)  # Eigen stores column-major

    def count(self, what: str, item_bytes: int) -> int:
        (n,) = self.unpack("Q", f"{what} count")
        if n * item_bytes > len(self.data) - self.at:
            self.fail(f"{what} count {n} exceeds the rest of the file")
        return n

    def string(self, what: str) -> str:
        n = self.count(what, 1)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8 text")
            raise  # unreachable


def read_sfm(path: Path | str) -> MorphableModel:
    """Read a Surrey Face Model shape model (eos cereal binary ``.bin``)."""
    path = Path(path)
    r = _Cereal(path, _read_bytes(path))
    (version,) = r.unpack("I", "class version")
    if version > 4:
        r.fail(f"MorphableModel class version {version} is not a version this reader knows")
    mean = r.matrix("shape mean", bound=MAX_ABS_COORDINATE)
    basis = r.matrix("shape basis")
    eigenvalues = r.matrix("shape eigenvalues", bound=MAX_ABS_COORDINATE**2)  # variances
    n_tri = r.count("triangles", 12)
    triangles = np.frombuffer(r.take(12 * n_tri, "triangles"), dtype="<i4").reshape(-1, 3).astype(np.int64)
    if mean.shape[1] != 1 or mean.shape[0] % 3 or mean.shape[0] == 0:
        r.fail(f"shape mean must be a column of 3V values, got {mean.shape}")
    n_vert = mean.shape[0] // 3
    if basis.shape[0] != mean.shape[0]:
        r.fail(f"shape basis has {basis.shape[0]} rows for a mean of {mean.shape[0]}")
    if eigenvalues.shape != (basis.shape[1], 1):
        r.fail(f"{eigenvalues.shape[0]} eigenvalues for {basis.shape[1]} basis vectors")
    if n_tri == 0 or triangles.min() < 0 or triangles.max() >= n_vert:
        r.fail(f"triangle indices must lie in 0..{n_vert - 1}")
    values = np.concatenate([mean.ravel(), basis.ravel(), eigenvalues.ravel()])
    if not np.isfinite(values).all():
        r.fail("shape model holds NaN or inf")
    if (eigenvalues < 0).any():
        r.fail("negative eigenvalue (variances must be >= 0)")
    # The colour model and texture coordinates follow; only their framing is checked.
    for what in ("colour mean", "colour basis", "colour eigenvalues"):
        r.matrix(what)
    r.take(12 * r.count("colour triangles", 12), "colour triangles")
    texture = np.zeros((0, 2))
    if r.at < len(r.data):
        n_tex = r.count("texture coordinates", 16)
        texture = np.frombuffer(r.take(16 * n_tex, "texture coordinates"), dtype="<f8").reshape(-1, 2).copy()
    return MorphableModel(
        mean=mean.reshape(-1, 3),
        basis=basis,
        eigenvalues=eigenvalues.ravel(),
        triangles=triangles,
        texture_coordinates=texture,
    )


def read_blendshapes(path: Path | str, n_vertices: int | None = None) -> Blendshapes:
    """Read eos expression blendshapes (cereal binary vector of name + deformation)."""
    path = Path(path)
    r = _Cereal(path, _read_bytes(path))
    n = r.count("blendshapes", 16)
    names, deformations = [], []
    for i in range(n):
        names.append(r.string(f"blendshape {i} name"))
        d = r.matrix(f"blendshape {names[-1]!r} deformation", bound=MAX_ABS_COORDINATE)
        if d.shape[1] != 1 or d.shape[0] % 3:
            r.fail(f"blendshape {names[-1]!r} deformation has shape {d.shape}")
        if n_vertices is not None and d.shape[0] != 3 * n_vertices:
            r.fail(f"blendshape {names[-1]!r} has {d.shape[0] // 3} vertices, the model {n_vertices}")
        deformations.append(d.reshape(-1, 3))
    if r.at != len(r.data):
        r.fail(f"{len(r.data) - r.at} unexpected bytes after the last blendshape")
    if not n:
        r.fail("no blendshapes")
    stacked = np.stack(deformations)
    if not np.isfinite(stacked).all():
        r.fail("blendshapes hold NaN or inf")
    return Blendshapes(names=tuple(names), deformations=stacked)


# --------------------------------------------------------------------------- OBJ / PLY


def _check_mesh(path: Path, vertices: np.ndarray, triangles: np.ndarray, vertex_lines: list[int] | None = None) -> Mesh:
    """``vertex_lines``: the file line of every vertex, where the format has lines (OBJ)."""
    if len(vertices) == 0:
        raise MeshFormatError(path, None, "no vertices")
    if len(triangles) == 0:
        raise MeshFormatError(path, None, "no faces")
    bad = np.flatnonzero(~(np.abs(vertices) <= MAX_ABS_COORDINATE).all(axis=1))
    if len(bad):
        i = int(bad[0])
        value = float(vertices[i][~(np.abs(vertices[i]) <= MAX_ABS_COORDINATE)][0])
        kind = "is not finite" if not np.isfinite(value) else f"is beyond the plausible bound of +-{MAX_ABS_COORDINATE:.6g}"
        line = vertex_lines[i] if vertex_lines is not None else None
        raise MeshFormatError(path, line, f"vertex {i + 1}: coordinate {value!r} {kind}")
    if triangles.min() < 0 or triangles.max() >= len(vertices):
        raise MeshFormatError(path, None, f"face index outside 1..{len(vertices)}")
    return Mesh(vertices=vertices.astype(np.float64), triangles=triangles.astype(np.int64))


def read_obj(path: Path | str) -> Mesh:
    """Vertices and triangles of an OBJ file (other statements are ignored)."""
    path = Path(path)
    text = _read_bytes(path).decode("latin-1")
    vertices: list[tuple[float, float, float]] = []
    vertex_lines: list[int] = []
    triangles: list[tuple[int, int, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "v":
            if len(words) not in (4, 5, 7):  # x y z [w] or x y z r g b
                raise MeshFormatError(path, number, f"vertex needs 3 coordinates, got {len(words) - 1} values")
            try:
                vertices.append((float(words[1]), float(words[2]), float(words[3])))
                vertex_lines.append(number)
            except ValueError:
                raise MeshFormatError(path, number, f"vertex coordinate is not a number: {line.strip()!r}") from None
        elif words[0] == "f":
            if len(words) < 4:
                raise MeshFormatError(path, number, "a face needs at least 3 vertices")
            try:
                idx = [int(w.split("/", 1)[0]) for w in words[1:]]
            except ValueError:
                raise MeshFormatError(path, number, f"face index is not an integer: {line.strip()!r}") from None
            idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]
            if any(i < 0 or i >= len(vertices) for i in idx) or 0 in [int(w.split("/", 1)[0]) for w in words[1:]]:
                raise MeshFormatError(path, number, f"face index outside 1..{len(vertices)}")
            triangles += [(idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1)]
    return _check_mesh(path, np.array(vertices, dtype=np.float64).reshape(-1, 3), np.array(triangles, dtype=np.int64).reshape(-1, 3), vertex_lines)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def read_ply(path: Path | str) -> Mesh:
    """Vertices (x, y, z) and faces (vertex_indices / vertex_index lists) of a PLY file."""
    path = Path(path)
    data = _read_bytes(path)
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise MeshFormatError(path, 1, "not a PLY file (no 'ply' magic or no end_header)")
    header = data[:end].decode("latin-1").splitlines()
    body_start = data.index(b"\n", end) + 1
    fmt = None
    elements: list[dict] = []
    for number, line in enumerate(header, start=1):
        words = line.split()
        if not words or words[0] in ("ply", "comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) >= 2 else None
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise MeshFormatError(path, number, f"bad element line {line!r}")
            elements.append({"name": words[1], "count": int(words[2]), "props": []})
        elif words[0] == "property":
            if not elements:
                raise MeshFormatError(path, number, "property before any element")
            if words[1] == "list":
                if len(words) != 5 or words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
                    raise MeshFormatError(path, number, f"bad list property {line!r}")
                elements[-1]["props"].append((words[4], "list", _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
            else:
                if len(words) != 3 or words[1] not in _PLY_TYPES:
                    raise MeshFormatError(path, number, f"bad property {line!r}")
                elements[-1]["props"].append((words[2], "scalar", _PLY_TYPES[words[1]], None))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshFormatError(path, None, f"unknown PLY format {fmt!r}")
    vertices = triangles = None
    if fmt == "ascii":
        tokens = data[body_start:].split()
        at = 0
        for el in elements:
            rows = []
            for _ in range(el["count"]):
                row = {}
                for name, kind, t1, t2 in el["props"]:
                    if at >= len(tokens):
                        raise MeshFormatError(path, None, f"file ends inside element {el['name']!r}")
                    try:
                        if kind == "list":
                            n = int(tokens[at])
                            row[name] = [float(v) for v in tokens[at + 1 : at + 1 + n]]
                            if len(row[name]) != n:
                                raise MeshFormatError(path, None, f"file ends inside element {el['name']!r}")
                            at += 1 + n
                        else:
                            row[name] = float(tokens[at])
                            at += 1
                    except ValueError:
                        raise MeshFormatError(path, None, f"element {el['name']!r}: {tokens[at]!r} is not a number") from None
                rows.append(row)
            if el["name"] == "vertex":
                try:
                    vertices = np.array([[r["x"], r["y"], r["z"]] for r in rows], dtype=np.float64).reshape(-1, 3)
                except KeyError:
                    raise MeshFormatError(path, None, "vertex element lacks x, y or z") from None
            elif el["name"] == "face":
                key = next((p[0] for p in el["props"] if p[1] == "list"), None)
                triangles = _fan([[int(i) for i in r[key]] for r in rows] if key else [], path)
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        buf, at = data, body_start
        for el in elements:
            if all(p[1] == "scalar" for p in el["props"]):
                dtype = np.dtype([(p[0], order + p[2]) for p in el["props"]])
                size = dtype.itemsize * el["count"]
                if at + size > len(buf):
                    raise MeshFormatError(path, None, f"file ends inside element {el['name']!r}")
                table = np.frombuffer(buf, dtype=dtype, count=el["count"], offset=at)
                at += size
                if el["name"] == "vertex":
                    if not {"x", "y", "z"} <= set(dtype.names):
                        raise MeshFormatError(path, None, "vertex element lacks x, y or z")
                    vertices = np.stack([table[c].astype(np.float64) for c in "xyz"], axis=1)
                continue
            faces = []
            for _ in range(el["count"]):
                for name, kind, t1, t2 in el["props"]:
                    if kind == "scalar":
                        at += np.dtype(t1).itemsize
                        continue
                    size1 = np.dtype(t1).itemsize
                    if at + size1 > len(buf):
                        raise MeshFormatError(path, None, f"file ends inside element {el['name']!r}")
                    n = int(np.frombuffer(buf, dtype=order + t1, count=1, offset=at)[0])
                    at += size1
                    size2 = np.dtype(t2).itemsize * n
                    if at + size2 > len(buf):
                        raise MeshFormatError(path, None, f"file ends inside element {el['name']!r}")
                    faces.append(np.frombuffer(buf, dtype=order + t2, count=n, offset=at).astype(np.int64).tolist())
                    at += size2
            if el["name"] == "face":
                triangles = _fan(faces, path)
    if vertices is None:
        raise MeshFormatError(path, None, "no vertex element")
    return _check_mesh(path, vertices, triangles if triangles is not None else np.zeros((0, 3), dtype=np.int64))


def _fan(faces: list[list[int]], path: Path) -> np.ndarray:
    out = []
    for face in faces:
        if len(face) < 3:
            raise MeshFormatError(path, None, f"a face with {len(face)} vertices")
        out += [(face[0], face[k], face[k + 1]) for k in range(1, len(face) - 1)]
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def read_mesh(path: Path | str) -> Mesh:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return read_obj(path)
    if suffix == ".ply":
        return read_ply(path)
    raise MeshFormatError(path, None, f"unknown mesh format {suffix!r} (expected .obj or .ply)")


# --------------------------------------------------------------------------- procedural head

# Identity parameters of the procedural head and their ranges (uniform sampling).
HEAD_PARAMETERS: dict[str, tuple[float, float]] = {
    "width": (0.74, 0.90),
    "height": (1.00, 1.16),
    "depth": (0.90, 1.05),
    "jaw": (0.78, 1.00),
    "nose": (0.10, 0.22),
    "nose_length": (0.09, 0.15),
    "eyes": (0.03, 0.12),
    "brows": (0.00, 0.06),
    "cheeks": (0.00, 0.08),
    "lips": (0.01, 0.05),
    "chin": (0.02, 0.11),
    "ears": (0.05, 0.14),
}


def _sphere_grid(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (y up, z towards the viewer) and triangles of a closed UV sphere."""
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]  # polar angle from +y; poles separate
    phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], axis=-1).reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 1.0, 0.0]], ring, [[0.0, -1.0, 0.0]]])
    tris = []
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        tris.append((0, idx(0, j + 1), idx(0, j)))
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            tris += [(a, b, d), (a, d, c)]
    bottom = len(dirs) - 1
    for j in range(n_lon):
        tris.append((bottom, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)))
    return dirs, np.array(tris, dtype=np.int64)[:, [0, 2, 1]]  # counter-clockwise seen from outside


def _bump(dirs: np.ndarray, centre: tuple[float, float, float], sx: float, sy: float, sz: float = 1.0) -> np.ndarray:
    c = np.asarray(centre) / np.linalg.norm(centre)
    d = dirs - c
    return np.exp(-0.5 * ((d[:, 0] / sx) ** 2 + (d[:, 1] / sy) ** 2 + (d[:, 2] / sz) ** 2))


def procedural_head(identity: dict[str, float], n_lat: int = 40, n_lon: int = 56) -> Mesh:
    """A closed head mesh (y up, facing +z, radius about 1) from identity parameters."""
    dirs, tris = _sphere_grid(n_lat, n_lon)
    g = identity
    lower = np.clip(-dirs[:, 1], 0, 1)  # narrower jaw below the eyes
    sx = g["width"] * (1 - (1 - g["jaw"]) * lower**1.5)
    r = 1.0 / np.sqrt((dirs[:, 0] / sx) ** 2 + (dirs[:, 1] / g["height"]) ** 2 + (dirs[:, 2] / g["depth"]) ** 2)
    front = np.clip(dirs[:, 2], 0, 1)
    r += g["nose"] * _bump(dirs, (0, -0.08, 1), 0.07, g["nose_length"]) * front
    r += 0.5 * g["nose"] * _bump(dirs, (0, -0.2, 1), 0.09, 0.05) * front
    for side in (-1, 1):
        r -= g["eyes"] * _bump(dirs, (0.33 * side, 0.12, 0.93), 0.09, 0.06) * front
        r += g["brows"] * _bump(dirs, (0.32 * side, 0.27, 0.9), 0.13, 0.04) * front
        r += g["cheeks"] * _bump(dirs, (0.5 * side, -0.12, 0.85), 0.13, 0.1) * front
        r += g["ears"] * _bump(dirs, (1.0 * side, 0.02, -0.05), 0.05, 0.14, 0.1)
    r += g["lips"] * _bump(dirs, (0, -0.36, 0.93), 0.13, 0.035) * front
    r -= 0.5 * g["lips"] * _bump(dirs, (0, -0.4, 0.92), 0.12, 0.012) * front
    r += g["chin"] * _bump(dirs, (0, -0.66, 0.75), 0.14, 0.1) * front
    return Mesh(vertices=dirs * r[:, None], triangles=tris)


def sample_head_identity(rng: np.random.Generator) -> dict[str, float]:
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in HEAD_PARAMETERS.items()}
