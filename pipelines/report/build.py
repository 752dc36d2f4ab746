"""The report stage: one offline HTML page over every evaluated model.

Reads eval/<dataset>/<model>/metrics.json and the PNGs beside it, and
models/<dataset>/<model>/curves.tsv, and writes report/index.html with every
PNG it shows copied beside it (relative links, no scripts, no web fonts or
CDN), so the folder opens from disk and can be archived or mailed as is:

- one table of every metric of every model on every data set;
- per data set, the figures of two models side by side (vhp against the iwae
  baseline by default, as in the paper's figures), other models folded below;
- per data set, training curves (lambda, C_hat, loss terms against step).

The page is built in a temporary folder beside ``out_dir`` and swapped into
place, so a reader never sees a half-written report.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.plotting import CURVE_PANELS, training_curves_figure
from pipelines.report.params import ReportParams
from pipelines.report.tables import likelihood_notes, metrics_table, model_order
from preprocessing.atomic import atomic_folder, atomic_write_text

# Figures of one evaluated model, in page order, with captions.
FIGURES: tuple[tuple[str, str], ...] = (
    ("latent_map.png", "Encoded test data over MF / the model's median MF at its encoded test data (log scale, "
                       "one colour range for every model; darker = larger)"),
    ("interpolation.png", "Graph-based interpolation (solid) against the straight line (dashed)"),
    ("interpolation_frames.png", "Decoded frames along the graph path and along the straight line"),
    ("reconstructions.png", "Test data and reconstructions"),
    ("prior_samples.png", "Samples from the learned prior, decoded"),
)
# Strips of frames are wide: models are stacked rather than put side by side, so frames stay legible.
WIDE_FIGURES = frozenset({"interpolation_frames.png", "reconstructions.png", "prior_samples.png"})


def read_curves(path: Path, max_points: int | None = None) -> dict[str, np.ndarray]:
    """curves.tsv -> column name -> float array (thinned evenly to max_points rows, last row kept)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return {}
        rows = [row for row in reader if len(row) == len(header)]

    def number(cell: str) -> float:
        try:
            return float(cell)
        except ValueError:
            return math.nan

    table = np.asarray([[number(c) for c in row] for row in rows], dtype=np.float64).reshape(-1, len(header))
    if max_points is not None and len(table) > max_points:
        keep = np.unique(np.linspace(0, len(table) - 1, max_points).round().astype(int))
        table = table[keep]
    return {name: table[:, i] for i, name in enumerate(header)}


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return {"error": f"unreadable {path.name}: {err}"}
    return data if isinstance(data, dict) else {"error": f"{path.name} is not a JSON object"}


TRAINING_KEYS = ("constraint_met", "prior_active", "prior_activation_step", "kappa", "kappa_squared", "c_ae",
                 "kappa_step", "constraint_warning", "c_probe", "lambda_updates", "lambda_violated_share",
                 "lambda_max", "lambda_max_step", "rewo_note", "selected_step")


def _training_cells(trained: dict[str, Any]) -> dict[str, Any]:
    """The training stage's keys of a model's column, nested values flattened (sigma, train/val terms)."""
    cells = {k: trained.get(k) for k in TRAINING_KEYS if k in trained}
    sigma = trained.get("sigma")
    if isinstance(sigma, dict):
        cells["sigma_final"], cells["sigma_mode"] = sigma.get("sigma"), sigma.get("mode")
    for split in ("train_eval", "val"):
        terms = trained.get(split)
        if isinstance(terms, dict):
            cells[f"{split}_elbo"], cells[f"{split}_reconstruction"] = terms.get("elbo"), terms.get("reconstruction")
    return cells


