"""The report's metrics table: row order and definitions, cell formatting, and the log-likelihood notes.

Split from pipelines/report/build.py, which lays out the page; definitions in full are in the
README's "Evaluation: what the numbers mean".
"""

from __future__ import annotations

import html
import math
from typing import Any


# Metric rows of the table, in order, with a short definition (the README's Evaluation section has the long ones).
# Keys not listed here but present in a metrics.json follow, alphabetically.
METRIC_ROWS: tuple[tuple[str, str], ...] = (
    ("test_log_likelihood", "log p(x) by importance sampling, nats per test point (higher is better)"),
    ("test_log_likelihood_stderr", "standard error of that mean over test points"),
    ("ll_samples", "S: importance samples per test point"),
    ("ll_inner_samples", "K_eval: inner samples of zeta for the hierarchical prior's p(z)"),
    ("ll_n_points", "test points in the log-likelihood estimate"),
    ("ll_sigma", "Gaussian decoder's sigma the likelihood was scored with (the model's own; per dimension: geometric mean)"),
    ("ll_elbo", "ELBO on the same test points and from the same S samples as the log-likelihood"),
    ("test_log_likelihood_check", "the log-likelihood on the same points at the second K_eval"),
    ("ll_inner_samples_check", "the second K_eval"),
    ("ll_check_diff", "mean paired difference: LL at the second K_eval - LL at K_eval (nats)"),
    ("ll_check_agrees", "the two K_eval agree within 2 standard errors of the paired difference"),
    ("elbo", "ELBO per test point over the whole test split (hierarchical prior: with F)"),
    ("reconstruction", "C: per-dimension reconstruction error"),
    ("nll", "-log p(x|z), summed over dimensions"),
    ("regulariser", "KL(q || p) (N(0,I) prior) or E[log q - F] (hierarchical prior)"),
    ("active_units", "latent dimensions with Cov_x(E_q[z]) > 0.01 E_x[Var_q(z)] (scale-free)"),
    ("latent_dim", "latent dimensions"),
    ("final_lambda", "lambda at the end of training"),
    ("constraint_met", "C_hat <= kappa^2 at the end of training (no: the prior may never have trained)"),
    ("prior_activation_step", "step at which the constraint was first met and the hierarchical prior started to learn"),
    ("kappa", "kappa in force (kappa: auto -> chosen from the data)"),
    ("kappa_squared", "kappa^2, the bound on the per-dimension reconstruction error C"),
    ("c_ae", "kappa: auto: C_hat where the reconstruction-only initial phase stopped improving"),
    ("kappa_step", "kappa: auto: the step at which kappa was chosen"),
    ("final_c_hat", "C_hat (moving average of C) at the end of training"),
    ("c_probe", "kappa: auto with a probe: mean C over the probe at lambda = 1 (kappa^2 lies between c_ae and it)"),
    ("lambda_updates", "lambda updates made in the constrained phase"),
    ("lambda_violated_share", "share of the lambda updates at which the constraint was violated (C_hat > kappa^2)"),
    ("lambda_max", "largest lambda of the run"),
    ("lambda_max_step", "step at which lambda was largest"),
    ("sigma_final", "Gaussian decoder's sigma used for every number of this model (per dimension: geometric mean)"),
    ("sigma_mode", "how sigma was set: calibrated (sigma^2 = MSE), learned or fixed"),
    ("selected_step", "step of the kept model: the best val ELBO once the prior trains"),
    ("train_eval_elbo", "ELBO of the kept model on training points (the val/test estimate)"),
    ("val_elbo", "ELBO of the kept model on the val split (held-out training trials)"),
    ("train_eval_reconstruction", "C of the kept model on training points"),
    ("val_reconstruction", "C of the kept model on the val split"),
    ("knn_accuracy", "kNN motion-type accuracy between whitened latent codes, train -> test"),
    ("trajectory_smoothness", "median consecutive-frame step / median pairwise distance, whitened (lower: smoother)"),
    ("r2_azimuth", "held-out R^2 of a linear read-out of azimuth from z"),
    ("r2_elevation", "held-out R^2 of a linear read-out of elevation from z"),
    ("r2_light", "held-out R^2 of a linear read-out of the light direction from z"),
    ("mf_fraction", "fraction of test points with MF above the q-quantile of MF over the region the data span"),
    ("mf_span_over_data", "median MF between the data / median MF at the data"),
    ("interp_max_rel_mf_graph", "median over pairs of the largest MF / median MF at the data, along the graph path"),
    ("interp_max_rel_mf_line", "the same along the straight line"),
    ("interp_graph_avoids_ridges", "fraction of pairs whose graph path stays below the straight line's largest MF"),
    ("interp_evenness_graph", "largest / mean step between decoded frames of the graph path (1 = even)"),
    ("interp_evenness_line", "the same for the straight line"),
    ("interp_off_data_graph", "decoded graph-path frames: distance to the nearest training sample / data NN distance"),
    ("interp_off_data_line", "the same for the straight line"),
    ("interp_length_ratio", "median data-space length of graph path / straight line (lower: shorter path)"),
    ("interp_pairs", "endpoint pairs with a graph path"),
    ("n_test", "test points"),
)
HIDDEN_KEYS = frozenset({"dataset", "model", "constraint_warning", "rewo_note"})


