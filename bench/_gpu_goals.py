"""bench/gpu.py's goals and whether a run met them (pure logic on the results JSON)."""

from __future__ import annotations

from typing import Any

GOALS = {"train_speedup_vs_trainer": 3.0, "ll_seconds": {"vae": 30.0, "iwae": 30.0, "vhp": 120.0}}


def goals(results: dict[str, Any]) -> dict[str, Any]:
    train, ll = results.get("training") or {}, results.get("log_likelihood") or {}
    out: dict[str, Any] = {}
    for model in ("vae", "iwae"):
        ref = (train.get(f"pythae-trainer/{model}/fp32") or {}).get("samples_per_s")
        loop = train.get(f"pythae-loop/{model}/fp32") or {}
        best = None
        for precision in ("fp32", "auto", "graphed"):
            row = train.get(f"ours/{model}/{precision}") or {}
            if "samples_per_s" not in row or not ref or (precision == "graphed" and not row.get("adopt")):
                continue
            same = same_curve(row, loop)
            ratio = row["samples_per_s"] / ref
            if same is not False and (best is None or ratio > best["speedup"]):
                best = {"row": f"ours/{model}/{precision}", "speedup": ratio, "same_loss_curve": same}
        out[f"train_{model}"] = {**(best or {}), "goal": GOALS["train_speedup_vs_trainer"],
                                 "met": bool(best and best["speedup"] >= GOALS["train_speedup_vs_trainer"])}
    for model, limit in GOALS["ll_seconds"].items():
        row = ll.get(model) or {}
        out[f"ll_{model}"] = {"seconds": row.get("full_s"), "extrapolated": row.get("extrapolated"), "goal": limit,
                              "met": bool(row.get("full_s") is not None and row["full_s"] <= limit
                                          and row.get("of") == 10000)}
    return out


def same_curve(ours: dict[str, Any], theirs: dict[str, Any]) -> bool | None:
    """Loss at the end of training within noise: |difference| <= 3 standard errors, or 1 %."""
    a, b = ours.get("loss_tail"), theirs.get("loss_tail")
    if not a or not b:
        return None
    noise = 3 * ((a["se"] or 0) ** 2 + (b["se"] or 0) ** 2) ** 0.5
    return bool(abs(a["mean"] - b["mean"]) <= max(noise, 0.01 * abs(b["mean"])))