def read_val_curves(models_root: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """models/<dataset>/<model>/val_curves.tsv -> dataset -> '<model> train|val' -> {'step', 'elbo'}."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for path in sorted(models_root.glob("*/*/val_curves.tsv")) if models_root.is_dir() else []:
        table = read_curves(path)
        if table and "val_elbo" in table:
            for split in ("train", "val"):
                out.setdefault(path.parent.parent.name, {})[f"{path.parent.name} {split}"] = {
                    "step": table["step"], "elbo": table[f"{split}_elbo"]}
    return out


def _copy(src: Path, dst_root: Path, rel: Path) -> str:
    dst = dst_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return rel.as_posix()


CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1350px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table.metrics { border-collapse: collapse; font-size: 0.82em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
table.metrics th.metric, table.metrics td.metric { text-align: left; white-space: nowrap; }
table.metrics thead th { background: #f0f0f0; }
table.metrics tbody tr:nth-child(even) { background: #fafafa; }
table.metrics td.bad { color: #b00; font-weight: bold; }
.warning { color: #b00; border: 2px solid #b00; background: #fff4f4; padding: 0.5em 0.8em; }
.scroll { overflow-x: auto; }
.pair { display: grid; grid-template-columns: repeat(var(--n), 1fr); gap: 12px; align-items: start; }
.pair figure { margin: 0; } .pair img, .curves img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { font-size: 0.85em; color: #555; margin: 0.3em 0 0.6em 0; }
.missing { color: #999; font-style: italic; font-size: 0.85em; padding: 2em 0; text-align: center;
           border: 1px dashed #ccc; }
dl.defs dt { font-family: monospace; margin-top: 0.4em; } dl.defs dd { margin-left: 1.5em; color: #444; }
details { margin: 1em 0; } summary { cursor: pointer; font-weight: bold; }
"""


def _figure_rows(dataset: str, models: list[str], eval_root: Path, out: Path) -> list[str]:
    parts: list[str] = []
    for name, caption in FIGURES:
        available = [(m, eval_root / dataset / m / name) for m in models]
        if not any(path.is_file() for _, path in available):
            continue
        parts.append(f'<p class="caption">{html.escape(caption)}</p>')
        columns = 1 if name in WIDE_FIGURES else len(models)
        parts.append(f'<div class="pair" style="--n: {columns}">')
        for model, path in available:
            if path.is_file():
                rel = _copy(path, out, Path("figures") / dataset / model / name)
                parts.append(
                    f'<figure><img src="{html.escape(rel)}" alt="{html.escape(f"{name} of {model} on {dataset}")}">'
                    f"<figcaption>{html.escape(model)}</figcaption></figure>"
                )
            else:
                parts.append(f'<div class="missing">{html.escape(model)}: no {html.escape(name)}</div>')
        parts.append("</div>")
    return parts


def _render(eval_root: Path, models_root: Path, out: Path, params: ReportParams) -> None:
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    if eval_root.is_dir():
        for path in sorted(eval_root.glob("*/*/metrics.json")):
            metrics.setdefault(path.parent.parent.name, {})[path.parent.name] = _read_metrics(path)
    if models_root.is_dir():
        for path in sorted(models_root.glob("*/*/metrics.json")):
            trained = _read_metrics(path)
            cell = metrics.setdefault(path.parent.parent.name, {}).setdefault(path.parent.name, {})
            cell.update(_training_cells(trained))
    val_curves = read_val_curves(models_root)
    curves: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    if models_root.is_dir():
        for path in sorted(models_root.glob("*/*/curves.tsv")):
            table = read_curves(path, params.max_curve_points)
            if table:
                curves.setdefault(path.parent.parent.name, {})[path.parent.name] = table

    body: list[str] = [f"<h1>{html.escape(params.title)}</h1>"]
    # a report.compare entry no data set has (a typo, or a model not trained) is said, not refused
    evaluated_anywhere = sorted({m for cells in metrics.values() for m in cells})
    unevaluated = [m for m in params.compare if m not in evaluated_anywhere]
    if unevaluated and metrics:
        line = (f"report.compare: {', '.join(unevaluated)} has no evaluation under {eval_root} "
                f"(evaluated: {', '.join(evaluated_anywhere)}); left out")
        print(line, file=sys.stderr)
        body.append(f'<p class="warning">{html.escape(line)}</p>')
    datasets = sorted(set(metrics) | set(curves))
    if not datasets:
        body.append(f"<p>No evaluated models found under {html.escape(str(eval_root))}.</p>")
    else:
        body.append("<p>Data sets: " + ", ".join(
            f'<a href="#{html.escape(d)}">{html.escape(d)}</a>' for d in datasets) + "</p>")
    if metrics:
        body.append("<h2>Metrics</h2>")
        body += metrics_table(metrics, params.compare)

    for dataset in datasets:
        body.append(f'<h2 id="{html.escape(dataset)}">{html.escape(dataset)}</h2>')
        stand_ins = {str(m.get("data_source") or "embedded") for m in metrics.get(dataset, {}).values()
                     if m.get("stand_in_data")}
        if stand_ins:
            body.append(f"<p><strong>Stand-in data</strong> ({html.escape(', '.join(sorted(stand_ins)))}): "
                        "the small default that needs no download, not the data of the paper. "
                        "Point params.yaml at real data for numbers worth comparing.</p>")
        for model, values in sorted(metrics.get(dataset, {}).items()):
            if values.get("constraint_warning"):
                body.append(f'<p class="warning"><strong>{html.escape(model)}: constraint not met.</strong> '
                            f"{html.escape(str(values['constraint_warning']))}</p>")
            if values.get("rewo_note"):
                body.append(f"<p><strong>{html.escape(model)}:</strong> {html.escape(str(values['rewo_note']))}</p>")
        body += likelihood_notes(metrics.get(dataset, {}), params.compare)
        evaluated = model_order(list(metrics.get(dataset, {})), params.compare)
        side = [m for m in params.compare if m in evaluated] or evaluated[:2]
        if side:
            body.append(f"<h3>{' vs '.join(html.escape(m) for m in side)}</h3>")
            body += _figure_rows(dataset, side, eval_root, out)
        for model in [m for m in evaluated if m not in side]:
            body.append(f"<details><summary>{html.escape(model)}</summary>")
            body += _figure_rows(dataset, [model], eval_root, out)
            body.append("</details>")
        if dataset in curves:
            ordered = {m: curves[dataset][m] for m in model_order(list(curves[dataset]), params.compare)}
            rel = Path("figures") / dataset / "training_curves.png"
            # lambda is drawn only where it moved; otherwise C_hat against kappa^2 carries the story
            moved = any(len(set(np.asarray(t.get("lambda", [])).tolist())) > 1 for t in ordered.values())
            training_curves_figure(out / rel, ordered, smoothing=params.curve_smoothing,
                                   panels=CURVE_PANELS if moved else CURVE_PANELS[1:],
                                   title=f"training curves on {dataset} (moving average over "
                                         f"{params.curve_smoothing} logged rows)")
            body.append("<h3>Training curves</h3>")
            body.append(f'<div class="curves"><img src="{rel.as_posix()}" alt="training curves on '
                        f'{html.escape(dataset)}"></div>')
        if dataset in val_curves:
            rel = Path("figures") / dataset / "train_val_elbo.png"
            training_curves_figure(out / rel, val_curves[dataset], panels=(("elbo", "ELBO: train against val", False),),
                                   title=f"{dataset}: train and val ELBO of the same estimate (overfitting shows as a gap)")
            body.append("<h3>Train against val</h3>")
            body.append(f'<div class="curves"><img src="{rel.as_posix()}" alt="train and val ELBO on '
                        f'{html.escape(dataset)}"></div>')

    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(params.title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    atomic_write_text(out / "index.html", page)
    _write_dvc_views(out, metrics)


def _write_dvc_views(out: Path, metrics: dict[str, dict[str, dict[str, Any]]]) -> None:
    """What dvc.yaml declares at top level: one metrics file, a folder of PNG plots, and the page
    template (vega inlined) that makes `dvc plots show`/`diff` of the training curves render offline.
    """
    from pipelines.report.vega import write_html_template

    write_html_template(out / "plots_template.html")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    figures = out / "figures"
    if figures.is_dir():
        for png in sorted(figures.rglob("*.png")):
            shutil.copy2(png, plots / "_".join(png.relative_to(figures).parts))


def build_report(eval_root: Path, models_root: Path, out_dir: Path, params: ReportParams) -> Path:
    """Write out_dir/index.html (and its PNGs) from eval_root and models_root; returns the index path."""
    eval_root, models_root, out_dir = Path(eval_root), Path(models_root), Path(out_dir)
    with atomic_folder(out_dir) as staging:  # the old report stays whole until the new one is in place
        _render(eval_root, models_root, staging, params)
    return out_dir / "index.html"
