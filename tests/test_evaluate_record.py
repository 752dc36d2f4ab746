"""The evaluate stage's passes 2 and 3 on records without a model: numbers with known answers
from a record built by hand, and figures redrawn from a written record.npz."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from builders import model_config
from conftest import stage_params
from pipelines.evaluate.figures import FIGURES, draw_figures
from pipelines.evaluate.numbers import evaluation_numbers
from pipelines.evaluate.record import EvaluationRecord, load_record, query_record, save_record
from pipelines.params import EvaluateParams
from vhp_core import build_model

PARAMS = stage_params(EvaluateParams, "evaluate", knn_k=3, mf_quantile=0.9, n_frames=3, graph_nodes=8, graph_k=3,
                      batch_size=32, ll_samples=8, ll_inner_samples=4, ll_inner_samples_check=8, ll_points=10,
                      max_train_points=40, grid_size=6, mf_points=20, interp_pairs=3, line_steps=10,
                      segment_steps=2, n_reconstructions=4, n_samples=5, max_plot_points=30)


def _x(*rows: tuple[float, ...]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def hand_record() -> EvaluationRecord:
    """Two classes of four codes; data of 4 dimensions drawn as 2x2 images; two endpoint pairs,
    the first joined by a graph path, the second not."""
    mu = _x((0, 0), (1, 0), (0, 1), (1, 1), (10, 10), (11, 10), (10, 11), (11, 11))
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    return EvaluationRecord(
        params=PARAMS,
        info={"header": {"dataset": "toy", "model": "iwae"}, "title": "iwae on toy", "attrs": {}, "x_shape": [1, 2, 2],
              "latent_dim": 2, "colour": "label", "colour_kind": "categorical", "class_names": ["a", "b"],
              "loss_terms": {"elbo": -5.0, "reconstruction": 1.0, "nll": 4.0, "regulariser": 1.0},
              "ll_inner_samples": None, "ll_sigma": 0.5, "final_lambda": 1.0, "final_c_hat": 0.25},
        log_px=np.array([-1.0, -3.0]), ll_elbo=np.array([-2.0, -4.0]), log_px_check=None,
        mu_test=mu, var_test=np.full_like(mu, 0.01), test_labels={"label": labels},
        mu_train=mu + 0.1, train_labels={"label": labels},
        # nearest other reference row: 1 apart, so off-data distances are in data units
        reference=_x((0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0), (3, 0, 0, 0)).astype(np.float32),
        smoothness_subset=None, nn_subset=None,
        mf_data=np.array([1.0, 2.0, 3.0, 95.0]),  # median 2.5; one point above the span's 90 % quantile (90.1)
        mf_span=np.arange(1.0, 101.0),
        plot_index=np.arange(8), extent=np.array([-1.0, 12.0, -1.0, 12.0]), mf_grid=np.full((4, 4), 2.5),
        pairs=np.array([[0, 4], [1, 5]]), nodes=mu.copy(),
        line_z=[np.linspace(mu[0], mu[4], 4), np.linspace(mu[1], mu[5], 2)],
        # steps 1, 1, 2: length 4, largest step over mean step 1.5; the last frame 1 off the data
        line_x=[_x((0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0), (4, 0, 0, 0)), _x((0, 0, 0, 0), (0, 0, 0, 3))],
        line_mf=[np.array([2.5, 25.0, 2.5, 2.5]), np.array([2.5, 2.5])],
        path_z=[_x((0, 0), (5, 5), (10, 10)), np.zeros((0, 2))],
        graph_z=[_x((0, 0), (5, 5), (10, 10)), np.zeros((0, 2))],
        graph_x=[_x((0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0)), np.zeros((0, 4))],
        graph_mf=[np.array([2.5, 5.0, 2.5]), np.zeros(0)],
        recon_x=np.linspace(0.0, 1.0, 8).reshape(2, 4), recon=np.linspace(1.0, 0.0, 8).reshape(2, 4),
        prior_x=np.linspace(0.0, 1.0, 12).reshape(3, 4),
    )


def test_the_numbers_of_a_hand_made_record() -> None:
    metrics, pairs = evaluation_numbers(hand_record())
    assert metrics["dataset"] == "toy" and list(metrics)[:2] == ["dataset", "model"]
    assert metrics["test_log_likelihood"] == -2.0 and metrics["test_log_likelihood_stderr"] == pytest.approx(1.0)
    assert metrics["ll_elbo"] == -3.0 and metrics["ll_n_points"] == 2 and metrics["n_test"] == 8
    assert (metrics["elbo"], metrics["final_c_hat"], metrics["ll_sigma"]) == (-5.0, 0.25, 0.5)
    assert "test_log_likelihood_check" not in metrics
    assert metrics["active_units"] == 2 and metrics["knn_accuracy"] == 1.0 and metrics["knn_label"] == "label"
    assert "trajectory_smoothness" not in metrics
    assert metrics["mf_fraction"] == 0.25 and metrics["mf_median_data_raw_scale_dependent"] == 2.5
    assert metrics["mf_span_over_data"] == pytest.approx(50.5 / 2.5)
    # Pair 0: graph length 2 against the line's 4, relative MF 2 against 10; pair 1 has no path.
    assert pairs[0]["graph_nodes"] == 3 and pairs[0]["length_ratio"] == 0.5
    assert pairs[0]["line_evenness"] == pytest.approx(1.5) and pairs[0]["line_off_data"] == pytest.approx(0.25)
    assert pairs[0]["line_max_rel_mf"] == 10.0 and pairs[0]["graph_max_rel_mf"] == 2.0
    assert pairs[1]["graph_nodes"] == 0 and pairs[1]["graph_length"] is None and pairs[1]["length_ratio"] is None
    assert pairs[1]["line_off_data"] == pytest.approx(1.5)
    assert (metrics["interp_pairs"], metrics["interp_pairs_requested"]) == (1, 2)
    assert metrics["interp_length_ratio"] == 0.5 and metrics["interp_graph_avoids_ridges"] == 1.0
    assert metrics["interp_max_rel_mf_line"] == pytest.approx(5.5)  # median of 10 and 1
    assert metrics["interp_evenness_line"] == pytest.approx(1.25) and metrics["interp_off_data_graph"] == 0.0


def test_a_hierarchical_record_reports_the_second_k_eval() -> None:
    record = dataclasses.replace(hand_record(), log_px_check=np.array([-0.9, -3.1]))
    metrics, _ = evaluation_numbers(record)
    assert metrics["test_log_likelihood_check"] == pytest.approx(-2.0)
    assert metrics["ll_check_diff"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["ll_check_diff_stderr"] == pytest.approx(0.1) and metrics["ll_check_agrees"] is True


def _assert_same_record(a: EvaluationRecord, b: EvaluationRecord) -> None:
    for field in dataclasses.fields(EvaluationRecord):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, dict) and field.name not in ("info",):
            assert x.keys() == y.keys(), field.name
            assert all(np.array_equal(x[k], y[k]) for k in x), field.name
        elif isinstance(x, list):
            assert len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y)), field.name
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), field.name
        else:
            assert x == y, field.name


def test_figures_are_redrawn_from_a_written_record(tmp_path: Path) -> None:
    record = hand_record()
    save_record(tmp_path / "record.npz", record)
    loaded = load_record(tmp_path / "record.npz")
    _assert_same_record(record, loaded)
    assert evaluation_numbers(loaded) == evaluation_numbers(record)
    draw_figures(record, tmp_path / "first")
    draw_figures(loaded, tmp_path / "again")
    for name in FIGURES:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name


def test_a_model_s_record_survives_the_file(tmp_path: Path) -> None:
    """Pass 1 on a tiny hierarchical model: every array, optional and per-pair one, comes back from
    record.npz, and the numbers and figures come from the file alone."""
    rng = np.random.default_rng(0)

    def split(n: int) -> SimpleNamespace:
        return SimpleNamespace(x=rng.random((n, 1, 3, 3)).astype(np.float32), labels={
            "label": np.arange(n) % 3, "trial": np.arange(n) // 6, "frame": np.arange(n) % 6})

    data = SimpleNamespace(train=split(48), test=split(24), likelihood="gaussian", attrs={}, x_shape=(1, 3, 3))
    torch.manual_seed(0)
    model = build_model(model_config(model="vhp", x_shape=(1, 3, 3), hidden=(8,), prior_hidden=(8,), k_inner=2,
                                     std_calibration="none")).eval()
    record = query_record(model, data, PARAMS, np.random.default_rng(1), torch.Generator().manual_seed(1),
                          {"header": {}, "title": "t", "final_lambda": None, "final_c_hat": None})
    del model
    assert record.log_px_check is not None and set(record.test_labels) == {"label", "trial", "frame"}
    save_record(tmp_path / "record.npz", record)
    loaded = load_record(tmp_path / "record.npz")
    _assert_same_record(record, loaded)
    metrics, _ = evaluation_numbers(loaded)
    assert metrics == evaluation_numbers(record)[0]
    assert math.isfinite(metrics["trajectory_smoothness"]) and metrics["ll_inner_samples_check"] == 8
    draw_figures(loaded, tmp_path)
    assert all((tmp_path / name).stat().st_size > 0 for name in FIGURES)
