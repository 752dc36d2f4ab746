"""Face meshes (SFM, OBJ, PLY, procedural), the rasteriser and the faces stage."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import MeshFormatError, PreprocessingError
from preprocessing.faces import FacesParams, prepare
from preprocessing.meshes import procedural_head, read_blendshapes, read_mesh, read_obj, read_ply, read_sfm, sample_head_identity
from preprocessing.render import rasterise, render, vertex_normals
from preprocessing.store import open_dataset
from conftest import stage_params


def _eigen(matrix: np.ndarray) -> bytes:
    m = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    return struct.pack("<ii", *m.shape) + m.T.tobytes()  # column-major


def _write_sfm(path: Path, mean: np.ndarray, basis: np.ndarray, eig: np.ndarray, tris: np.ndarray) -> None:
    """A model in the eos cereal layout (class version 1, empty colour model)."""
    data = struct.pack("<I", 1) + _eigen(mean.reshape(-1, 1)) + _eigen(basis) + _eigen(eig.reshape(-1, 1))
    data += struct.pack("<Q", len(tris)) + np.asarray(tris, dtype="<i4").tobytes()
    data += struct.pack("<ii", 0, 1) + struct.pack("<ii", 0, 0) + struct.pack("<ii", 0, 1) + struct.pack("<Q", 0)
    data += struct.pack("<Q", len(mean)) + np.zeros((len(mean), 2), dtype="<f8").tobytes()
    path.write_bytes(data)


def _tetra() -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[0, 0, 1.0], [1, 0, -0.5], [-1, 0.8, -0.5], [-1, -0.8, -0.5]])
    t = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    return v, t


def test_sfm_reader_round_trip(tmp_path: Path) -> None:
    v, t = _tetra()
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 2)))[0]
    _write_sfm(tmp_path / "m.bin", v, basis, np.array([4.0, 1.0]), t)
    model = read_sfm(tmp_path / "m.bin")
    np.testing.assert_allclose(model.mean, v, atol=1e-6)
    np.testing.assert_allclose(model.basis, basis, atol=1e-6)
    np.testing.assert_array_equal(model.triangles, t)
    np.testing.assert_allclose(model.sample(np.array([1.0, 0.0])), v + 2.0 * basis[:, 0].reshape(-1, 3), atol=1e-5)
    data = (tmp_path / "m.bin").read_bytes()
    for cut in (3, 20, 150, 250):
        (tmp_path / "cut.bin").write_bytes(data[:cut])
        with pytest.raises(MeshFormatError, match="cut.bin: byte \\d+: file ends inside"):
            read_sfm(tmp_path / "cut.bin")
    bad = bytearray(data)
    bad[4:8] = struct.pack("<i", -5)
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    with pytest.raises(MeshFormatError, match="impossible shape"):
        read_sfm(tmp_path / "bad.bin")


@pytest.mark.shared_data
def test_real_surrey_face_model(shared_data: Path) -> None:
    sfm = shared_data / "sfm"
    if not (sfm / "sfm_shape_3448.bin").is_file():
        pytest.skip("shared data has no sfm/sfm_shape_3448.bin")
    model = read_sfm(sfm / "sfm_shape_3448.bin")
    assert model.mean.shape == (3448, 3) and model.basis.shape == (10344, 63) and model.triangles.shape == (6736, 3)
    np.testing.assert_allclose(model.basis.T @ model.basis, np.eye(63), atol=1e-4)  # orthonormal
    assert (np.diff(model.eigenvalues) <= 0).all() and model.texture_coordinates.shape == (3448, 2)
    shapes = read_blendshapes(sfm / "expression_blendshapes_3448.bin", n_vertices=3448)
    assert shapes.names == ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
    obj = read_obj(sfm / "sfm_reference.obj")
    assert obj.vertices.shape[1] == 3 and len(obj.triangles) > 0


def test_obj_and_ply_readers(tmp_path: Path) -> None:
    (tmp_path / "q.obj").write_text("# quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1 4//1\nf -4 -2 -1\n")
    mesh = read_obj(tmp_path / "q.obj")
    np.testing.assert_array_equal(mesh.triangles, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    v, t = _tetra()
    header = "ply\nformat {fmt} 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\nelement face 4\nproperty list uchar int vertex_indices\nend_header\n"
    ascii_body = "".join(f"{a} {b} {c}\n" for a, b, c in v) + "".join(f"3 {a} {b} {c}\n" for a, b, c in t)
    (tmp_path / "a.ply").write_text(header.format(fmt="ascii") + ascii_body)
    binary = header.format(fmt="binary_little_endian").encode() + v.astype("<f4").tobytes()
    binary += b"".join(struct.pack("<B3i", 3, *row) for row in t)
    (tmp_path / "b.ply").write_bytes(binary)
    for name in ("a.ply", "b.ply"):
        mesh = read_ply(tmp_path / name)
        np.testing.assert_allclose(mesh.vertices, v, atol=1e-6)
        np.testing.assert_array_equal(mesh.triangles, t)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.obj", "v 0 0 0\nv 1 0 x\nf 1 2 1\n", "a.obj:2: vertex coordinate is not a number"),
        ("b.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n", "b.obj:4: face index outside 1..3"),
        ("c.obj", "v 0 0 0\n", "c.obj: no faces"),
        ("d.ply", "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n", "d.ply: file ends inside element 'vertex'"),
        ("e.ply", "\x00\x01garbage", "e.ply:1: not a PLY file"),
        ("f.stl", "solid", "unknown mesh format"),
    ],
)
def test_unreadable_meshes(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(MeshFormatError, match=message) as info:
        read_mesh(tmp_path / name)
    assert isinstance(info.value, PreprocessingError)


# --------------------------------------------------------------------------- renderer


def test_zbuffer_keeps_the_nearest_surface() -> None:
    # Two overlapping squares (two triangles each), counter-clockwise seen from the viewer;
    # the near one (z = 5) has intensity 1, the far one (z = 1) 0.5. Order must not matter.
    def square(z: float) -> np.ndarray:
        return np.array([[8, 24, z], [24, 24, z], [24, 8, z], [8, 8, z]], dtype=np.float64)

    quad = np.array([[0, 1, 2], [0, 2, 3]])  # counter-clockwise in the world (y up, screen y down)
    for near_first in (True, False):
        pts = np.concatenate([square(5.0), square(1.0)] if near_first else [square(1.0), square(5.0)])
        tris = np.concatenate([quad, quad + 4])
        shade = np.where(pts[:, 2] > 3, 1.0, 0.5)
        img = rasterise(pts[None], shade[None], tris, 32)[0]
        assert img[16, 16] == 1.0 and img[10:22, 10:22].min() == 1.0
        assert img[0, 0] == 0.0 and img[30, 30] == 0.0
    # Seen from behind (clockwise), the squares are culled.
    img = rasterise(square(1.0)[None], np.ones((1, 4)), quad[:, ::-1], 32)[0]
    assert img.max() == 0.0


def test_render_shapes_range_and_rotation() -> None:
    head = procedural_head(sample_head_identity(np.random.default_rng(0)))
    normals = vertex_normals(head.vertices, head.triangles)
    assert (np.sum(normals * head.vertices, axis=1) > 0).all()  # outward
    b = 3
    images = render(
        np.repeat(head.vertices[None], b, 0),
        np.repeat(normals[None], b, 0),
        head.triangles,
        azimuth=np.array([0.0, 60.0, 0.0]),
        elevation=np.zeros(b),
        light=np.array([0.0, 0.0, 50.0]),
        centre=np.zeros(3),
        radius=1.3,
    )
    assert images.shape == (3, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images[0, 0, 0] == 0.0
    assert (images[0] > 0).mean() > 0.3  # the head fills a good part of the frame
    assert np.abs(images[1] - images[0]).mean() > 0.01  # a rotated head changes the image
    assert np.abs(images[2] - images[0]).mean() > 0.01  # so does the light
    # Frontal, frontally lit head: left-right symmetric up to the mesh's own symmetry.
    assert np.abs(images[0] - images[0][:, ::-1]).mean() < 0.05


# --------------------------------------------------------------------------- the stage


def test_prepare_procedural_faces(tmp_path: Path) -> None:
    params = stage_params(FacesParams, "prepare_faces", n_identities=3, n_azimuth=4, n_elevation=2, n_light=2, test_fraction=0.25, seed=1)
    prepare(params, tmp_path / "faces.zarr", progress=False)
    ds = open_dataset(tmp_path / "faces.zarr")
    assert ds.attrs["stand_in"] is True and ds.attrs["source"] == "procedural"
    assert ds.val is not None and len(ds.val) == round(0.15 * 36) == ds.attrs["split"]["n_val"]
    assert ds.x_shape == (1, 64, 64) and len(ds.train) + len(ds.val) + len(ds.test) == 48 and len(ds.test) == 12
    x = ds.train.x[:]
    assert x.min() >= 0 and x.max() <= 1
    az = np.concatenate([ds.train.labels["azimuth"][:], ds.test.labels["azimuth"][:]])
    np.testing.assert_allclose(sorted(set(az.tolist())), [-90, -30, 30, 90])
    assert ds.attrs["labels"]["identity"]["classes"] == ["head000", "head001", "head002"]


def test_prepare_split_by_identity_and_vertices(tmp_path: Path) -> None:
    params = stage_params(FacesParams, "prepare_faces", n_identities=5, n_azimuth=3, n_elevation=2, n_light=3, split_by="identity", representation="vertices")
    prepare(params, tmp_path / "v.zarr", progress=False)
    ds = open_dataset(tmp_path / "v.zarr")
    n_vertices = len(procedural_head(sample_head_identity(np.random.default_rng(0))).vertices)
    assert ds.x_shape == (3 * n_vertices,)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 5 * 3 * 2  # light does not move vertices
    ids = {k: set(getattr(ds, k).labels["identity"][:].tolist()) for k in ("train", "val", "test")}
    assert ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & (ids["train"] | ids["test"])


def write_mesh_folder(folder: Path, n: int) -> Path:
    """n scaled copies of a tetrahedron as person<i>.obj (one topology)."""
    v, t = _tetra()
    folder.mkdir()
    for i in range(n):
        lines = [f"v {a} {b} {c}" for a, b, c in v * (1 + 0.1 * i)] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in t]
        (folder / f"person{i}.obj").write_text("\n".join(lines) + "\n")
    return folder


def test_prepare_from_mesh_folder(tmp_path: Path) -> None:
    folder = write_mesh_folder(tmp_path / "meshes", 3)
    params = stage_params(FacesParams, "prepare_faces", source="meshes", mesh_folder=str(folder), n_identities=0, n_azimuth=2, n_elevation=1, n_light=2)
    prepare(params, tmp_path / "m.zarr", progress=False)
    ds = open_dataset(tmp_path / "m.zarr")
    assert ds.attrs["labels"]["identity"]["classes"] == ["person0", "person1", "person2"]
    assert ds.attrs["stand_in"] is False and len(ds.attrs["sources"]) == 3
    (folder / "person3.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(MeshFormatError, match="person3.obj: topology differs"):
        prepare(params, tmp_path / "m2.zarr", progress=False)
    assert not (tmp_path / "m2.zarr").exists()


@pytest.mark.shared_data
def test_prepare_sfm_faces(shared_data: Path, tmp_path: Path) -> None:
    model = shared_data / "sfm" / "sfm_shape_3448.bin"
    if not model.is_file():
        pytest.skip("shared data has no sfm/sfm_shape_3448.bin")
    params = stage_params(FacesParams, "prepare_faces", 
        source="sfm",
        model_path=str(model),
        blendshapes_path=str(shared_data / "sfm" / "expression_blendshapes_3448.bin"),
        expression_std=0.3,
        n_identities=2,
        n_azimuth=3,
        n_elevation=1,
        n_light=2,
    )
    prepare(params, tmp_path / "sfm.zarr", progress=False)
    ds = open_dataset(tmp_path / "sfm.zarr")
    assert ds.attrs["stand_in"] is False and ds.attrs["sources"][0]["sha256"]
    assert "expression_weights" in ds.attrs["identities"][0]
