"""The evaluate stage's latent-space numbers: the paper's claims, measured free of the latent scale.

A latent space with a learned prior has no fixed scale (METHOD section 6): mapping
z -> A z + b, with the decoder and prior mapped along, gives the same model, and MF
changes by 1/|det A|. So every figure here reads the model's own scale
(`LatentScale`): latent distances are measured after whitening the codes by the
covariance of the encoded test data, and MF is divided by its median at the encoded
test data (a relative MF of 1 is the typical MF where the data lie). What a user sees
is measured in data space, which no latent map touches: the evenness of the decoded
steps of an interpolation and the distance of its frames to the training data. Raw
figures that do depend on the scale are kept only under names ending in
`_raw_scale_dependent`. tests/test_latent_invariance.py holds every figure fixed under
such maps. Definitions: README, "Evaluation: what the numbers mean".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.evaluate import latent
from pipelines.evaluate.stage import _finite, _label, _mf, _rows, _subset, decode_means, encode_means
from pipelines.params import EvaluateParams

# Continuous factors read out linearly from the latent code (faces).
REGRESSION_LABELS = ("azimuth", "elevation", "light")
# Categorical label classified by kNN in latent space (mocap), falling back to the colour label.
KNN_LABELS = ("motion", "label")
SCALE_DEPENDENT = "_raw_scale_dependent"


@dataclass(frozen=True)
class LatentScale:
    """The model's own latent scale: the whitening of its codes and its median MF at the data.

    reference: training rows (data space) that decoded frames are compared with, and
    nn_unit their typical nearest-neighbour distance (`latent.typical_nn_distance`).
    """

    whiten: latent.Whitening
    mf_median: float
    reference: np.ndarray
    nn_unit: float

    def relative_mf(self, mf: np.ndarray) -> np.ndarray:
        return np.asarray(mf, dtype=np.float64) / self.mf_median if self.mf_median > 0 else np.full_like(mf, np.nan)


@torch.no_grad()
def encode_variances(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Var_q[z|x] for every row of x: (N, latent)."""
    parts = [model.encode(torch.from_numpy(x[i:i + batch_size]))[1].exp() for i in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()


def latent_numbers(model: torch.nn.Module, dataset: Any, x_test: np.ndarray, mu_test: np.ndarray,
                   params: EvaluateParams, rng: np.random.Generator) -> tuple[dict[str, Any], LatentScale]:
    """Active units, kNN accuracy, trajectory smoothness, R^2 and MF fraction; and the model's scale."""
    whiten = latent.Whitening.fit(mu_test)
    w_test = whiten(mu_test)
    var_test = encode_variances(model, x_test, params.batch_size)
    metrics: dict[str, Any] = {
        "active_units": latent.active_units(mu_test, posterior_var=var_test),
        "active_units" + SCALE_DEPENDENT: latent.active_units(mu_test),
    }
    train_index = _subset(int(dataset.train.x.shape[0]), params.max_train_points, rng)
    x_train = _rows(dataset.train.x, train_index)
    reference = x_train.reshape(len(x_train), -1)  # grey levels for Bernoulli data: what decoded means resemble
    if dataset.likelihood == "bernoulli":  # encode train data as the binary test data are
        x_train = (rng.random(x_train.shape) < x_train).astype(np.float32)
    w_train = whiten(encode_means(model, x_train, params.batch_size))
    knn_label = next((lab for lab in KNN_LABELS if _label(dataset.test, lab) is not None), None)
    if knn_label is not None:
        train_y = _label(dataset.train, knn_label)
        if train_y is not None:
            metrics["knn_accuracy"] = latent.knn_accuracy(
                w_train, train_y[train_index], w_test, _label(dataset.test, knn_label), params.knn_k)
            metrics["knn_k"] = int(params.knn_k)
            metrics["knn_label"] = knn_label
    trial, frame = _label(dataset.test, "trial"), _label(dataset.test, "frame")
    if trial is not None and frame is not None:
        try:
            metrics["trajectory_smoothness"] = latent.trajectory_smoothness(w_test, trial, frame, rng=rng)
        except ValueError:
            metrics["trajectory_smoothness"] = None
    for lab in REGRESSION_LABELS:
        test_y, train_y = _label(dataset.test, lab), _label(dataset.train, lab)
        if test_y is not None and train_y is not None:
            metrics[f"r2_{lab}"] = _finite(float(latent.linear_r2(w_train, train_y[train_index], w_test, test_y)))
    mf_index = _subset(len(mu_test), params.mf_points, rng)
    mf_data = _mf(model, mu_test[mf_index], params.mf_chunk)
    mf_span = _mf(model, latent.segment_samples(mu_test, params.mf_points, rng), params.mf_chunk)
    metrics["mf_fraction"] = latent.mf_fraction(mf_data, mf_span, params.mf_quantile)
    metrics["mf_quantile"] = float(params.mf_quantile)
    mf_median = float(np.median(mf_data))
    metrics["mf_span_over_data"] = _finite(float(np.median(mf_span)) / mf_median) if mf_median > 0 else None
    metrics["mf_median_data" + SCALE_DEPENDENT] = mf_median
    nn_unit = latent.typical_nn_distance(reference, rng=rng) if len(reference) > 1 else math.nan
    return metrics, LatentScale(whiten, mf_median, reference, nn_unit)


def interpolate_pairs(
    model: torch.nn.Module,
    mu_test: np.ndarray,
    pairs: np.ndarray,
    params: EvaluateParams,
    generator: torch.Generator,
    scale: LatentScale,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Graph path and straight line between each pair of encoded test points (METHOD section 6).

    Returns (per-pair records, graph nodes (N, L)). The graph's neighbours are chosen
    among whitened nodes, its edges weigh data-space distances. A record holds the
    latent polylines ('path_z', the path's nodes, and 'graph_z', the path refined
    segment by segment, both None when unreachable; 'line_z'), and for each of the
    two: data-space length, largest relative MF (and the raw one), evenness of the
    decoded steps, and mean distance of the decoded frames to the training data.
    """
    with torch.no_grad():
        prior_nodes = model.prior.sample(params.graph_nodes, generator=generator).double().numpy()
    ends = np.unique(pairs.reshape(-1))
    nodes = np.concatenate([prior_nodes, mu_test[ends]])
    node_of = {int(e): len(prior_nodes) + i for i, e in enumerate(ends)}
    graph = latent.knn_graph(scale.whiten(nodes), decode_means(model, nodes, params.batch_size), params.graph_k)

    def measure(kind: str, z: np.ndarray) -> dict[str, float]:
        x = decode_means(model, z, params.batch_size)
        mf = _mf(model, z, params.mf_chunk)
        return {f"{kind}_length": latent.curve_length(x), f"{kind}_max_mf": float(mf.max()),
                f"{kind}_max_rel_mf": float(scale.relative_mf(mf).max()),
                f"{kind}_evenness": latent.step_evenness(x),
                f"{kind}_off_data": latent.off_data_distance(x, scale.reference, scale.nn_unit)}

    records = []
    for a, b in pairs:
        line_z = latent.straight_line(mu_test[a], mu_test[b], params.line_steps)
        record: dict[str, Any] = {"start": int(a), "end": int(b), "line_z": line_z, "path_z": None, "graph_z": None,
                                  "graph_nodes": 0, "length_ratio": math.nan, **measure("line", line_z)}
        record.update({f"graph_{k}": math.nan for k in ("length", "max_mf", "max_rel_mf", "evenness", "off_data")})
        path = latent.graph_shortest_path(graph, node_of[int(a)], node_of[int(b)])
        if path is not None:
            graph_z = latent.refine_polyline(nodes[path], params.segment_steps)
            record.update(path_z=nodes[path], graph_z=graph_z, graph_nodes=len(path), **measure("graph", graph_z))
            if record["line_length"] > 0:
                record["length_ratio"] = record["graph_length"] / record["line_length"]
        records.append(record)
    return records, nodes


def interpolation_numbers(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over pairs of the per-pair figures (a pair without a graph path counts as missing)."""
    def median(key: str) -> float | None:
        return _finite(latent.summarise([r[key] for r in records]))

    with_path = [r for r in records if r["graph_z"] is not None]
    return {
        "interp_pairs": len(with_path),
        "interp_pairs_requested": len(records),
        "interp_length_ratio": median("length_ratio"),
        "interp_max_rel_mf_graph": median("graph_max_rel_mf"),
        "interp_max_rel_mf_line": median("line_max_rel_mf"),
        # Strictly below, beyond round-off: both curves share their end points, where the two maxima may tie.
        "interp_graph_avoids_ridges": _finite(float(np.mean([r["graph_max_rel_mf"] < r["line_max_rel_mf"] * (1 - 1e-6)
                                                             for r in with_path]))) if with_path else None,
        "interp_evenness_graph": median("graph_evenness"),
        "interp_evenness_line": median("line_evenness"),
        "interp_off_data_graph": median("graph_off_data"),
        "interp_off_data_line": median("line_off_data"),
        "interp_max_mf_graph" + SCALE_DEPENDENT: median("graph_max_mf"),
        "interp_max_mf_line" + SCALE_DEPENDENT: median("line_max_mf"),
    }
