"""3D faces -> ``faces.zarr``: renderings of face meshes under varying pose and light.

After the "3D Faces" data set of Kulkarni et al. ("Deep Convolutional Inverse Graphics
Network", NeurIPS 2015) and its use for 2-D latent spaces in Klushyn et al. ("Learning
Hierarchical Priors in VAEs", NeurIPS 2019): identities of a morphable face model
rendered on a grid of azimuth, elevation and light direction, 64x64 grayscale.
The Basel Face Model of the original is replaced by one of

* ``sfm``: the Surrey Face Model (``meshes.read_sfm``), identities sampled as shape
  coefficients ~ N(0, identity_std^2) in units of the eigenvalue standard deviations,
  optionally with random expression blendshape weights;
* ``meshes``: a folder of OBJ/PLY meshes sharing one topology, one identity a file;
* ``procedural``: a parametric head made by ``meshes.procedural_head`` (a stand-in,
  marked ``stand_in: true`` in the attributes).

``representation: image`` stores (N, 1, 64, 64) images in [0, 1] (rendered by
``render``); ``representation: vertices`` stores the posed vertices (N, 3V),
standardised (mean per coordinate, one global std so the geometry keeps its shape);
light does not change vertices, so the light axis of the grid is then dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from preprocessing.embedded import sha256_file
from preprocessing.errors import MeshFormatError
from preprocessing.meshes import Mesh, procedural_head, read_blendshapes, read_mesh, read_sfm, sample_head_identity
from preprocessing.render import render, rotation, vertex_normals
from preprocessing.store import identity_normalisation, write_dataset

__all__ = ["FacesParams", "prepare", "build_identities", "render_grid"]


@dataclass(frozen=True)
class FacesParams:
    """The ``prepare_faces`` section of params.yaml."""

    source: Literal["procedural", "sfm", "meshes"]
    model_path: str  # sfm: the shape model, e.g. sfm_shape_3448.bin
    blendshapes_path: str  # sfm: expression_blendshapes_3448.bin ('' = neutral faces)
    mesh_folder: str  # meshes: folder of .obj/.ply files with one topology
    representation: Literal["image", "vertices"]
    n_identities: int  # sfm/procedural: identities drawn; meshes: first n files (0 = all)
    identity_std: float  # sfm: std of the shape coefficients (in eigenvalue stds)
    expression_std: float  # sfm: std of the expression weights (0 = neutral)
    azimuth_range: tuple[float, float]  # degrees
    n_azimuth: int
    elevation_range: tuple[float, float]
    n_elevation: int
    light_range: tuple[float, float]  # light direction, degrees right of the camera axis
    n_light: int
    light_elevation: float
    ambient: float
    image_size: int
    split_by: Literal["sample", "identity"]
    test_fraction: float
    val_fraction: float  # share of the training samples (or identities) held out as 'val'; 0: none
    seed: int
    batch: int  # images rendered at once (small batches stay in cache)

    def __post_init__(self) -> None:
        if self.source not in ("procedural", "sfm", "meshes"):
            raise ValueError(f"source must be procedural, sfm or meshes, got {self.source!r}")
        if self.representation not in ("image", "vertices"):
            raise ValueError(f"representation must be image or vertices, got {self.representation!r}")
        if self.split_by not in ("sample", "identity"):
            raise ValueError(f"split_by must be sample or identity, got {self.split_by!r}")
        for name in ("n_azimuth", "n_elevation", "n_light", "image_size", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_identities < 0 or (self.source != "meshes" and self.n_identities < 1):
            raise ValueError(f"n_identities must be >= 1, got {self.n_identities}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.ambient <= 1.0:
            raise ValueError(f"ambient must be in [0, 1], got {self.ambient}")


@dataclass(frozen=True)
class Identities:
    names: list[str]
    vertices: np.ndarray  # (I, V, 3)
    triangles: np.ndarray  # (T, 3)
    factors: list[dict[str, Any]]  # what made each identity (coefficients, parameters, file)
    sources: list[dict[str, str]]
    stand_in: bool
    mesh_id: str


def build_identities(params: FacesParams) -> Identities:
    """The identities' meshes of the chosen source."""
    rng = np.random.default_rng(params.seed)
    if params.source == "procedural":
        factors = [sample_head_identity(rng) for _ in range(params.n_identities)]
        meshes = [procedural_head(f) for f in factors]
        return Identities(
            names=[f"head{i:03d}" for i in range(len(meshes))],
            vertices=np.stack([m.vertices for m in meshes]),
            triangles=meshes[0].triangles,
            factors=factors,
            sources=[],
            stand_in=True,
            mesh_id=f"procedural head, {len(meshes[0].vertices)} vertices, {len(meshes[0].triangles)} triangles",
        )
    if params.source == "sfm":
        if not params.model_path:
            raise MeshFormatError("model_path", None, "source 'sfm' needs model_path (e.g. sfm_shape_3448.bin)")
        model = read_sfm(params.model_path)
        sources = [{"path": params.model_path, "sha256": sha256_file(Path(params.model_path))}]
        alphas = rng.standard_normal((params.n_identities, len(model.eigenvalues))) * params.identity_std
        vertices = np.stack([model.sample(a) for a in alphas])
        factors: list[dict[str, Any]] = [{"shape_coefficients": a.tolist()} for a in alphas]
        if params.blendshapes_path and params.expression_std > 0:
            shapes = read_blendshapes(params.blendshapes_path, n_vertices=len(model.mean))
            sources.append({"path": params.blendshapes_path, "sha256": sha256_file(Path(params.blendshapes_path))})
            weights = np.abs(rng.standard_normal((params.n_identities, len(shapes.names)))) * params.expression_std
            vertices = vertices + np.einsum("ie,evc->ivc", weights, shapes.deformations)
            for f, w in zip(factors, weights):
                f["expression_weights"] = dict(zip(shapes.names, w.tolist()))
        return Identities(
            names=[f"sfm{i:03d}" for i in range(params.n_identities)],
            vertices=vertices,
            triangles=model.triangles,
            factors=factors,
            sources=sources,
            stand_in=False,
            mesh_id=f"Surrey Face Model, {len(model.mean)} vertices, {len(model.triangles)} triangles",
        )
    folder = Path(params.mesh_folder)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".obj", ".ply")) if folder.is_dir() else []
    if not files:
        raise MeshFormatError(folder, None, "no .obj or .ply meshes in the folder")
    if params.n_identities:
        files = files[: params.n_identities]
    meshes: list[Mesh] = []
    for f in files:
        mesh = read_mesh(f)
        if meshes and (mesh.vertices.shape != meshes[0].vertices.shape or not np.array_equal(mesh.triangles, meshes[0].triangles)):
            raise MeshFormatError(f, None, f"topology differs from {files[0].name} ({len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles)")
        meshes.append(mesh)
    return Identities(
        names=[f.stem for f in files],
        vertices=np.stack([m.vertices for m in meshes]),
        triangles=meshes[0].triangles,
        factors=[{"file": f.name} for f in files],
        sources=[{"path": str(f), "sha256": sha256_file(f)} for f in files],
        stand_in=False,
        mesh_id=f"{len(meshes[0].vertices)} vertices, {len(meshes[0].triangles)} triangles",
    )


