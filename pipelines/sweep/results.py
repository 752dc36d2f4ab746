"""The sweep's results: one row a point -> results.csv, results.md (mean ± sd over seeds) and results.png."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.atomic import atomic_write

# Columns of results.csv, in order; the numbers come from the point's eval and model metrics.
RESULT_COLUMNS = (
    "dataset", "model", "kappa", "seed", "test_log_likelihood", "knn_accuracy", "elbo",
    "reconstruction", "active_units", "final_lambda", "final_c_hat", "kappa_squared", "constraint_met",
    "prior_active", "prior_activation_step", "steps", "seconds",
)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), sd


def _kappa_key(kappa: Any) -> Any:
    return kappa if isinstance(kappa, str) else float(kappa)


def _kappa_order(kappa: Any) -> tuple[int, float]:
    return (1, 0.0) if isinstance(kappa, str) else (0, float(kappa))


def _kappa_x(cell: dict[str, Any]) -> float:
    """Where a cell sits on the kappa axis: its kappa, or for 'auto' the kappa it chose (mean over seeds)."""
    if isinstance(cell["kappa"], str):
        return math.sqrt(cell["kappa_squared_mean"]) if cell["kappa_squared_mean"] > 0 else math.nan
    return float(cell["kappa"])


def _kappa_text(kappa: Any) -> str:
    return kappa if isinstance(kappa, str) else f"{kappa:g}"


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of each (data set, model, kappa)."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"], _kappa_key(row["kappa"])), []).append(row)
    out = []
    for (dataset, model, kappa), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                   _kappa_order(kv[0][2]))):
        entry: dict[str, Any] = {"dataset": dataset, "model": model, "kappa": kappa, "n_seeds": len(members)}
        for key in ("test_log_likelihood", "knn_accuracy", "final_lambda", "final_c_hat", "kappa_squared"):
            entry[f"{key}_mean"], entry[f"{key}_sd"] = _mean_sd([m.get(key) for m in members])
        entry["constraint_met"] = sum(bool(m.get("constraint_met")) for m in members)
        entry["prior_active"] = sum(bool(m.get("prior_active")) for m in members)
        out.append(entry)
    return out


def results_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RESULT_COLUMNS})
    return buffer.getvalue()


def _pm(mean: float, sd: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def results_markdown(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | model | κ | seeds | test log-likelihood | kNN accuracy | final λ | Ĉ | constraint met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['model']} | {_kappa_text(s['kappa'])} | {s['n_seeds']} "
            f"| {_pm(s['test_log_likelihood_mean'], s['test_log_likelihood_sd'], 2)} "
            f"| {_pm(s['knn_accuracy_mean'], s['knn_accuracy_sd'])} "
            f"| {_pm(s['final_lambda_mean'], s['final_lambda_sd'], 2)} "
            f"| {_pm(s['final_c_hat_mean'], s['final_c_hat_sd'], 4)} "
            f"| {s['constraint_met']}/{s['n_seeds']} |"
        )
    return "\n".join(lines) + "\n"


def results_figure(summary: list[dict[str, Any]], path: Path) -> Path:
    """Test log-likelihood and kNN accuracy against kappa, one line a model, +-1 sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.4 * len(datasets)), squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, (key, label) in enumerate((("test_log_likelihood", "test log-likelihood"),
                                          ("knn_accuracy", "kNN accuracy"))):
            ax = axes[r][c]
            for model in sorted({s["model"] for s in summary if s["dataset"] == dataset}):
                cells = sorted((s for s in summary if s["dataset"] == dataset and s["model"] == model),
                               key=lambda s: _kappa_x(s))
                kappas = [_kappa_x(s) for s in cells]
                ax.errorbar(kappas, [s[f"{key}_mean"] for s in cells], yerr=[s[f"{key}_sd"] for s in cells],
                            marker="o", capsize=3, label=model)
            ax.set_xlabel("κ (kappa: auto drawn at the κ it chose)")
            ax.set_ylabel(label)
            ax.set_title(f"{dataset}: {label}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("sweep: mean ± sd over seeds")
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=90))
    finally:
        plt.close(fig)


def write_results(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """results.csv, results.md and results.png in ``out``."""
    from pipelines.checkpoint import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["dataset"], r["model"], _kappa_order(r["kappa"]), int(r["seed"])))
    summary = aggregate(rows)
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "results.md", results_markdown(summary))
    results_figure(summary, out / "results.png")
    return {"csv": out / "results.csv", "markdown": out / "results.md", "figure": out / "results.png"}


