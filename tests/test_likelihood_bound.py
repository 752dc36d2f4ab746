"""The log-likelihood estimate sits above the ELBO, point by point, on a (briefly) trained model.

log p(x) >= ELBO for every x, and the importance-sampling estimate with S samples is, in
expectation, at least the one-sample estimate, which is the ELBO (Burda et al. 2016). So
per test point: LL(S = 400) >= ELBO - 3 se, with the ELBO computed independently of the
estimator (from the model's encoder, decoder and prior, 300 fresh samples) and se its
standard error over those samples. A bug in the estimator's weights or normalisation
(a wrong log S, a sign of log q) would put LL below the ELBO by nats.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import model_config
from vhp_core import build_model
from vhp_core.estimators import log_likelihood, log_likelihood_and_elbo


def _trained(name: str, seed: int = 0, steps: int = 200) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny model fitted for a few hundred steps at lambda = 1 to points on two noisy circles in 5-D."""
    torch.manual_seed(seed)
    t = torch.rand(400) * 2 * torch.pi
    which = (torch.rand(400) < 0.5).float()[:, None]
    basis = torch.randn(2, 5)
    x = (torch.stack([torch.cos(t), torch.sin(t)], 1) * (1 + which)) @ basis + 0.1 * torch.randn(400, 5)
    model = build_model(model_config(model=name, x_shape=(5,), likelihood="gaussian", hidden=(32,), prior_hidden=(16,),
                                     k_inner=8, k_iw=4, gaussian_std=0.3, std_calibration="none"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = x[torch.randint(len(x), (64,))]
        opt.zero_grad()
        model.objective_parts(batch).total(1.0).backward()
        opt.step()
    return model.eval(), x


@torch.no_grad()
def _elbo_per_point(model: torch.nn.Module, x: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) over n one-sample ELBOs per row: log p(x|z) + log p(z) - log q(z|x), z ~ q."""
    z, log_q, _, _ = model.posterior_sample(x, n)  # (n, B, L), (n, B)
    rows = x.shape[0]
    out = model.decoder_output(z.reshape(n * rows, -1)).reshape(n, rows, -1)
    log_px = model.likelihood.log_prob(model.flatten_data(x), out)
    log_pz = model.log_prior(z.reshape(n * rows, -1), model.config.k_inner).reshape(n, rows)
    w = (log_px + log_pz - log_q).double().numpy()
    return w.mean(0), w.std(0, ddof=1) / np.sqrt(n)


@pytest.mark.parametrize("name", ["vhp", "iwae"])
def test_log_likelihood_is_at_least_the_elbo_at_every_point(name: str) -> None:
    model, x = _trained(name)
    points = x[:24]
    ll = log_likelihood(model, points, 400, n_inner=model.config.k_inner,
                        generator=torch.Generator().manual_seed(1)).numpy()
    torch.manual_seed(2)
    elbo, se = _elbo_per_point(model, points, 300)
    assert np.all(np.isfinite(ll)) and np.all(se > 0)
    assert np.all(ll >= elbo - 3 * se), np.c_[ll, elbo, se][ll < elbo - 3 * se]
    assert ll.mean() > elbo.mean()  # the gap is real on average, not only within noise


def test_the_elbo_of_the_estimator_is_the_mean_of_its_own_log_weights() -> None:
    """log_likelihood_and_elbo's ELBO agrees with the independent per-point ELBO within their errors,
    and one importance sample makes the log-likelihood estimate the ELBO itself."""
    model, x = _trained("vhp", steps=100)
    points = x[:16]
    est = log_likelihood_and_elbo(model, points, 300, n_inner=8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    elbo, se = _elbo_per_point(model, points, 300)
    gap = np.abs(est.elbo.numpy() - elbo)
    assert np.all(gap <= 4 * np.sqrt(se**2 + est.elbo_se.numpy() ** 2))
    one = log_likelihood_and_elbo(model, points, 1, n_inner=8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(one.log_px, one.elbo)
    assert torch.all(est.log_px >= est.elbo)  # Jensen, sample by sample: logmeanexp >= mean
