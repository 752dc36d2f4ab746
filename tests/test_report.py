"""The report builds from an eval/models tree into one offline page with every metric in one table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipelines.figures import new_figure, save_figure
from pipelines.report import FIGURES, ReportParams, build_report, read_curves

CURVE_HEADER = ["step", "epoch", "total", "reconstruction", "nll", "regulariser", "lambda", "c_hat", "constraint",
                "elbo"]


def _png(path: Path, colour: str) -> None:
    fig = new_figure(1.0, 1.0)
    fig.add_subplot(1, 1, 1).imshow(np.zeros((4, 4)), cmap="gray")
    fig.patch.set_facecolor(colour)
    save_figure(fig, path)


def _curves(path: Path, n: int, lambda_start: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["\t".join(CURVE_HEADER)]
    for step in range(1, n + 1):
        lam = max(1.0, lambda_start * np.exp(-step / 20))
        rows.append("\t".join(str(v) for v in (step, step // 10, 50 - step * 0.1, 0.2 / step, 40.0, 5.0, lam,
                                                0.3 / step, 0.1 - 0.01 * step, -45.0 + step * 0.1)))
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    eval_root, models_root = tmp_path / "eval", tmp_path / "models"
    for dataset, extra in (("mocap", {"knn_accuracy": 0.875, "trajectory_smoothness": 0.0123}),
                           ("faces", {"r2_azimuth": 0.91, "r2_elevation": 0.5, "r2_light": -0.25})):
        for i, model in enumerate(("iwae", "vhp", "vae")):
            out = eval_root / dataset / model
            out.mkdir(parents=True)
            metrics = {"dataset": dataset, "model": model, "test_log_likelihood": -100.0 - i - 0.123456,
                       "ll_samples": 256, "ll_inner_samples": 32 if model == "vhp" else None,
                       "active_units": 2, "mf_fraction": 0.05 * (i + 1), "interp_length_ratio": float("nan"),
                       **extra}
            (out / "metrics.json").write_text(json.dumps(metrics))
            for name, _ in FIGURES[:3]:
                _png(out / name, "white")
            _curves(models_root / dataset / model / "curves.tsv", 60, 5.0 + i)
    return eval_root, models_root


def test_report_has_every_metric_in_one_table_and_the_figures(tree: tuple[Path, Path], tmp_path: Path) -> None:
    eval_root, models_root = tree
    index = build_report(eval_root, models_root, tmp_path / "report", ReportParams(curve_smoothing=3))
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text()
    assert page.count('<table class="metrics">') == 1
    table = page[page.index('<table class="metrics">'):page.index("</table>")]
    for needle in ("test_log_likelihood", "-100.1", "-102.1", "knn_accuracy", "0.875", "r2_light", "-0.25",
                   "trajectory_smoothness", "mf_fraction", "ll_inner_samples", "mocap", "faces"):
        assert needle in table, needle
    # Columns: vhp first, then iwae, then the rest; NaN and None shown as a dash.
    header = table[:table.index("</thead>")]
    assert header.index(">vhp<") < header.index(">iwae<") < header.index(">vae<")
    assert "—" in table
    # Every image is a relative link to a file inside the report; nothing is fetched from outside.
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2 * 3 * 3 + 2  # 2 data sets x 3 models x 3 figures + 2 training-curve panels
    for src in sources:
        assert not src.startswith(("/", "http", "file:")), src
        assert (index.parent / src).is_file(), src
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert (index.parent / "figures" / "mocap" / "training_curves.png").stat().st_size > 1000
    # vhp and iwae side by side, the third model folded away.
    assert "vhp vs iwae" in page
    assert "<summary>vae</summary>" in page


def test_rebuild_replaces_the_old_report(tree: tuple[Path, Path], tmp_path: Path) -> None:
    eval_root, models_root = tree
    out = tmp_path / "report"
    build_report(eval_root, models_root, out, ReportParams())
    (out / "stale.png").write_bytes(b"old")
    build_report(eval_root, models_root, out, ReportParams(title="second"))
    assert not (out / "stale.png").exists()
    assert "second" in (out / "index.html").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_empty_tree_gives_a_page_that_says_so(tmp_path: Path) -> None:
    index = build_report(tmp_path / "eval", tmp_path / "models", tmp_path / "report", ReportParams())
    assert "No evaluated models" in index.read_text()


def test_read_curves_thins_and_keeps_the_last_row(tmp_path: Path) -> None:
    _curves(tmp_path / "curves.tsv", 100, 3.0)
    table = read_curves(tmp_path / "curves.tsv", max_points=10)
    assert list(table) == CURVE_HEADER
    assert len(table["step"]) == 10 and table["step"][0] == 1 and table["step"][-1] == 100


def test_report_params_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="curve_smoothing"):
        ReportParams(curve_smoothing=0)
    assert ReportParams(compare=["vhp", "vae"]).compare == ("vhp", "vae")