def model_order(models: list[str], compare: tuple[str, ...]) -> list[str]:
    first = [m for m in compare if m in models]
    return first + sorted(m for m in models if m not in first)


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.4g}"
    return html.escape(str(value))


def _is_bad(key: str, value: Any) -> bool:
    """Cells the reader must not miss: a constraint never met, a prior that never trained."""
    return (key == "constraint_met" and value is False) or (key == "prior_active" and value is False)


# What the training stage's metrics.json adds to a model's column in the report.


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def metrics_table(metrics: dict[str, dict[str, dict[str, Any]]], compare: tuple[str, ...]) -> list[str]:
    columns = [(d, m) for d in sorted(metrics) for m in model_order(list(metrics[d]), compare)]
    present = {k for d in metrics.values() for mm in d.values() for k, v in mm.items() if _is_scalar(v)}
    known = [k for k, _ in METRIC_ROWS if k in present]
    extra = sorted(present - set(known) - HIDDEN_KEYS)
    definitions = dict(METRIC_ROWS)
    rows = ['<div class="scroll"><table class="metrics">', "<thead><tr><th class=\"metric\">data set</th>"]
    for dataset in sorted(metrics):
        rows.append(f'<th colspan="{len(metrics[dataset])}">{html.escape(dataset)}</th>')
    rows.append('</tr><tr><th class="metric">metric \\ model</th>')
    rows += [f"<th>{html.escape(m)}</th>" for _, m in columns]
    rows.append("</tr></thead><tbody>")
    for key in known + extra:
        title = html.escape(definitions.get(key, ""), quote=True)
        rows.append(f'<tr><td class="metric" title="{title}">{html.escape(key)}</td>')
        rows += [f'<td class="bad">{_format(metrics[d][m].get(key))}</td>' if _is_bad(key, metrics[d][m].get(key))
                 else f"<td>{_format(metrics[d][m].get(key))}</td>" for d, m in columns]
        rows.append("</tr>")
    rows.append("</tbody></table></div>")
    rows.append('<details><summary>Definitions</summary><dl class="defs">')
    for key in known:
        rows.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(definitions[key])}</dd>")
    rows.append("</dl></details>")
    return rows


def likelihood_notes(models: dict[str, dict[str, Any]], compare: tuple[str, ...]) -> list[str]:
    """One line a model: what stands behind its log-likelihood, and whether its K_eval has converged."""
    items = []
    for model in model_order(list(models), compare):
        m = models[model]
        if m.get("test_log_likelihood") is None:
            continue
        k = m.get("ll_inner_samples")
        text = (f"<b>{html.escape(model)}</b>: {_format(m.get('test_log_likelihood'))} ± "
                f"{_format(m.get('test_log_likelihood_stderr'))} nats over {_format(m.get('ll_n_points'))} test "
                f"points, S = {_format(m.get('ll_samples'))} importance samples each"
                + (f", K_eval = {_format(k)}" if k else "")
                + f"; ELBO on the same points and samples {_format(m.get('ll_elbo'))}")
        if m.get("ll_inner_samples_check") is not None:
            agrees = m.get("ll_check_agrees")
            verdict = "agree" if agrees else "do not agree" if agrees is False else "cannot be compared"
            text += (f". At K_eval = {_format(m.get('ll_inner_samples_check'))} on the same points: "
                     f"{_format(m.get('test_log_likelihood_check'))} (paired difference "
                     f"{_format(m.get('ll_check_diff'))} ± {_format(m.get('ll_check_diff_stderr'))}); the two "
                     f"{verdict} within 2 standard errors")
        items.append(f"<li>{text}.</li>")
    return ["<p>Log-likelihood:</p><ul>", *items, "</ul>"] if items else []
