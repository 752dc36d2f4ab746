"""The report builds from an eval/models tree into one offline page with every metric in one table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipelines.plotting import new_figure, save_figure
from pipelines.report.params import ReportParams
from pipelines.report.build import FIGURES, build_report, read_curves
from conftest import stage_params

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


def test_report_has_every_metric_in_one_table_and_the_figures(tree: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    eval_root, models_root = tree
    index = build_report(eval_root, models_root, tmp_path / "report", stage_params(ReportParams, "report", curve_smoothing=3))
    assert capsys.readouterr().err == ""  # every report.compare entry is evaluated: no line
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
    build_report(eval_root, models_root, out, stage_params(ReportParams, "report"))
    (out / "stale.png").write_bytes(b"old")
    build_report(eval_root, models_root, out, stage_params(ReportParams, "report", title="second"))
    assert not (out / "stale.png").exists()
    assert "second" in (out / "index.html").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_empty_tree_gives_a_page_that_says_so(tmp_path: Path) -> None:
    index = build_report(tmp_path / "eval", tmp_path / "models", tmp_path / "report", stage_params(ReportParams, "report"))
    assert "No evaluated models" in index.read_text()


def test_read_curves_thins_and_keeps_the_last_row(tmp_path: Path) -> None:
    _curves(tmp_path / "curves.tsv", 100, 3.0)
    table = read_curves(tmp_path / "curves.tsv", max_points=10)
    assert list(table) == CURVE_HEADER
    assert len(table["step"]) == 10 and table["step"][0] == 1 and table["step"][-1] == 100


def test_report_params_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="curve_smoothing"):
        stage_params(ReportParams, "report", curve_smoothing=0)
    assert stage_params(ReportParams, "report", compare=["vhp", "vae"]).compare == ("vhp", "vae")
    with pytest.raises(ValueError, match="twice"):
        stage_params(ReportParams, "report", compare=["vhp", "vhp"])


def test_a_compare_entry_without_an_evaluation_is_named_in_one_line(tree: tuple[Path, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # The report knows no model registry (it imports no model code): a typo shows as "no evaluation".
    eval_root, models_root = tree
    index = build_report(eval_root, models_root, tmp_path / "report",
                         stage_params(ReportParams, "report", compare=["vhp", "vhpp"]))
    line = capsys.readouterr().err.strip()
    assert line.startswith("report.compare: vhpp has no evaluation") and "evaluated: iwae, vae, vhp" in line
    assert "\n" not in line and "vhpp has no evaluation" in index.read_text()


# --------------------------------------------------------------------------------------
# End to end: a tiny model on a tiny zarr group -> evaluate -> report
# --------------------------------------------------------------------------------------

TINY = dict(ll_samples=8, ll_inner_samples=4, ll_inner_samples_check=8, ll_points=20, max_train_points=100,
            grid_size=12, mf_points=50,
            graph_nodes=60, graph_k=5, interp_pairs=2, line_steps=10, segment_steps=2, n_frames=3,
            n_reconstructions=3, n_samples=4, batch_size=64)


def _image_group(path: Path) -> Path:
    from preprocessing.store import identity_normalisation, write_dataset

    rng = np.random.default_rng(0)
    arrays, n = {}, {"train": 120, "test": 40}
    for split, count in n.items():
        azimuth = rng.uniform(-60, 60, count).astype(np.float32)
        yy, xx = np.mgrid[0:8, 0:8]
        centre = 3.5 + azimuth / 30
        images = np.exp(-((xx[None] - centre[:, None, None]) ** 2 + (yy[None] - 3.5) ** 2) / 4)
        arrays[f"{split}/x"] = images[:, None].astype(np.float32)
        arrays[f"{split}/azimuth"] = azimuth
        arrays[f"{split}/elevation"] = rng.uniform(-20, 20, count).astype(np.float32)
        arrays[f"{split}/light"] = rng.uniform(-90, 90, count).astype(np.float32)
        arrays[f"{split}/identity"] = rng.integers(0, 3, count).astype(np.int64)
    write_dataset(path, arrays, {
        "dataset": "faces", "likelihood": "gaussian", "x_shape": [1, 8, 8],
        "feature_names": [f"pixel_{i}" for i in range(64)], "units": {"x": "intensity"},
        "normalisation": identity_normalisation(), "sources": [], "params": {}, "stand_in": True,
        "labels": {"azimuth": {"kind": "continuous"}, "elevation": {"kind": "continuous"},
                   "light": {"kind": "continuous"},
                   "identity": {"kind": "categorical", "classes": ["a", "b", "c"]}},
    })
    return path


def _checkpoint(model_dir: Path, model_name: str, x_shape: tuple[int, ...]) -> None:
    import dataclasses

    import torch

    from pipelines.checkpoint import atomic_torch_save
    from builders import model_config
    from vhp_core import build_model

    config = model_config(model=model_name, x_shape=x_shape, likelihood="gaussian", hidden=(16,), prior_hidden=(8,),
                          gaussian_std=0.3, k_inner=4, std_calibration="none")
    torch.manual_seed(0)
    model = build_model(config)
    atomic_torch_save(model_dir / "model.pt", {
        "config": dataclasses.asdict(config), "state_dict": model.state_dict(),
        "constraint_state": {"lambda_": 2.5, "c_hat": 0.1, "step": 10, "prior_active": True}, "train_params": {},
    })
    _curves(model_dir / "curves.tsv", 30, 4.0)


def _evaluate_tree(tmp_path: Path, data: Path, models: tuple[str, ...], x_shape: tuple[int, ...]) -> Path:
    from pipelines.evaluate.stage import evaluate_model
    from pipelines.params import EvaluateParams

    name = data.stem
    for model in models:
        model_dir = tmp_path / "models" / name / model
        _checkpoint(model_dir, model, x_shape)
        metrics = evaluate_model(model_dir, data, tmp_path / "eval" / name / model, stage_params(EvaluateParams, "evaluate", **TINY),
                                 progress=False)
        written = json.loads((tmp_path / "eval" / name / model / "metrics.json").read_text())
        assert written["test_log_likelihood"] == pytest.approx(metrics["test_log_likelihood"])
        assert written["ll_samples"] == 8 and written["ll_n_points"] == 20
        assert written["ll_inner_samples"] == (4 if model == "vhp" else None)
        assert written["final_lambda"] == 2.5 and written["model"] == model and written["dataset"] == name
        assert np.isfinite(written["elbo"]) and 0 <= written["active_units"] <= 2
        assert 0.0 <= written["mf_fraction"] <= 1.0 and written["interp_pairs_requested"] == 2
        for figure, _ in FIGURES:
            assert (tmp_path / "eval" / name / model / figure).stat().st_size > 1000, figure
    return tmp_path


def test_evaluate_then_report_on_a_tiny_image_group(tmp_path: Path) -> None:
    data = _image_group(tmp_path / "faces.zarr")
    _evaluate_tree(tmp_path, data, ("vhp", "iwae"), (1, 8, 8))
    metrics = json.loads((tmp_path / "eval" / "faces" / "vhp" / "metrics.json").read_text())
    for key in ("r2_azimuth", "r2_elevation", "r2_light"):
        assert key in metrics
    assert "trajectory_smoothness" not in metrics
    pairs = json.loads((tmp_path / "eval" / "faces" / "vhp" / "interpolation.json").read_text())["pairs"]
    assert len(pairs) == 2 and all(p["line_length"] >= 0 for p in pairs)
    index = build_report(tmp_path / "eval", tmp_path / "models", tmp_path / "report", stage_params(ReportParams, "report"))
    page = index.read_text()
    assert "r2_azimuth" in page and "vhp vs iwae" in page
    assert (index.parent / "figures" / "faces" / "vhp" / "latent_map.png").is_file()


def test_evaluate_mocap_draws_stick_figures_and_measures_motion(tmp_path: Path, cmu_reference: Path) -> None:
    from preprocessing.mocap import MocapParams, prepare
    from preprocessing.store import open_dataset

    data = tmp_path / "mocap.zarr"
    prepare(stage_params(MocapParams, "prepare_mocap", segment_frames=0, embedded_dir="data/raw/mocap_embedded", source=str(cmu_reference), subjects=("09", "10"), frame_step=16), data, progress=False)
    _evaluate_tree(tmp_path, data, ("vhp",), open_dataset(data).x_shape)
    metrics = json.loads((tmp_path / "eval" / "mocap" / "vhp" / "metrics.json").read_text())
    assert 0.0 <= metrics["knn_accuracy"] <= 1.0 and metrics["knn_label"] == "motion"
    assert metrics["trajectory_smoothness"] > 0
