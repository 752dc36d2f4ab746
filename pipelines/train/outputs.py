"""What a training run leaves behind: model.pt, metrics.json, curves.tsv, curves.png and timing.json.

Each file is written atomically. metrics.json holds results only (it is what
DVC compares across runs); wall-clock figures go to timing.json. When a
constrained model ends with its hierarchical prior never trained, the run says
so in words, with the fix (``constraint_report``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.checkpoint import atomic_torch_save, atomic_write_json, atomic_write_text, config_to_dict
from pipelines.queries import mean_loss_terms, test_inputs
from pipelines.train.diagnostics import constraint_diagnostics, lambda_moved, sigma_summary
from pipelines.train.fit import CURVE_COLUMNS, FitResult
from pipelines.train.validation import VAL_COLUMNS, val_tsv
from pipelines.params import TrainParams
from vhp_core import ConstraintConfig, ModelConfig, constraint_rule


@torch.no_grad()
def test_terms(model: torch.nn.Module, dataset: Any, seed: int, batch_size: int = 512) -> dict[str, float]:
    """Mean loss terms over the test split, one z per point with a fixed seed.

    The same inputs and means as the evaluate stage (its fixed binarised test copy
    for Bernoulli data), so the two stages' numbers agree.
    """
    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return mean_loss_terms(model, test_inputs(dataset), batch_size)
    finally:
        torch.set_rng_state(state)
        model.train()


def constraint_report(result: FitResult, model_name: str) -> str | None:
    """None when all is well; else what went wrong with the constraint and how to fix it."""
    if constraint_rule(model_name) == "none":
        return None
    state = result.state
    if state.prior_active:
        return None
    kappa_sq = state.kappa_sq
    if kappa_sq is None:
        return (f"kappa: auto chose no kappa in {result.step} steps (the run ended inside the initial phase), "
                f"so the hierarchical prior never trained; train for more steps")
    return (f"the constraint was never met, so the hierarchical prior never trained: kappa^2 = {kappa_sq:.4g} is "
            f"below the best reconstruction error reached, C_hat = {result.best_c_hat:.4g} after {result.step} "
            f"steps; use kappa: auto or raise kappa above {math.sqrt(result.best_c_hat):.3g}")


def curves_tsv(curves: list[list[float]]) -> str:
    lines = ["\t".join(CURVE_COLUMNS)]
    for row in curves:
        cells = []
        for col, value in zip(CURVE_COLUMNS, row):
            cells.append(str(int(value)) if col in ("step", "epoch") else repr(float(value)))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def write_outputs(result: FitResult, config: ModelConfig, ccfg: ConstraintConfig,
                  params: TrainParams, seed: int, out_dir: Path, test: dict[str, float],
                  dataset_name: str, device: str = "cpu",
                  evaluated: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """model.pt, metrics.json, curves.tsv, curves.png and timing.json, each atomically.

    ``device`` is the kind of device the model trained on ('cpu', 'cuda'); it and the
    resolved precision go into metrics.json and model.pt. ``evaluated``: the 'val' terms
    and 'train_eval' (training points scored as val and test are) of the final model, with
    a val split; its val curve goes to val_curves.tsv.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kappa_sq = result.state.kappa_sq
    metrics = {
        "dataset": dataset_name,
        "model": config.model,
        "steps": result.step,
        "epochs": result.epochs,
        "device": device,
        "precision": config.precision,
        "final_lambda": result.state.lambda_,
        "final_c_hat": result.state.c_hat,
        "kappa_mode": "auto" if ccfg.kappa is None else "fixed",
        "kappa": None if kappa_sq is None else math.sqrt(kappa_sq),
        "kappa_squared": kappa_sq,
        "c_ae": result.state.c_ae,
        "kappa_step": result.state.kappa_step,
        "best_c_hat": result.best_c_hat,
        # None where the model has no constraint (iwae, vae, vamp)
        "constraint_met": None if constraint_rule(config.model) == "none" or ccfg.variant in ("warmup", "elbo")
        else bool(kappa_sq is not None and result.state.c_hat <= kappa_sq),
        "prior_active": bool(result.state.prior_active),
        "prior_activation_step": result.prior_activation_step,
        "constraint_warning": constraint_report(result, config.model),
        "skipped_steps": result.skipped_steps,
        **constraint_diagnostics(result.state, config.model),
        "sigma": sigma_summary(result.model),
        "selected_step": result.selection.best_step,
        "train": {k: float(v) for k, v in result.last_epoch_terms.items()},
        **{k: {n: float(v) for n, v in terms.items()} for k, terms in (evaluated or {}).items()},
        "test": {k: float(v) for k, v in test.items()},
    }
    payload = {
        "format": 1,
        "config": config_to_dict(config),
        "constraint_config": dataclasses.asdict(ccfg),
        "constraint_state": dataclasses.asdict(result.state),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "train_params": json.loads(json.dumps(dataclasses.asdict(params), default=list)),
        "seed": seed,
        "dataset": dataset_name,
        "device": device,
        "sigma": metrics["sigma"],
        "selected_step": result.selection.best_step,
    }
    atomic_torch_save(out_dir / "model.pt", payload)
    if result.selection.rows:
        atomic_write_text(out_dir / "val_curves.tsv", val_tsv(result.selection.rows))
    atomic_write_text(out_dir / "curves.tsv", curves_tsv(result.curves))
    plot_curves(result.curves, out_dir / "curves.png", title=f"{config.model} on {dataset_name}",
                kappa_squared=kappa_sq, val_rows=result.selection.rows)
    atomic_write_json(out_dir / "metrics.json", metrics)
    # wall-clock figures live apart from metrics.json so that metrics are reproducible
    atomic_write_json(out_dir / "timing.json", {
        "seconds": result.seconds,
        "samples_per_second": result.samples / max(result.seconds, 1e-9),
        "resumed_from_step": result.resumed_from,
        "threads": torch.get_num_threads(),
    })
    return metrics


