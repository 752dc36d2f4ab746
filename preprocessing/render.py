"""A vectorised NumPy rasteriser: orthographic, z-buffered, Lambertian (Gouraud) shading.

Renders batches of posed meshes into small grayscale images the way the "3D Faces"
data set of the literature was made from a morphable model (Kulkarni et al., "Deep
Convolutional Inverse Graphics Network", NeurIPS 2015: renderings under varying
azimuth, elevation and light). The method is the classic scan conversion by edge
functions (Pineda, "A parallel algorithm for polygon rasterization", SIGGRAPH 1988):
every triangle proposes the pixel centres of its bounding box, barycentric coordinates
keep those inside, and a z-buffer keeps the nearest candidate of each pixel. All
triangles of a whole batch of images are processed together as flat NumPy arrays.

Conventions: camera coordinates with x to the right, y up, z towards the viewer (the
nearest surface has the largest z); pixel (row 0, column 0) is the top-left corner and
pixel centres are at half-integers. Intensity = ambient + (1 - ambient) * max(0, n.l)
per vertex, interpolated across triangles; the background is 0.
"""

from __future__ import annotations

import numpy as np


def rotation(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    """(B, 3, 3): a turn by ``azimuth`` about the vertical axis (positive: the face
    turns to the viewer's right), then a tilt by ``elevation`` about the horizontal axis
    (positive: the top of the head towards the viewer, as seen from above)."""
    az = np.radians(np.asarray(azimuth_deg, dtype=np.float64))
    el = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    ca, sa, ce, se = np.cos(az), np.sin(az), np.cos(el), np.sin(el)
    one, zero = np.ones_like(az), np.zeros_like(az)
    ry = np.stack([np.stack([ca, zero, sa], -1), np.stack([zero, one, zero], -1), np.stack([-sa, zero, ca], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, ce, -se], -1), np.stack([zero, se, ce], -1)], -2)
    return rx @ ry