def _grid(params: FacesParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    az = np.linspace(*params.azimuth_range, params.n_azimuth)
    el = np.linspace(*params.elevation_range, params.n_elevation)
    li = np.linspace(*params.light_range, params.n_light) if params.representation == "image" else np.zeros(1)
    return az, el, li


def render_grid(ids: Identities, params: FacesParams, progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Samples (N, 1, S, S) images or (N, 3V) vertices and their factors, identity-major."""
    az, el, li = _grid(params)
    ident, a, e, l = (g.ravel() for g in np.meshgrid(np.arange(len(ids.names)), az, el, li, indexing="ij"))
    factors = {"identity": ident.astype(np.int64), "azimuth": a, "elevation": e, "light": l}
    mean_shape = ids.vertices.mean(axis=0)
    centre = mean_shape.mean(axis=0)
    radius = float(np.linalg.norm(ids.vertices - centre, axis=-1).max())
    if params.representation == "vertices":
        r = rotation(a, e)
        posed = np.einsum("bij,bvj->bvi", r, ids.vertices[ident] - centre)
        return posed.reshape(len(ident), -1), factors
    normals = vertex_normals(ids.vertices, ids.triangles)
    out = np.empty((len(ident), 1, params.image_size, params.image_size), dtype=np.float32)
    starts = range(0, len(ident), params.batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="faces: render", unit="batch")
    for s in starts:
        sl = slice(s, s + params.batch)
        out[sl, 0] = render(
            ids.vertices[ident[sl]],
            normals[ident[sl]],
            ids.triangles,
            a[sl],
            e[sl],
            l[sl],
            size=params.image_size,
            centre=centre,
            radius=radius,
            light_elevation=params.light_elevation,
            ambient=params.ambient,
        )
    return out, factors


def prepare(params: FacesParams, out: Path | str, progress: bool = True) -> None:
    """Build the identities, render (or pose) the grid, split, and write ``out``."""
    ids = build_identities(params)
    x, factors = render_grid(ids, params, progress=progress)
    rng = np.random.default_rng(params.seed + 1)
    n = len(x)
    if params.split_by == "identity":
        n_ids = len(ids.names)
        if n_ids < 2:
            raise MeshFormatError(params.mesh_folder or params.source, None, "split_by identity needs at least 2 identities")
        k = min(max(1, int(round(params.test_fraction * n_ids))), n_ids - 1)
        test_ids = rng.choice(n_ids, size=k, replace=False)
        test = np.isin(factors["identity"], test_ids)
    else:
        k = min(max(1, int(round(params.test_fraction * n))), n - 1)
        test = np.zeros(n, dtype=bool)
        test[rng.choice(n, size=k, replace=False)] = True
    # 'val': the same unit (samples or identities) held out of the training side
    val = np.zeros(n, dtype=bool)
    if params.val_fraction > 0:
        if params.split_by == "identity":
            train_ids = np.setdiff1d(np.unique(factors["identity"]), test_ids)
            if len(train_ids) < 2:
                raise MeshFormatError(params.mesh_folder or params.source, None, "a val split by identity needs at least 2 training identities")
            k = min(max(1, int(round(params.val_fraction * len(train_ids)))), len(train_ids) - 1)
            val = np.isin(factors["identity"], rng.choice(train_ids, size=k, replace=False))
        else:
            train_idx = np.flatnonzero(~test)
            k = min(max(1, int(round(params.val_fraction * len(train_idx)))), len(train_idx) - 1)
            val[rng.choice(train_idx, size=k, replace=False)] = True
    if params.representation == "vertices":
        flat = x[~test & ~val]
        mean = flat.mean(axis=0)
        std = float(flat.std()) or 1.0
        x = ((x - mean) / std).astype(np.float32)
        normalisation = {"kind": "standardise", "mean": mean.tolist(), "std": [std], "statistics": "train split"}
        feature_names = [f"v{i}.{c}" for i in range(x.shape[1] // 3) for c in "xyz"]
        x_shape = [x.shape[1]]
    else:
        normalisation = identity_normalisation()
        feature_names = ["intensity"]
        x_shape = [1, params.image_size, params.image_size]
    if not np.isfinite(x).all():
        raise MeshFormatError(params.model_path or params.mesh_folder or params.source, None, "rendered data hold NaN or inf (degenerate mesh?)")
    arrays: dict[str, np.ndarray] = {}
    splits = (("train", ~test & ~val), ("test", test)) + ((("val", val),) if val.any() else ())
    for split, mask in splits:
        arrays[f"{split}/x"] = x[mask]
        arrays[f"{split}/identity"] = factors["identity"][mask]
        for key in ("azimuth", "elevation", "light"):
            arrays[f"{split}/{key}"] = factors[key][mask].astype(np.float32)
    az, el, li = _grid(params)
    attrs = {
        "dataset": "faces",
        "likelihood": "gaussian",
        "x_shape": x_shape,
        "feature_names": feature_names,
        "units": {
            "x": "intensity in [0, 1]" if params.representation == "image" else "model units (standardised)",
            "azimuth": "degrees",
            "elevation": "degrees",
            "light": "degrees",
        },
        "normalisation": normalisation,
        "labels": {
            "identity": {"kind": "categorical", "classes": ids.names},
            "azimuth": {"kind": "continuous", "unit": "degrees", "values": az.tolist()},
            "elevation": {"kind": "continuous", "unit": "degrees", "values": el.tolist()},
            "light": {"kind": "continuous", "unit": "degrees", "values": li.tolist()},
        },
        "sources": ids.sources,
        "params": asdict(params),
        "stand_in": ids.stand_in,
        "source": params.source,
        "mesh": ids.mesh_id,
        "representation": params.representation,
        "identities": ids.factors,
        "renderer": "orthographic, z-buffered, Lambertian (Gouraud) shading; preprocessing.render",
        "split": {"unit": params.split_by, "n_test": int(test.sum()), "n_val": int(val.sum()),
                  "val_fraction": params.val_fraction},
    }
    write_dataset(out, arrays, attrs)
