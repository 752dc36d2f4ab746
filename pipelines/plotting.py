"""Figures of the evaluation and the report, written as PNG files.

Matplotlib with the Agg canvas and no pyplot state, so figures can be drawn
from any thread or worker without a display. Every PNG is written to a
temporary file beside its target and renamed into place, so a reader (DVC, the
report, a browser) never sees half a file.

The figures follow the paper's (Klushyn et al. 2019, figures 4-6): encoded data
over a grey-scale heat map of the magnification factor on a log scale, graph
interpolations drawn over the same map beside the straight line, and decoded
frames as stick figures (motion capture) or image strips (faces).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from preprocessing.atomic import atomic_write  # noqa: E402

DPI = 110
PATH_COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:green", "tab:brown")


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write fig to path as PNG atomically (temporary file in the same folder, then rename)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight"))


def _mf_background(ax, mf: np.ndarray, extent: Sequence[float], colourbar: bool = True,
                   limits: tuple[float, float] | None = None,
                   label: str = "magnification factor (log scale)") -> None:
    """MF heat map (indexed [y, x]) on a log colour scale: darker = larger magnification.

    limits: a fixed colour range (so that maps of several models share one scale);
    default: the map's own 0.5-99.5 percentiles.
    """
    mf = np.asarray(mf, dtype=np.float64)
    positive = mf[np.isfinite(mf) & (mf > 0)]
    if len(positive) == 0:
        ax.set_facecolor("white")
        return
    low, high = limits if limits is not None else np.percentile(positive, [0.5, 99.5])
    high = max(high, low * 1.0001)
    image = ax.imshow(
        np.clip(mf, low, high),
        origin="lower",
        extent=tuple(extent),
        cmap="Greys",
        norm=LogNorm(vmin=low, vmax=high),
        aspect="auto",
        interpolation="nearest",
    )
    if colourbar:
        # Below the map, so that a label colour bar or legend can take the right-hand side.
        ax.figure.colorbar(image, ax=ax, orientation="horizontal", fraction=0.05, pad=0.11, label=label,
                           extend="both" if limits is not None else "neither")


def _scatter_labels(
    ax, z: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str] | None, label_name: str
) -> None:
    size = 4 if len(z) > 2000 else 8
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=size, c="tab:blue", alpha=0.7, linewidths=0)
        return
    labels = np.asarray(labels)
    if class_names is not None:
        codes = np.unique(labels)
        cmap = matplotlib.colormaps["tab10" if len(codes) <= 10 else "tab20"]
        for i, code in enumerate(codes):
            members = labels == code
            name = class_names[int(code)] if 0 <= int(code) < len(class_names) else str(code)
            ax.scatter(
                z[members, 0], z[members, 1], s=size, color=cmap(i % cmap.N), alpha=0.8, linewidths=0, label=name
            )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=2.5, title=label_name,
                  frameon=False)
    else:
        points = ax.scatter(z[:, 0], z[:, 1], s=size, c=labels.astype(np.float64), cmap="viridis", alpha=0.8,
                            linewidths=0)
        ax.figure.colorbar(points, ax=ax, fraction=0.046, pad=0.02, label=label_name)


def latent_map_figure(
    path: Path,
    z: np.ndarray,
    mf: np.ndarray,
    extent: Sequence[float],
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    label_name: str = "",
    title: str = "",
    axis_names: tuple[str, str] = ("z1", "z2"),
    mf_limits: tuple[float, float] | None = None,
    mf_label: str = "magnification factor (log scale)",
) -> Path:
    """Encoded points coloured by label over the MF heat map. z: (N, 2); mf: (R, R) indexed [y, x]."""
    fig = new_figure(7.5, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    _mf_background(ax, mf, extent, limits=mf_limits, label=mf_label)
    _scatter_labels(ax, np.asarray(z), labels, class_names, label_name)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def interpolation_figure(
    path: Path,
    mf: np.ndarray,
    extent: Sequence[float],
    z_data: np.ndarray,
    graph_paths: Sequence[np.ndarray],
    lines: Sequence[np.ndarray],
    nodes: np.ndarray | None = None,
    title: str = "",
    axis_names: tuple[str, str] = ("z1", "z2"),
    mf_limits: tuple[float, float] | None = None,
    mf_label: str = "magnification factor (log scale)",
) -> Path:
    """Graph paths (solid) and straight lines (dashed) between the same end points, over the MF map.

    All arrays are 2-D latent coordinates (already projected for larger latent spaces).
    """
    fig = new_figure(6.5, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    _mf_background(ax, mf, extent, limits=mf_limits, label=mf_label)
    z_data = np.asarray(z_data)
    ax.scatter(z_data[:, 0], z_data[:, 1], s=3, c="tab:cyan", alpha=0.35, linewidths=0, label="test data")
    if nodes is not None and len(nodes):
        ax.scatter(nodes[:, 0], nodes[:, 1], s=1.5, c="tab:olive", alpha=0.35, linewidths=0, label="graph nodes")
    for i, (graph_path, line) in enumerate(zip(graph_paths, lines)):
        colour = PATH_COLOURS[i % len(PATH_COLOURS)]
        ax.plot(line[:, 0], line[:, 1], ls="--", lw=1.3, color=colour, label="straight line" if i == 0 else None)
        if graph_path is not None and len(graph_path):
            ax.plot(graph_path[:, 0], graph_path[:, 1], ls="-", lw=2.0, color=colour, marker="o", ms=2.5,
                    label="graph path" if i == 0 else None)
        ax.plot(line[[0, -1], 0], line[[0, -1], 1], ls="none", marker="*", ms=11, color=colour, mec="black", mew=0.6)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.legend(loc="lower left", fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def _draw_stick_figure(ax, joints: np.ndarray, edges: Sequence[tuple[int, int]], limits: np.ndarray) -> None:
    # Motion capture coordinates are y-up; matplotlib's 3-D axes are z-up.
    x, y, z = joints[:, 0], joints[:, 2], joints[:, 1]
    for parent, child in edges:
        ax.plot([x[parent], x[child]], [y[parent], y[child]], [z[parent], z[child]], color="tab:blue", lw=1.5)
    ax.scatter(x, y, z, s=2, c="black", depthshade=False)
    centre = (joints.min(axis=0) + joints.max(axis=0)) / 2
    half = limits / 2
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[2] - half, centre[2] + half)
    ax.set_zlim(centre[1] - half, centre[1] + half)
    ax.view_init(elev=10, azim=-60)
    # The 3-D axes' default box leaves wide margins; zoom so the figure fills its cell.
    ax.set_box_aspect((1, 1, 1), zoom=1.35)
    ax.set_axis_off()


def stick_figure_rows(
    path: Path,
    rows: Sequence[tuple[str, np.ndarray]],
    edges: Sequence[tuple[int, int]],
    title: str = "",
) -> Path:
    """Rows of stick figures: each row (name, joint positions (n_frames, J, 3)); edges index joints."""
    n_cols = max(len(positions) for _, positions in rows)
    fig = new_figure(1.4 * n_cols + 0.4, 1.6 * len(rows) + 0.4)
    span = max(float(np.ptp(positions.reshape(-1, 3), axis=0).max()) for _, positions in rows)
    # One scale for every frame so that sizes compare across frames and rows.
    limits = np.asarray(span if span > 0 else 1.0)
    for r, (name, positions) in enumerate(rows):
        for c, joints in enumerate(positions):
            ax = fig.add_subplot(len(rows), n_cols, r * n_cols + c + 1, projection="3d")
            _draw_stick_figure(ax, joints, edges, limits)
            if c == 0 and name:
                ax.text2D(-0.02, 0.5, name, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.04, right=1.0, bottom=0.0, top=0.9, wspace=0.0, hspace=0.0)
    return save_figure(fig, path)


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4:  # (n, C, H, W)
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    return np.clip(images, 0.0, 1.0)


def image_rows(path: Path, rows: Sequence[tuple[str, np.ndarray]], title: str = "") -> Path:
    """Rows of images: each row (name, images (n, 1, H, W) or (n, H, W)) with values in [0, 1]."""
    rows = [(name, _as_images(images)) for name, images in rows]
    n_cols = max(len(images) for _, images in rows)
    fig = new_figure(1.0 * n_cols + 1.2, 1.05 * len(rows) + 0.4)
    for r, (name, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = fig.add_subplot(len(rows), n_cols, r * n_cols + c + 1)
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.04, hspace=0.08)
    return save_figure(fig, path)


def image_grid(path: Path, images: np.ndarray, n_cols: int = 8, title: str = "") -> Path:
    """Images (n, 1, H, W) or (n, H, W) in [0, 1] on a grid of n_cols columns."""
    images = _as_images(images)
    n_rows = int(np.ceil(len(images) / n_cols))
    return image_rows(
        path, [("", images[r * n_cols:(r + 1) * n_cols]) for r in range(n_rows)], title=title
    )


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


# The panels of a training-curves figure: (curves.tsv column, axis label, log scale).
CURVE_PANELS = (
    ("lambda", "lambda", True),
    ("c_hat", "C_hat (moving average of C)", True),
    ("reconstruction", "reconstruction error C", True),
    ("regulariser", "KL or E[log q - F]", False),
    ("nll", "-log p(x|z)", False),
    ("elbo", "ELBO (batch)", False),
)


def training_curves_figure(
    path: Path,
    curves: Mapping[str, Mapping[str, np.ndarray]],
    panels: Sequence[tuple[str, str, bool]] = CURVE_PANELS,
    smoothing: int = 1,
    title: str = "",
) -> Path:
    """Training curves of several models against step, one panel a quantity.

    curves: model name -> column name -> values (must include 'step'); panels:
    (column, axis label, log y-scale). A column a model lacks is skipped.
    """
    n_cols = 3
    n_rows = int(np.ceil(len(panels) / n_cols))
    fig = new_figure(4.2 * n_cols, 3.0 * n_rows)
    for p, (column, label, log_scale) in enumerate(panels):
        ax = fig.add_subplot(n_rows, n_cols, p + 1)
        all_positive, plotted = True, False
        for i, (model, table) in enumerate(curves.items()):
            if column not in table or "step" not in table:
                continue
            values = np.asarray(table[column], dtype=np.float64)
            steps = np.asarray(table["step"], dtype=np.float64)
            finite = np.isfinite(values)
            if not finite.any():
                continue
            y = _smooth(values[finite], smoothing)
            ax.plot(steps[finite], y, lw=1.2, color=PATH_COLOURS[i % len(PATH_COLOURS)], label=model)
            all_positive &= bool((y > 0).all())
            plotted = True
        if log_scale and plotted and all_positive:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if p == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
