"""What a run's constraint and decoder did, in numbers and one sentence (metrics.json, the
Prefect artifacts, the report).

- the lambda updates, the share made while the constraint was violated (C_hat > kappa^2:
  REWO then weights reconstruction up), lambda's maximum and the step it was reached;
- kappa: auto's probe error when there was a probe;
- the Gaussian decoder's final sigma (the one evaluation uses), and how it was set;
- when a constrained run never found its constraint violated, the sentence that REWO acted
  as a warm-up only.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vhp_core import ConstraintState, constraint_rule


def warmup_only_note(state: ConstraintState, model_name: str) -> str | None:
    """The one line for a constrained run whose constraint never bound (no violated lambda update), else None."""
    if constraint_rule(model_name) == "none" or state.kappa_sq is None or not state.prior_active:
        return None
    if state.violated > 0:
        return None
    return (f"REWO acted as a warm-up only: the constraint never bound "
            f"(κ² = {state.kappa_sq:.4g}, C ended at {state.c_hat:.4g}): C stayed below κ² at every λ update "
            f"once the prior learned, so λ was never pushed above 1")


def constraint_diagnostics(state: ConstraintState, model_name: str) -> dict[str, Any]:
    """lambda_updates, lambda_violated_share, lambda_max, lambda_max_step, c_probe, rewo_note."""
    constrained = constraint_rule(model_name) != "none"
    return {
        "lambda_updates": state.updates if constrained else 0,
        "lambda_violated_share": (state.violated / state.updates) if constrained and state.updates else None,
        "lambda_max": state.lambda_peak,
        "lambda_max_step": state.lambda_peak_step,
        "c_probe": state.c_probe,
        "rewo_note": warmup_only_note(state, model_name),
    }


def sigma_summary(model: torch.nn.Module) -> dict[str, Any] | None:
    """The Gaussian decoder's sigma as evaluation uses it: mode, and the value (one) or the
    geometric mean, min and max (per dimension); None for a Bernoulli decoder."""
    lik = getattr(model, "likelihood", None)
    if lik is None or not hasattr(lik, "log_std"):
        return None
    log_std = lik.log_std.detach().double().cpu()
    calibration = getattr(lik, "calibration", "none")
    mode = "learned" if isinstance(lik.log_std, torch.nn.Parameter) else (
        "fixed" if calibration == "none" else f"calibrated ({calibration}{', per dimension' if lik.per_dim else ''})")
    return {
        "mode": mode,
        "sigma": math.exp(float(log_std.mean())),  # one sigma, or the geometric mean of the per-dimension ones
        "sigma_min": math.exp(float(log_std.min())),
        "sigma_max": math.exp(float(log_std.max())),
    }


def lambda_moved(curves: list[list[float]], lambda_column: int) -> bool:
    """True when lambda took more than one value over the logged curve."""
    values = {row[lambda_column] for row in curves}
    return len(values) > 1
