"""Model selection on the val split: its bound every ``train.val_every`` steps, the best model kept.

The val split (whole trials/segments, or samples/identities, held out of the training
side by the prepare stage) is scored with the same means as the test split
(``pipelines.queries.mean_loss_terms``: one z per point at a fixed seed, lambda = 1,
the model in eval mode, so a calibrated sigma is the stored one and is not updated).
A model is a candidate only once its bound is the model's own bound: the prior trains
and, with ``kappa: auto``, kappa has been chosen. The candidate with the highest val
ELBO is kept in memory (and in the resumption checkpoint) and becomes the run's model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.queries import mean_loss_terms
from vhp_core import ConstraintState

VAL_COLUMNS = ("step", "train_elbo", "val_elbo", "train_reconstruction", "val_reconstruction", "candidate")


@dataclass
class Selection:
    """The val history and the best candidate so far (what a checkpoint carries)."""

    rows: list[list[float]] = field(default_factory=list)  # VAL_COLUMNS
    best_elbo: float = -math.inf
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_constraint: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "best_elbo": self.best_elbo, "best_step": self.best_step,
                "best_state": self.best_state, "best_constraint": self.best_constraint}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Selection:
        if not d:
            return cls()
        return cls(rows=[list(r) for r in d["rows"]], best_elbo=float(d["best_elbo"]), best_step=d["best_step"],
                   best_state=d["best_state"], best_constraint=d["best_constraint"])


def is_candidate(state: ConstraintState, rule: str) -> bool:
    """The model's bound is its own: the prior trains and kappa (if constrained) is chosen."""
    return state.prior_active and (rule == "none" or state.kappa_sq is not None)


@dataclass
class Validation:
    """The val inputs, a fixed subset of the training inputs of the same size (so that the
    train and val curves are the same estimate on different points), and how often to score them."""

    x: np.ndarray
    train_x: np.ndarray
    every: int
    seed: int
    batch_size: int = 512

    @torch.no_grad()
    def terms(self, model: torch.nn.Module, x: np.ndarray | None = None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            return mean_loss_terms(model, self.x if x is None else x, self.batch_size)
        finally:
            torch.set_rng_state(rng)
            model.train(was_training)

    def due(self, step: int, last: bool) -> bool:
        return self.every > 0 and (step % self.every == 0 or last)

    def consider(self, sel: Selection, step: int, model: torch.nn.Module, state: ConstraintState, rule: str) -> None:
        """Score the val split (and the training subset) now; keep the model if it is the best candidate so far."""
        val, train = self.terms(model), self.terms(model, self.train_x)
        candidate = is_candidate(state, rule)
        sel.rows.append([step, train.get("elbo", math.nan), val["elbo"], train.get("reconstruction", math.nan),
                         val["reconstruction"], float(candidate)])
        if candidate and math.isfinite(val["elbo"]) and val["elbo"] > sel.best_elbo:
            sel.best_elbo, sel.best_step = val["elbo"], step
            sel.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            sel.best_constraint = copy.deepcopy(state.__dict__)


def _binarised(x: np.ndarray, likelihood: str) -> np.ndarray:
    if likelihood == "bernoulli":
        return (np.random.default_rng(0).random(x.shape) < x).astype(np.float32)
    return x


def validation_for(dataset: Any, every: int, seed: int, n_train: int) -> Validation | None:
    """The Validation of an opened group (None without a val split or with every = 0): the val
    split and min(n_val, n_train) seeded random rows of the first n_train training rows, as float32 (Bernoulli: a fixed binarisation)."""
    split = getattr(dataset, "val", None)
    if split is None or every <= 0:
        return None
    x = _binarised(np.asarray(split.x[:], dtype=np.float32), dataset.likelihood)
    rows = np.sort(np.random.default_rng(seed).choice(n_train, size=min(len(x), n_train), replace=False))
    train_rows = np.asarray(dataset.train.x.get_orthogonal_selection((rows,)), dtype=np.float32)
    train_x = _binarised(train_rows, dataset.likelihood)
    return Validation(x=x, train_x=train_x, every=every, seed=seed)


def val_tsv(rows: list[list[float]]) -> str:
    lines = ["\t".join(VAL_COLUMNS)]
    for row in rows:
        lines.append("\t".join(str(int(v)) if c == "step" else repr(float(v)) for c, v in zip(VAL_COLUMNS, row)))
    return "\n".join(lines) + "\n"


@torch.no_grad()
def calibrate_sigma_on(model: torch.nn.Module, x: np.ndarray, seed: int, batch_size: int = 512) -> bool:
    """Set a calibrated Gaussian decoder's stored sigma^2 to its optimum on x (the val split):
    the mean squared error of x against the decoder mean at z ~ q(z|x), one sigma or one per
    dimension as the decoder has. Returns False (and changes nothing) for other decoders.

    The training error understates the error on unseen trials when the model overfits; a sigma
    fitted to it turns that gap into tens of nats of test likelihood. The val split is held out
    of training, so the test split stays untouched.
    """
    from vhp_core.likelihoods import calibrated_variance

    lik = getattr(model, "likelihood", None)
    if getattr(lik, "calibration", "none") == "none":
        return False
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total, n = None, 0
    for i in range(0, len(x), batch_size):
        batch = model.flatten_data(torch.from_numpy(x[i:i + batch_size]).to(device))
        mu, logvar = model.encode(batch.reshape(-1, *model.config.x_shape))
        eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype).to(device)
        out = model.decoder(mu + eps * torch.exp(0.5 * logvar)).reshape(len(batch), -1)
        sq = (batch - out).double().square().sum(0)  # (D,)
        total = sq if total is None else total + sq
        n += len(batch)
    assert total is not None
    per_dim = total / n
    var = calibrated_variance(per_dim.unsqueeze(0), lik.per_dim)
    lik.log_std.copy_((0.5 * torch.log(var)).to(lik.log_std.dtype))
    model.train(was_training)
    return True
