"""Model selection on the val split, the diagnostics of a run, and kappa: auto over seeds on real
CMU trials (the prior trains, the constraint stays reachable)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.train.diagnostics import constraint_diagnostics, warmup_only_note
from pipelines.train.fit import fit
from pipelines.train.validation import Selection, Validation, is_candidate
from tests.conftest import stage_params
from tests.test_train_flow import fresh_model, make_run, tiny_params
from builders import constraint_config
from vhp_core import ConstraintState


def _validation(x: np.ndarray, every: int) -> Validation:
    return Validation(x=x, train_x=x[:8], every=every, seed=0)


def test_fit_keeps_the_model_at_its_best_val_elbo_and_resumes_to_the_same(tmp_path: Path) -> None:
    params = tiny_params(epochs=4, kappa={"toy": "auto"})
    data, config, ccfg = make_run(tmp_path, params)
    val_x = np.asarray(data.x[:24], dtype=np.float32) + 0.3  # shifted: its best step is not simply the last
    val = _validation(val_x, every=3)
    result = fit(fresh_model(config), config, ccfg, data, params, 0, tmp_path / "ck.pt", progress=False,
                 validation=val)
    sel = result.selection
    rows = np.asarray(sel.rows)
    assert rows[:, 0].tolist() == sorted(set(list(range(3, result.step + 1, 3)) + [result.step]))
    candidates = rows[rows[:, 5] == 1]
    assert len(candidates) and sel.best_step == int(candidates[np.argmax(candidates[:, 2]), 0])
    assert sel.best_elbo == pytest.approx(candidates[:, 2].max())
    # the returned model is the kept one: scoring it again gives the best val ELBO
    assert val.terms(result.model)["elbo"] == pytest.approx(sel.best_elbo, rel=1e-6)
    # no candidate before the prior trains with its kappa
    first = result.prior_activation_step
    assert all(r[5] == 0 for r in sel.rows if first is None or r[0] < first)
    # interrupted and resumed: the same selection and weights
    ck = tmp_path / "ck2.pt"
    fit(fresh_model(config), config, ccfg, data, params, 0, ck, progress=False, validation=val, stop_after_steps=8)
    resumed = fit(fresh_model(config, seed=5), config, ccfg, data, params, 0, ck, progress=False, validation=val)
    assert resumed.selection.best_step == sel.best_step and resumed.selection.rows == sel.rows
    for a, b in zip(resumed.model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


def test_candidates_need_the_prior_and_kappa() -> None:
    cfg = constraint_config(kappa=None)
    s = ConstraintState.initial(cfg, "rewo")
    assert not is_candidate(s, "rewo")
    assert not is_candidate(dataclasses.replace(s, prior_active=True), "rewo")  # probing: kappa not chosen
    assert is_candidate(dataclasses.replace(s, prior_active=True, kappa_sq=1.0), "rewo")
    assert is_candidate(ConstraintState.initial(cfg, "none"), "none")
    assert Selection.from_dict(Selection(rows=[[1, 2, 3, 4, 5, 1]], best_step=1).to_dict()).rows == [[1, 2, 3, 4, 5, 1]]


def test_diagnostics_and_the_warm_up_only_line() -> None:
    base = ConstraintState(1.0, 0.05, 500, True, 0.2, 0.17, 200)
    note = warmup_only_note(base, "vhp")
    assert note == ("REWO acted as a warm-up only: the constraint never bound (κ² = 0.2, C ended at 0.05): "
                    "C stayed below κ² at every λ update once the prior learned, so λ was never pushed above 1")
    bound = dataclasses.replace(base, updates=4, violated=1, lambda_peak=1.05, lambda_peak_step=300)
    assert warmup_only_note(bound, "vhp") is None
    d = constraint_diagnostics(bound, "vhp")
    assert (d["lambda_updates"], d["lambda_violated_share"], d["lambda_max"], d["lambda_max_step"]) == (4, 0.25, 1.05, 300)
    assert warmup_only_note(base, "iwae") is None and constraint_diagnostics(base, "iwae")["lambda_violated_share"] is None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_auto_keeps_the_constraint_reachable_and_trains_the_prior(tmp_path: Path, cmu_reference: Path,
                                                                       seed: int) -> None:
    # Real CMU trials of the shared reference set, prepared with params.yaml's prepare_mocap (val held
    # out), trained with params.yaml's train section (calibrated sigma, kappa: auto) for a short
    # run: every seed chooses kappa^2 above C_ae, meets it, and trains the prior.
    from pipelines.train.flow import train_one
    from preprocessing.mocap import MocapParams, prepare

    prepare(stage_params(MocapParams, "prepare_mocap", source=str(cmu_reference), seed=seed), tmp_path / "m.zarr",
            progress=False)
    params = stage_params(__import__("pipelines.params", fromlist=["TrainParams"]).TrainParams, "train",
                          epochs=40, val_every=50)
    result, metrics = train_one("mocap", "vhp", tmp_path / "m.zarr", tmp_path / "out", tmp_path / "ck.pt", params,
                                seed, progress=False)
    assert metrics is not None and metrics["prior_active"] and metrics["prior_activation_step"] is not None
    assert metrics["kappa_squared"] > metrics["c_ae"] > 0
    assert metrics["selected_step"] is not None and math.isfinite(metrics["val"]["elbo"])
    assert metrics["sigma"]["mode"].startswith("calibrated")
    assert metrics["lambda_updates"] == result.state.updates
    assert metrics["lambda_violated_share"] is None or 0.0 <= metrics["lambda_violated_share"] <= 1.0
    assert (metrics["rewo_note"] is None) == (result.state.violated > 0)
