"""bench/heldout_gap: the ELBO split, the prior's log density at codes, the capacity count, the summary."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import heldout_gap  # noqa: E402
from heldout_gap import code_terms, decompose, log_prior, prior_capacity, summarise, training_units  # noqa: E402

from tests.strategies import seeds  # noqa: E402
from builders import model_config  # noqa: E402
from vhp_core import build_model  # noqa: E402
from vhp_core.estimators import log_likelihood_and_elbo  # noqa: E402
from vhp_core.gaussian import gaussian_kl  # noqa: E402


def _model(name: str, seed: int, prior_hidden: tuple[int, ...] = (8,)) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = model_config(model=name, x_shape=(3,), likelihood="gaussian", latent_dim=2, hidden=(8,),
                          zeta_dim=3, prior_hidden=prior_hidden, k_inner=4, gaussian_std=0.7, std_calibration="none")
    return build_model(config).eval()


@settings(deadline=None, max_examples=3)
@given(seed=seeds)
def test_the_split_sums_to_the_estimators_elbo(seed: int) -> None:
    """reconstruction + prior part is the ELBO (F with K zetas) that vhp_core's estimator gives, within its noise."""
    model = _model("vhp", seed)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed + 1))
    terms = code_terms(model, x.numpy(), 3000, (4,), torch.Generator().manual_seed(seed + 2))
    split = decompose(terms, 4)
    assert split["elbo"] == pytest.approx(split["reconstruction"] + split["prior_part"])
    per_code = terms["log_px"] + terms["log_pz_4"] - terms["log_q"]  # (codes, points)
    reference = log_likelihood_and_elbo(model, x, 3000, n_inner=4, generator=torch.Generator().manual_seed(seed + 3))
    # both are means over the same 4 points of S-sample estimates: their variances add
    se = math.sqrt(per_code.var(0).mean() / 3000 / 4 + float(reference.elbo_se.square().mean()) / 4)
    assert abs(split["elbo"] - float(reference.elbo.mean())) < 5 * se + 1e-6


@settings(deadline=None, max_examples=3)
@given(seed=seeds)
def test_the_prior_part_of_an_exact_prior_is_minus_the_kl(seed: int) -> None:
    """For N(0, I), E_q[log p(z) - log q(z|x)] = -KL(q || N(0, I)) in closed form."""
    model = _model("iwae", seed)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed + 1))
    terms = code_terms(model, x.numpy(), 4000, (16,), torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        kl = float(gaussian_kl(*model.encode(x)).mean())
    per_code = terms["log_pz_16"] - terms["log_q"]
    se = float(per_code.std()) / math.sqrt(per_code.size)
    assert abs(decompose(terms, 16)["prior_part"] + kl) < 5 * se + 1e-6


def test_the_prior_density_at_codes_converges_in_the_inner_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """log_prior (chunked) approaches the closed-form log p(z) of a linear-Gaussian prior as K grows."""
    monkeypatch.setattr(heldout_gap, "PRIOR_ROWS", 64)  # several chunks
    model = _model("vhp", 0, prior_hidden=())
    with torch.no_grad():
        model.prior.p_z_given_zeta.net.body.weight.mul_(2.0)  # a prior away from N(0, I)
        z = model.prior.sample(200, torch.Generator().manual_seed(1))
        exact = model.prior.exact_log_prob(z).double()
    gen = torch.Generator().manual_seed(2)
    err = {k: float((exact - log_prior(model, z, k, gen)).mean()) for k in (1, 16, 512)}
    assert err[1] > err[16] > err[512] >= -0.02  # a lower bound that tightens with K
    assert err[512] < 0.1


def test_prior_capacity_counts_both_conditionals() -> None:
    # zeta 3 -> 8 -> 2 * latent 2 and latent 2 -> 8 -> 2 * zeta 3, weights and biases
    p, q = (3 * 8 + 8) + (8 * 4 + 4), (2 * 8 + 8) + (8 * 6 + 6)
    assert prior_capacity(_model("vhp", 0)) == {"p_z_given_zeta": p, "q_zeta_given_z": q, "prior_parameters": p + q}
    assert prior_capacity(_model("iwae", 0))["prior_parameters"] == 0


def test_training_units_counts_whole_sequences() -> None:
    ds = SimpleNamespace(attrs={"split": {"unit": "trial"}},
                         train=SimpleNamespace(x=np.zeros((6, 3)), labels={"trial": np.array([0, 0, 4, 4, 4, 7])}))
    assert training_units(ds) == {"unit": "trial", "train_units": 3, "train_frames": 6}
    ds.train.labels = {}
    assert training_units(ds)["train_units"] is None


def _rec(seed: int, gap: float, test_recon: float) -> dict:
    split = {"log_pz": 0.0, "reconstruction": test_recon, "prior_part": -1.0, "elbo": test_recon - 1.0, "c": 0.1}
    return {"seed": seed, "prior_gap": gap, "train_K128": split, "test_K128": split,
            **{k: 0.0 for k in heldout_gap.FIGURES if k != "prior_gap"}}


def test_summary_pairs_seeds_against_iwae() -> None:
    recs = {"vhp": [_rec(0, 1.0, -5.0), _rec(1, 2.0, -7.0)],
            "iwae": [_rec(2, 9.0, 0.0), _rec(1, 0.5, -6.0), _rec(0, 0.5, -6.0)]}  # seeds out of order
    s = summarise(recs)
    assert s["vhp"]["prior_gap"]["mean"] == pytest.approx(1.5)
    diff = s["vhp"]["minus"]["iwae"]
    assert diff["prior_gap"]["mean"] == pytest.approx(1.0) and diff["prior_gap"]["n"] == 2  # seed 2 has no pair
    assert diff["test_reconstruction"]["mean"] == pytest.approx(0.0)