def light_direction(light_deg: np.ndarray, light_elevation_deg: float) -> np.ndarray:
    """(B, 3) unit vectors towards the light: ``light`` degrees to the right of the
    camera axis, ``light_elevation`` above it."""
    lt = np.radians(np.asarray(light_deg, dtype=np.float64))
    le = np.radians(light_elevation_deg)
    return np.stack([np.sin(lt) * np.cos(le), np.full_like(lt, np.sin(le)), np.cos(lt) * np.cos(le)], axis=-1)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(..., V, 3) area-weighted unit vertex normals (counter-clockwise = outward)."""
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = (v[..., triangles[:, k], :] for k in range(3))
    face = np.cross(b - a, c - a)  # (..., T, 3), length = 2 * area
    flat = face.reshape(-1, len(triangles), 3)
    out = np.zeros((len(flat), v.shape[-2], 3))
    for k in range(3):
        for axis in range(3):
            out[:, :, axis] += np.stack([np.bincount(triangles[:, k], weights=f[:, axis], minlength=v.shape[-2]) for f in flat])
    out = out.reshape(v.shape)
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


def rasterise(
    points: np.ndarray,
    intensity: np.ndarray,
    triangles: np.ndarray,
    size: int,
    cull_back: bool = True,
) -> np.ndarray:
    """Images (B, size, size) float32 of B meshes sharing ``triangles`` (T, 3).

    ``points`` (B, V, 3) are in pixel units: x = column, y = row (downwards), z = depth
    (larger is nearer); ``intensity`` (B, V) is interpolated across each triangle.
    With ``cull_back``, triangles seen from behind (clockwise on screen for the
    counter-clockwise outward winding) are skipped.
    """
    n_img = points.shape[0]
    # Triangle-major layout (V, B) per coordinate: gathering corners copies whole rows,
    # and float32 halves the memory traffic of the per-triangle set-up.
    px_by_vertex = np.ascontiguousarray(points[..., 0].T, dtype=np.float32)
    py_by_vertex = np.ascontiguousarray(points[..., 1].T, dtype=np.float32)
    x0, x1, x2 = (px_by_vertex[triangles[:, k]] for k in range(3))  # (T, B)
    y0, y1, y2 = (py_by_vertex[triangles[:, k]] for k in range(3))
    # Twice the signed area; with y pointing down, an outward (CCW) face has area < 0.
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    keep = area < -1e-6 if cull_back else np.abs(area) > 1e-6
    # Most triangles of a detailed mesh cover no pixel centre at 64x64: drop them early.
    lo_x = np.minimum(np.minimum(x0, x1), x2)
    hi_x = np.maximum(np.maximum(x0, x1), x2)
    lo_y = np.minimum(np.minimum(y0, y1), y2)
    hi_y = np.maximum(np.maximum(y0, y1), y2)
    keep &= (np.ceil(lo_x - 0.5) <= np.floor(hi_x - 0.5)) & (np.ceil(lo_y - 0.5) <= np.floor(hi_y - 0.5))
    tri_of, img_of = np.nonzero(keep)
    x0, x1, x2 = x0[keep], x1[keep], x2[keep]
    y0, y1, y2 = y0[keep], y1[keep], y2[keep]
    area = area[keep].astype(np.float64)
    lo_x, hi_x, lo_y, hi_y = lo_x[keep], hi_x[keep], lo_y[keep], hi_y[keep]
    # Pixel centres (i + 0.5) inside each bounding box.
    cmin = np.clip(np.ceil(lo_x - 0.5), 0, size).astype(np.int64)
    cmax = np.clip(np.floor(hi_x - 0.5), -1, size - 1).astype(np.int64)
    rmin = np.clip(np.ceil(lo_y - 0.5), 0, size).astype(np.int64)
    rmax = np.clip(np.floor(hi_y - 0.5), -1, size - 1).astype(np.int64)
    width = np.maximum(cmax - cmin + 1, 0)
    count = width * np.maximum(rmax - rmin + 1, 0)
    owner = np.repeat(np.arange(len(count)), count)  # candidate -> kept triangle
    if len(owner) == 0:
        return np.zeros((n_img, size, size), dtype=np.float32)
    local = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    w = width[owner]
    col = cmin[owner] + local % w
    row = rmin[owner] + local // w
    px, py = col + 0.5, row + 0.5
    # Barycentric coordinates by edge functions.
    ax, ay, bx, by, cx, cy = (c[owner].astype(np.float64) for c in (x0, y0, x1, y1, x2, y2))
    inv = 1.0 / area[owner]
    l1 = ((px - ax) * (cy - ay) - (py - ay) * (cx - ax)) * inv
    l2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) * inv
    l0 = 1.0 - l1 - l2
    eps = -1e-9
    inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    owner, l0, l1, l2 = owner[inside], l0[inside], l1[inside], l2[inside]
    pixel = (img_of[owner] * size + row[inside]) * size + col[inside]
    img, tri = img_of[owner], tri_of[owner]
    t0, t1, t2 = triangles[tri, 0], triangles[tri, 1], triangles[tri, 2]
    z = points[..., 2]
    depth = l0 * z[img, t0] + l1 * z[img, t1] + l2 * z[img, t2]
    shade = l0 * intensity[img, t0] + l1 * intensity[img, t1] + l2 * intensity[img, t2]
    # z-buffer: the largest depth of each pixel wins.
    zbuf = np.full(n_img * size * size, -np.inf)
    np.maximum.at(zbuf, pixel, depth)
    win = depth >= zbuf[pixel]
    out = np.zeros(n_img * size * size, dtype=np.float32)
    out[pixel[win]] = shade[win]
    return out.reshape(n_img, size, size)


def render(
    vertices: np.ndarray,
    normals: np.ndarray,
    triangles: np.ndarray,
    azimuth: np.ndarray,
    elevation: np.ndarray,
    light: np.ndarray,
    *,
    size: int = 64,
    centre: np.ndarray,
    radius: float,
    light_elevation: float = 20.0,
    ambient: float = 0.1,
) -> np.ndarray:
    """Grayscale images (B, size, size) in [0, 1] of meshes (B, V, 3) posed by azimuth,
    elevation (degrees) and lit from ``light`` degrees.

    ``centre`` and ``radius`` fix the framing (the same for every image of a data set,
    so that size differences between identities show): a sphere of ``radius`` about
    ``centre`` fills 90 % of the image.
    """
    r = rotation(azimuth, elevation)
    posed = np.einsum("bij,bvj->bvi", r, vertices - centre)
    turned = np.einsum("bij,bvj->bvi", r, normals)
    lam = np.einsum("bvi,bi->bv", turned, light_direction(light, light_elevation))
    intensity = ambient + (1.0 - ambient) * np.maximum(lam, 0.0)
    scale = 0.45 * size / radius
    pix = np.empty_like(posed)
    pix[..., 0] = size / 2 + posed[..., 0] * scale
    pix[..., 1] = size / 2 - posed[..., 1] * scale
    pix[..., 2] = posed[..., 2] * scale
    return np.clip(rasterise(pix, intensity, triangles, size), 0.0, 1.0)
