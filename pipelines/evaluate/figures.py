"""Pass 3 of the evaluate stage: the figures, drawn from the record alone (no model).

latent_map.png (encoded test data over MF(z)), interpolation.png (graph paths
against straight lines over MF), interpolation_frames.png (the decoded frames of
one of each), reconstructions.png and prior_samples.png. `draw_figures` takes an
`EvaluationRecord` as `record.query_record` returns it or `record.load_record`
reads it from record.npz, so a figure can be redrawn without the model.

Latent spaces of more than two dimensions are drawn in the plane of their first
two principal components (`plane.py`). Figures follow Klushyn et al. 2019
(figures 4-6).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import plotting as figures
from pipelines.evaluate import latent
from pipelines.evaluate.plane import LatentPlane

if TYPE_CHECKING:
    from pipelines.evaluate.record import EvaluationRecord

# Colour range of every MF map, in units of the model's median MF at the encoded test data:
# a tenth of the typical MF (white) to a hundred times it (black).
MF_MAP_RANGE = (0.1, 100.0)
MF_MAP_LABEL = "MF / median MF at the encoded test data (log scale, shared by every model)"
FIGURES = ("latent_map.png", "interpolation.png", "interpolation_frames.png", "reconstructions.png",
           "prior_samples.png")


class _Frames:
    """Draws decoded data as stick figures (motion capture) or images; nothing when neither applies."""

    def __init__(self, attrs: dict[str, Any], x_shape: tuple[int, ...]) -> None:
        self.attrs = attrs
        self.x_shape = tuple(x_shape)
        self.kind = "mocap" if "skeleton" in attrs else "images" if len(self.x_shape) in (2, 3) else None
        self.edges: list[tuple[int, int]] = []
        if self.kind == "mocap":
            from preprocessing import poses

            self.edges = [(int(p), int(c)) for p, c in poses.skeleton_edges(attrs)]
            self._positions = poses.features_to_positions

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


def draw_figures(record: EvaluationRecord, out_dir: Path) -> None:
    """Every figure of one evaluation into out_dir (a data set that is neither motion nor images has
    no frame figures)."""
    out_dir = Path(out_dir)
    info, p = record.info, record.params
    title = info["title"]
    plane = LatentPlane.fit(record.mu_test)
    axes = plane.axis_names
    u_plot = plane.project(record.mu_test)[record.plot_index]
    extent = tuple(float(e) for e in record.extent)
    # MF is drawn relative to the model's median MF at the encoded data, on one fixed colour
    # range (MF_MAP_RANGE), so that the maps of two models side by side compare.
    mf_median = float(np.median(record.mf_data))
    mf_grid = record.mf_grid / (mf_median if mf_median > 0 else 1.0)
    colour = info["colour"]
    figures.latent_map_figure(
        out_dir / "latent_map.png", u_plot, mf_grid, extent,
        labels=None if colour is None else record.test_labels[colour][record.plot_index],
        class_names=info["class_names"], label_name=colour or "",
        title=f"{title}: encoded test data over MF(z) / median MF at the data",
        axis_names=axes, mf_limits=MF_MAP_RANGE, mf_label=MF_MAP_LABEL)

    reached = [i for i in range(len(record.pairs)) if len(record.path_z[i])]
    shown = reached[:3] or [0]
    figures.interpolation_figure(
        out_dir / "interpolation.png", mf_grid, extent, u_plot,
        [plane.project(record.path_z[i]) if len(record.path_z[i]) else None for i in shown],
        [plane.project(record.line_z[i]) for i in shown],
        nodes=plane.project(record.nodes[: p.graph_nodes]),
        title=f"{title}: graph path (solid) vs straight line (dashed)", axis_names=axes,
        mf_limits=MF_MAP_RANGE, mf_label=MF_MAP_LABEL)

    frames = _Frames(info["attrs"], tuple(info["x_shape"]))
    first, rows = shown[0], []
    if len(record.path_z[first]):
        graph_x = record.graph_x[first]
        rows.append(("graph path", graph_x[latent.arc_length_indices(graph_x, p.n_frames)]))
    line_x = record.line_x[first]
    rows.append(("straight line", line_x[latent.arc_length_indices(line_x, p.n_frames)]))
    frames.rows(out_dir / "interpolation_frames.png", rows, f"{title}: decoded interpolation")
    frames.rows(out_dir / "reconstructions.png", [("test data", record.recon_x), ("reconstruction", record.recon)],
                f"{title}: reconstructions (decoded E_q[z|x])")
    frames.grid(out_dir / "prior_samples.png", record.prior_x, f"{title}: decoded samples of the prior")
