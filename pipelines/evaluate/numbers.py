"""Pass 2 of the evaluate stage: every metric as a pure NumPy function of the record (`record.py`).

No model and no random draw here: the record holds what the model answered and
which subsets were drawn, so these functions can be tested on a record built by hand.

- `likelihood_numbers`: test log-likelihood by importance sampling (METHOD section 5)
  with S, K_eval and the number of points beside it, the ELBO on the same points and
  samples, for the hierarchical prior the same estimate at a second K_eval (has it
  converged?), the ELBO terms over the whole test split and the final lambda.
- `latent_numbers`: the paper's claims, measured free of the latent scale. A latent
  space with a learned prior has no fixed scale (METHOD section 6): mapping
  z -> A z + b, with the decoder and prior mapped along, gives the same model, and MF
  changes by 1/|det A|. So every figure reads the model's own scale (`LatentScale`):
  latent distances are measured after whitening the codes by the covariance of the
  encoded test data, and MF is divided by its median at the encoded test data. What a
  user sees is measured in data space, which no latent map touches: the evenness of
  the decoded steps of an interpolation and the distance of its frames to the
  training data. Raw figures that depend on the scale are kept only under names
  ending in `_raw_scale_dependent` (tests/test_latent_invariance.py holds every other
  figure fixed under such maps).
- `pair_numbers` and `interpolation_numbers`: graph paths against straight lines.

Definitions: README, "Evaluation: what the numbers mean".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.evaluate import latent

if TYPE_CHECKING:  # the record's type only: nothing here asks a model
    from pipelines.evaluate.record import EvaluationRecord

# Continuous factors read out linearly from the latent code (faces).
REGRESSION_LABELS = ("azimuth", "elevation", "light")
# Categorical label classified by kNN in latent space (mocap), falling back to the colour label.
KNN_LABELS = ("motion", "label")
SCALE_DEPENDENT = "_raw_scale_dependent"
_PAIR_FIGURES = ("length", "max_mf", "max_rel_mf", "evenness", "off_data")


def finite(value: float | None) -> float | None:
    """The value as a float, or None when it is None or not finite (strict JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None


def mean_se(values: np.ndarray) -> tuple[float, float | None]:
    """(mean, standard error of the mean; None for fewer than two values)."""
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


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

    @classmethod
    def of(cls, record: EvaluationRecord) -> LatentScale:
        mf_median = float(np.median(record.mf_data))
        reference = record.reference
        nn_unit = latent.typical_nn_distance(reference, record.nn_subset) if len(reference) > 1 else math.nan
        return cls(latent.Whitening.fit(record.mu_test), mf_median, reference, nn_unit)

    def relative_mf(self, mf: np.ndarray) -> np.ndarray:
        return np.asarray(mf, dtype=np.float64) / self.mf_median if self.mf_median > 0 else np.full_like(mf, np.nan)


def likelihood_numbers(record: EvaluationRecord) -> dict[str, Any]:
    """The log-likelihood and ELBO on the same points and samples, the loss terms, the final state."""
    info, p = record.info, record.params
    ll_mean, ll_se = mean_se(record.log_px)
    elbo_mean, elbo_se = mean_se(record.ll_elbo)
    out: dict[str, Any] = {
        "latent_dim": int(info["latent_dim"]),
        "n_test": int(len(record.mu_test)),
        "test_log_likelihood": ll_mean,
        "test_log_likelihood_stderr": ll_se,
        "ll_samples": int(p.ll_samples),
        "ll_inner_samples": info["ll_inner_samples"],
        "ll_n_points": int(len(record.log_px)),
        "ll_elbo": elbo_mean,
        "ll_elbo_stderr": elbo_se,
        "ll_sigma": info["ll_sigma"],
        **{k: float(v) for k, v in info["loss_terms"].items()},
        "final_lambda": info["final_lambda"],
        "final_c_hat": info["final_c_hat"],
    }
    if record.log_px_check is not None:
        check = record.log_px_check
        diff, diff_se = mean_se(check - record.log_px)
        out.update({
            "test_log_likelihood_check": float(check.mean()),
            "ll_inner_samples_check": int(p.ll_inner_samples_check),
            "ll_check_diff": diff,
            "ll_check_diff_stderr": diff_se,
            "ll_check_agrees": None if diff_se is None else bool(abs(diff) <= 2.0 * diff_se),
        })
    return out


def latent_numbers(record: EvaluationRecord, scale: LatentScale) -> dict[str, Any]:
    """Active units, kNN accuracy, trajectory smoothness, R^2 and the MF fraction."""
    p, test, train = record.params, record.test_labels, record.train_labels
    w_test, w_train = scale.whiten(record.mu_test), scale.whiten(record.mu_train)
    metrics: dict[str, Any] = {
        "active_units": latent.active_units(record.mu_test, posterior_var=record.var_test),
        "active_units" + SCALE_DEPENDENT: latent.active_units(record.mu_test),
    }
    knn_label = next((lab for lab in KNN_LABELS if lab in test), None)
    if knn_label is not None and knn_label in train:
        metrics["knn_accuracy"] = latent.knn_accuracy(w_train, train[knn_label], w_test, test[knn_label], p.knn_k)
        metrics["knn_k"] = int(p.knn_k)
        metrics["knn_label"] = knn_label
    if "trial" in test and "frame" in test:
        try:
            metrics["trajectory_smoothness"] = latent.trajectory_smoothness(w_test, test["trial"], test["frame"],
                                                                            record.smoothness_subset)
        except ValueError:
            metrics["trajectory_smoothness"] = None
    for lab in REGRESSION_LABELS:
        if lab in test and lab in train:
            metrics[f"r2_{lab}"] = finite(float(latent.linear_r2(w_train, train[lab], w_test, test[lab])))
    metrics["mf_fraction"] = latent.mf_fraction(record.mf_data, record.mf_span, p.mf_quantile)
    metrics["mf_quantile"] = float(p.mf_quantile)
    mf_median = scale.mf_median
    metrics["mf_span_over_data"] = finite(float(np.median(record.mf_span)) / mf_median) if mf_median > 0 else None
    metrics["mf_median_data" + SCALE_DEPENDENT] = mf_median
    return metrics


def pair_numbers(record: EvaluationRecord, scale: LatentScale) -> list[dict[str, Any]]:
    """Per endpoint pair: for the straight line and the graph path (NaN when unreachable), data-space
    length, largest relative MF (and the raw one), evenness of the decoded steps and mean distance of
    the decoded frames to the training data; the path's node count and its length over the line's."""
    def measure(kind: str, x: np.ndarray, mf: np.ndarray) -> dict[str, float]:
        return {f"{kind}_length": latent.curve_length(x), f"{kind}_max_mf": float(mf.max()),
                f"{kind}_max_rel_mf": float(scale.relative_mf(mf).max()),
                f"{kind}_evenness": latent.step_evenness(x),
                f"{kind}_off_data": latent.off_data_distance(x, scale.reference, scale.nn_unit)}

    out = []
    for i, (a, b) in enumerate(record.pairs):
        row: dict[str, Any] = {"start": int(a), "end": int(b), "graph_nodes": len(record.path_z[i]),
                               "length_ratio": math.nan, **measure("line", record.line_x[i], record.line_mf[i]),
                               **{f"graph_{k}": math.nan for k in _PAIR_FIGURES}}
        if len(record.path_z[i]):
            row.update(measure("graph", record.graph_x[i], record.graph_mf[i]))
            if row["line_length"] > 0:
                row["length_ratio"] = row["graph_length"] / row["line_length"]
        out.append(row)
    return out


def interpolation_numbers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over pairs of the per-pair figures (a pair without a graph path counts as missing)."""
    def median(key: str) -> float | None:
        return finite(latent.summarise([r[key] for r in rows]))

    with_path = [r for r in rows if r["graph_nodes"] > 0]
    return {
        "interp_pairs": len(with_path),
        "interp_pairs_requested": len(rows),
        "interp_length_ratio": median("length_ratio"),
        "interp_max_rel_mf_graph": median("graph_max_rel_mf"),
        "interp_max_rel_mf_line": median("line_max_rel_mf"),
        # Strictly below, beyond round-off: both curves share their end points, where the two maxima may tie.
        "interp_graph_avoids_ridges": finite(float(np.mean([r["graph_max_rel_mf"] < r["line_max_rel_mf"] * (1 - 1e-6)
                                                            for r in with_path]))) if with_path else None,
        "interp_evenness_graph": median("graph_evenness"),
        "interp_evenness_line": median("line_evenness"),
        "interp_off_data_graph": median("graph_off_data"),
        "interp_off_data_line": median("line_off_data"),
        "interp_max_mf_graph" + SCALE_DEPENDENT: median("graph_max_mf"),
        "interp_max_mf_line" + SCALE_DEPENDENT: median("line_max_mf"),
    }


def evaluation_numbers(record: EvaluationRecord) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics.json, the per-pair rows of interpolation.json): every number of the record.

    A non-finite float (e.g. a diverged model's likelihood) becomes None, as strict JSON needs.
    """
    scale = LatentScale.of(record)
    pairs = pair_numbers(record, scale)
    metrics = {**record.info["header"], **likelihood_numbers(record), **latent_numbers(record, scale),
               **interpolation_numbers(pairs)}
    metrics = {k: finite(v) if isinstance(v, float) else v for k, v in metrics.items()}
    rows = [{k: finite(v) if isinstance(v, float) else v for k, v in r.items()} for r in pairs]
    return metrics, rows