def plot_curves(curves: list[list[float]], path: Path, title: str, kappa_squared: float | None,
                val_rows: list[list[float]] | None = None) -> None:
    """Training curves as a PNG: lambda (only when it moved; otherwise C_hat against kappa^2
    carries the story), C_hat against kappa^2, loss terms, and train against val ELBO."""
    from pipelines.plotting import new_figure, save_figure

    arr = np.asarray(curves, dtype=float).reshape(-1, len(CURVE_COLUMNS))
    col = {name: i for i, name in enumerate(CURVE_COLUMNS)}
    moved = lambda_moved(curves, col["lambda"])
    n_panels = 2 + int(moved) + int(bool(val_rows))
    fig = new_figure(4.4 * n_panels, 3.4)
    panels = list(np.atleast_1d(fig.subplots(1, n_panels)))
    axes = ([panels.pop(0)] if moved else [None]) + panels
    steps = arr[:, col["step"]]
    if moved:
        axes[0].plot(steps, arr[:, col["lambda"]], color="C3")
        axes[0].set_yscale("log")
        axes[0].set_title("λ")
    axes[1].plot(steps, arr[:, col["c_hat"]], label="Ĉ (moving average)")
    axes[1].plot(steps, arr[:, col["reconstruction"]], alpha=0.4, label="C (batch)")
    if kappa_squared is not None:
        axes[1].axhline(kappa_squared, color="k", ls="--", lw=1, label="κ²")
    axes[1].set_title("reconstruction error")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, -arr[:, col["elbo"]], label="−ELBO")
    axes[2].plot(steps, arr[:, col["nll"]], label="−log p(x|z)")
    axes[2].plot(steps, arr[:, col["regulariser"]], label="KL or log q − F")
    axes[2].set_title("loss terms (per data point)")
    axes[2].legend(fontsize=8)
    if val_rows:
        val = np.asarray(val_rows, dtype=float).reshape(-1, len(VAL_COLUMNS))
        vcol = {name: i for i, name in enumerate(VAL_COLUMNS)}
        axes[3].plot(val[:, vcol["step"]], val[:, vcol["train_elbo"]], label="train")
        axes[3].plot(val[:, vcol["step"]], val[:, vcol["val_elbo"]], label="val")
        axes[3].set_title("ELBO, train against val")
        axes[3].legend(fontsize=8)
    for ax in axes:
        if ax is None:
            continue
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, Path(path))
