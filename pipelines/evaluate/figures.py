"""The evaluate stage's figures: latent map over MF(z), interpolations, decoded frames and samples.

Latent spaces of more than two dimensions are drawn in the plane of their first
two principal components (through the mean of the encoded test data); the MF
heat map is then that of the decoder restricted to this plane. Figures follow
Klushyn et al. 2019 (figures 4-6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import plotting as figures

from pipelines.evaluate import latent
from pipelines.evaluate.stage import COLOUR_LABELS, _label, _label_info, _subset, decode_means, mf_chunk_size
from pipelines.params import EvaluateParams
from vhp_core.geometry import magnification_factor_grid


def principal_plane(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (L,), basis (L, 2)) of the first two principal components of z.

    Used to draw latent spaces of more than two dimensions: points project to
    (z - mean) @ basis, and a plane point u maps back to mean + basis @ u.
    """
    z = np.asarray(z, dtype=np.float64)
    mean = z.mean(axis=0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:  # L == 1: pad with a zero direction
        basis = np.hstack([basis, np.zeros((len(mean), 2 - basis.shape[1]))])
    return mean, basis


# Colour range of every MF map, in units of the model's median MF at the encoded test data:
# a tenth of the typical MF (white) to a hundred times it (black).
MF_MAP_RANGE = (0.1, 100.0)
MF_MAP_LABEL = "MF / median MF at the encoded test data (log scale, shared by every model)"


@dataclass(frozen=True)
class LatentPlane:
    """Maps between the latent space and the 2-D plane the figures show (identity for 2-D latents)."""

    mean: np.ndarray  # (L,)
    basis: np.ndarray  # (L, 2), orthonormal columns
    identity: bool

    @classmethod
    def fit(cls, mu: np.ndarray) -> LatentPlane:
        if mu.shape[1] == 2:
            return cls(np.zeros(2), np.eye(2), True)
        mean, basis = principal_plane(mu)
        return cls(mean, basis, False)

    def project(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z) if self.identity else (np.asarray(z) - self.mean) @ self.basis

    def decoder(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Decoder mean as a function of plane coordinates u: (B, 2) -> (B, D)."""
        if self.identity:
            return model.decoder_mean_flat
        mean = torch.as_tensor(self.mean)
        basis = torch.as_tensor(self.basis)

        def on_plane(u: torch.Tensor) -> torch.Tensor:
            return model.decoder_mean_flat(mean.to(u.dtype) + u @ basis.to(u.dtype).T)

        return on_plane

    @property
    def axis_names(self) -> tuple[str, str]:
        return ("z1", "z2") if self.identity else ("PC 1 of E_q[z|x]", "PC 2 of E_q[z|x]")


def _extent(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    low, high = points.min(axis=0), points.max(axis=0)
    pad = np.maximum((high - low) * margin, 1e-3)
    low, high = low - pad, high + pad
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


class _Frames:
    """Draws decoded data as stick figures (motion capture) or images; None when neither applies."""

    def __init__(self, attrs: dict[str, Any], x_shape: tuple[int, ...]) -> None:
        self.attrs = attrs
        self.x_shape = tuple(x_shape)
        self.kind = "mocap" if "skeleton" in attrs else "images" if len(self.x_shape) in (2, 3) else None
        self.edges: list[tuple[int, int]] = []
        if self.kind == "mocap":
            from preprocessing import mocap

            self.edges = [(int(p), int(c)) for p, c in mocap.skeleton_edges(attrs)]
            self._positions = mocap.features_to_positions

    def rows(self, path: Path, rows: list[tuple[str, np.ndarray]], title: str) -> Path | None:
        """rows: (name, flat data (n, D)) -> a PNG of stick-figure or image rows."""
        if self.kind == "mocap":
            return figures.stick_figure_rows(
                path, [(name, np.asarray(self._positions(flat.astype(np.float32), self.attrs))) for name, flat in rows],
                self.edges, title)
        if self.kind == "images":
            return figures.image_rows(path, [(name, flat.reshape(-1, *self.x_shape)) for name, flat in rows], title)
        return None

    def grid(self, path: Path, flat: np.ndarray, title: str, n_cols: int = 8) -> Path | None:
        chunks = [flat[i:i + n_cols] for i in range(0, len(flat), n_cols)]
        return self.rows(path, [("", c) for c in chunks], title)



class Figures:
    """The figures of one evaluation, sharing the latent plane, the MF grid and the colour label."""

    def __init__(self, model: torch.nn.Module, dataset: Any, mu_test: np.ndarray, params: EvaluateParams,
                 rng: np.random.Generator, out_dir: Path, title: str, mf_scale: float = 1.0) -> None:
        self.model, self.dataset, self.mu_test, self.params = model, dataset, mu_test, params
        # MF is drawn relative to the model's median MF at the encoded data, on one fixed colour
        # range (MF_MAP_RANGE), so that the maps of two models side by side compare.
        self.mf_scale = mf_scale if mf_scale > 0 else 1.0
        self.rng, self.out_dir, self.title = rng, Path(out_dir), title
        self.attrs = dict(dataset.attrs)
        self.plane = LatentPlane.fit(mu_test)
        self.plot_index = _subset(len(mu_test), params.max_plot_points, rng)
        self.u_test = self.plane.project(mu_test)
        self.extent = _extent(self.u_test)
        colour = next((lab for lab in COLOUR_LABELS if _label(dataset.test, lab) is not None), None)
        self.colour = colour
        self.colour_values = _label(dataset.test, colour) if colour else None
        kind, class_names = _label_info(self.attrs, colour) if colour else ("continuous", None)
        if self.colour_values is not None and kind == "categorical" and class_names is None:
            class_names = [str(c) for c in range(int(self.colour_values.max()) + 1)]
        self.categorical = kind == "categorical"
        self.class_names = class_names if self.categorical else None
        self.mf_grid: np.ndarray | None = None

    def latent_map(self) -> None:
        """Encoded test data over the MF heat map (latent_map.png)."""
        p = self.params
        dtype = next(self.model.parameters()).dtype
        mf_grid, _, _ = magnification_factor_grid(
            self.plane.decoder(self.model), (self.extent[0], self.extent[2]), (self.extent[1], self.extent[3]),
            p.grid_size, mf_chunk_size(self.model, p.mf_chunk), dtype)
        self.mf_grid = mf_grid.double().numpy() / self.mf_scale
        figures.latent_map_figure(
            self.out_dir / "latent_map.png", self.u_test[self.plot_index], self.mf_grid, self.extent,
            labels=None if self.colour_values is None else self.colour_values[self.plot_index],
            class_names=self.class_names, label_name=self.colour or "",
            title=f"{self.title}: encoded test data over MF(z) / median MF at the data",
            axis_names=self.plane.axis_names, mf_limits=MF_MAP_RANGE, mf_label=MF_MAP_LABEL)

    def interpolation(self, records: list[dict[str, Any]], nodes: np.ndarray) -> None:
        """Graph paths against straight lines over MF (interpolation.png) and their decoded frames."""
        p = self.params
        shown = [r for r in records if r["graph_z"] is not None][:3] or records[:1]
        figures.interpolation_figure(
            self.out_dir / "interpolation.png", self.mf_grid, self.extent, self.u_test[self.plot_index],
            [None if r["path_z"] is None else self.plane.project(r["path_z"]) for r in shown],
            [self.plane.project(r["line_z"]) for r in shown],
            nodes=self.plane.project(nodes[: p.graph_nodes]),
            title=f"{self.title}: graph path (solid) vs straight line (dashed)", axis_names=self.plane.axis_names,
            mf_limits=MF_MAP_RANGE, mf_label=MF_MAP_LABEL)
        frames = _Frames(self.attrs, tuple(self.dataset.x_shape))
        first = shown[0]
        rows = []
        if first["graph_z"] is not None:
            graph_x = decode_means(self.model, first["graph_z"], p.batch_size)
            rows.append(("graph path", graph_x[latent.arc_length_indices(graph_x, p.n_frames)]))
        line_x = decode_means(self.model, first["line_z"], p.batch_size)
        rows.append(("straight line", line_x[latent.arc_length_indices(line_x, p.n_frames)]))
        frames.rows(self.out_dir / "interpolation_frames.png", rows, f"{self.title}: decoded interpolation")

    def samples(self, x_test: np.ndarray, generator: torch.Generator) -> None:
        """Reconstructions (reconstructions.png) and decoded prior samples (prior_samples.png)."""
        p = self.params
        frames = _Frames(self.attrs, tuple(self.dataset.x_shape))
        recon_index = np.sort(self.rng.choice(len(x_test), min(p.n_reconstructions, len(x_test)), replace=False))
        recon = decode_means(self.model, self.mu_test[recon_index], p.batch_size)
        flat_test = x_test[recon_index].reshape(len(recon_index), -1)
        frames.rows(self.out_dir / "reconstructions.png", [("test data", flat_test), ("reconstruction", recon)],
                    f"{self.title}: reconstructions (decoded E_q[z|x])")
        with torch.no_grad():
            z_prior = self.model.prior.sample(p.n_samples, generator=generator).double().numpy()
        frames.grid(self.out_dir / "prior_samples.png", decode_means(self.model, z_prior, p.batch_size),
                    f"{self.title}: decoded samples of the prior")
