"""The evaluate stage: numbers and figures of one trained model on its data set's test split.

Writes eval/<dataset>/<model>/:
- metrics.json: test log-likelihood by importance sampling (METHOD section 5,
  vhp_core.estimators) with S, K_eval and the number of points beside it, the
  ELBO on the same points and samples, for the hierarchical prior the same
  estimate at a second K_eval (has it converged?), the ELBO terms over the whole
  test split, the final lambda of training, and the paper's qualitative claims
  as scale-free numbers (pipelines/evaluate/latent_metrics.py; definitions in the
  README's Evaluation section);
- interpolation.json: the per-pair numbers behind the interpolation medians;
- timing.json: the wall time (kept out of metrics.json, which DVC compares);
- latent_map.png, interpolation.png, interpolation_frames.png,
  reconstructions.png, prior_samples.png (drawn by pipelines/evaluate/figures.py).

Latent spaces of more than two dimensions are drawn in the plane of their first
two principal components (through the mean of the encoded test data); the MF
heat map is then that of the decoder restricted to this plane. Every number
is computed in the full latent space.

The figures and measurements follow Klushyn et al. 2019 (figures 4-6) and
Chen et al. 2018 ("Metrics for deep generative models"). Every random choice
(test subsets, endpoint pairs, prior samples, importance samples) is seeded by
``EvaluateParams.seed``; the global torch RNG state is restored afterwards.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pipelines.evaluate import latent
from pipelines.checkpoint import atomic_write_json, load_model
from pipelines.errors import EvaluationError
from pipelines.params import EvaluateParams
from vhp_core import HierarchicalPrior
from vhp_core.estimators import log_likelihood_and_elbo
from vhp_core.geometry import magnification_factor
from vhp_core.networks import evaluation_precision, set_precision

# Label drawn as colour on the latent map, in order of preference (mocap, faces, image data).
COLOUR_LABELS = ("motion", "azimuth", "label", "identity")


# --------------------------------------------------------------------------------------
# Data access
# --------------------------------------------------------------------------------------


def _rows(array: Any, index: np.ndarray | None = None) -> np.ndarray:
    """Rows of a zarr or NumPy array as float32 (all rows, or those of a sorted index)."""
    if index is None:
        return np.asarray(array[:], dtype=np.float32)
    if isinstance(array, np.ndarray):
        return array[index].astype(np.float32)
    # Orthogonal selection with a sorted index reads each zarr chunk once.
    return np.asarray(array.oindex[np.asarray(index)], dtype=np.float32)


def _label(split: Any, name: str) -> np.ndarray | None:
    labels = getattr(split, "labels", {}) or {}
    return np.asarray(labels[name][:]) if name in labels else None


def _label_info(attrs: dict[str, Any], name: str) -> tuple[str, list[str] | None]:
    """(kind, class names or None) of a label from the group's ``labels`` attribute."""
    info = (attrs.get("labels") or {}).get(name) or {}
    classes = info.get("classes")
    return str(info.get("kind", "categorical")), [str(c) for c in classes] if isinstance(classes, list) else None


def test_inputs(dataset: Any) -> np.ndarray:
    """The test split as float32 rows, as every test-set number is computed on."""
    # Bernoulli likelihoods need binary data; the group carries a fixed seeded binarisation.
    if dataset.likelihood == "bernoulli":
        binarised = (getattr(dataset.test, "extra", None) or {}).get("x_binarised")
        if binarised is not None:
            return _rows(binarised)
    return _rows(dataset.test.x)


# --------------------------------------------------------------------------------------
# Model queries (no gradients, batched)
# --------------------------------------------------------------------------------------


@torch.no_grad()
def encode_means(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """E_q[z|x] for every row of x: (N, latent)."""
    parts = [model.encode(torch.from_numpy(x[i:i + batch_size]))[0] for i in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()


@torch.no_grad()
def decode_means(model: torch.nn.Module, z: np.ndarray, batch_size: int) -> np.ndarray:
    """Flat decoder means of latent points: (N, D) float64."""
    dtype = next(model.parameters()).dtype
    z_t = torch.as_tensor(np.asarray(z), dtype=dtype)
    parts = [model.decoder_mean_flat(chunk) for chunk in torch.split(z_t, batch_size)]
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, model.config.data_dim))


@torch.no_grad()
def mean_loss_terms(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> dict[str, float]:
    """Batch-size-weighted means of the loss terms at lambda = 1 over x."""
    sums = {"elbo": 0.0, "reconstruction": 0.0, "nll": 0.0, "regulariser": 0.0}
    device = next(model.parameters()).device
    for i in range(0, len(x), batch_size):
        batch = torch.from_numpy(x[i:i + batch_size]).to(device)
        terms = model.loss(batch)
        for key in sums:
            sums[key] += float(getattr(terms, key)) * len(batch)
    return {k: v / max(len(x), 1) for k, v in sums.items()}


def estimate_log_likelihood(
    model: torch.nn.Module, x: np.ndarray, n_samples: int, n_inner: int | None, batch_size: int,
    generator: torch.Generator | None = None, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x), ELBO) per row from the same S importance samples (vhp_core.estimators), float64: (N,) each."""
    ll, elbo = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch_size), desc="log-likelihood", disable=not progress, leave=False):
            batch = torch.from_numpy(x[i:i + batch_size])
            est = log_likelihood_and_elbo(model, batch, n_samples, n_inner=n_inner, generator=generator)
            ll.append(est.log_px.double().cpu().numpy())
            elbo.append(est.elbo.double().cpu().numpy())
    return (np.concatenate(ll), np.concatenate(elbo)) if ll else (np.zeros(0), np.zeros(0))


# --------------------------------------------------------------------------------------
# The latent plane that figures are drawn in
# --------------------------------------------------------------------------------------


# Floats that one vmap(jacfwd) chunk may hold in decoder outputs and their tangents (8 MB in
# float32); conv decoders keep several times more in activations, so this bounds memory.
MF_CHUNK_FLOATS = 2**21


def mf_chunk_size(model: torch.nn.Module, requested: int) -> int:
    """Latent points per vmap(jacfwd) call: at most ``requested``, fewer for large outputs."""
    per_point = int(model.config.data_dim) * (int(model.config.latent_dim) + 1)
    return max(8, min(requested, MF_CHUNK_FLOATS // max(per_point, 1)))


def _mf(model: torch.nn.Module, z: np.ndarray, chunk: int) -> np.ndarray:
    dtype = next(model.parameters()).dtype
    return magnification_factor(model.decoder_mean_flat, torch.as_tensor(z, dtype=dtype),
                                mf_chunk_size(model, chunk)).double().numpy()


# --------------------------------------------------------------------------------------
# Figures of decoded data
# --------------------------------------------------------------------------------------


def _subset(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if k <= 0 or k >= n else np.sort(rng.choice(n, k, replace=False))


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _final_constraint_state(payload: dict[str, Any]) -> tuple[float | None, float | None]:
    state = payload.get("constraint_state") or {}
    if not isinstance(state, dict):
        state = vars(state)
    lam = state.get("lambda_", state.get("lambda"))
    c_hat = state.get("c_hat")
    return (None if lam is None else float(lam)), (None if c_hat is None else float(c_hat))


def _mean_se(values: np.ndarray) -> tuple[float, float | None]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def _test_set_numbers(model: torch.nn.Module, payload: dict[str, Any], x_test: np.ndarray,
                      params: EvaluateParams, rng: np.random.Generator, generator: torch.Generator,
                      progress: bool) -> dict[str, Any]:
    """Test log-likelihood with S, K_eval and the number of points beside it, the ELBO on the same
    points and samples, the hierarchical prior's LL at a second K_eval, the loss terms, the final state.
    """
    config = model.config
    terms = mean_loss_terms(model, x_test, params.batch_size)
    ll_index = _subset(len(x_test), params.ll_points, rng)
    hierarchical = isinstance(model.prior, HierarchicalPrior)
    k_eval = params.ll_inner_samples if hierarchical else None
    log_px, elbo = estimate_log_likelihood(model, x_test[ll_index], params.ll_samples, k_eval, params.batch_size,
                                           generator, progress)
    lambda_, c_hat = _final_constraint_state(payload)
    ll_mean, ll_se = _mean_se(log_px)
    elbo_mean, elbo_se = _mean_se(elbo)
    out: dict[str, Any] = {
        "latent_dim": int(config.latent_dim),
        "n_test": int(len(x_test)),
        "test_log_likelihood": ll_mean,
        "test_log_likelihood_stderr": ll_se,
        "ll_samples": int(params.ll_samples),
        "ll_inner_samples": k_eval,
        "ll_n_points": int(len(log_px)),
        "ll_elbo": elbo_mean,
        "ll_elbo_stderr": elbo_se,
        # the Gaussian decoder's sigma these numbers were scored with (None: Bernoulli)
        "ll_sigma": None if getattr(model.likelihood, "log_std", None) is None
        else float(model.likelihood.log_std.detach().double().mean().exp()),
        **{k: float(v) for k, v in terms.items()},
        "final_lambda": lambda_,
        "final_c_hat": c_hat,
    }
    if hierarchical:
        # The same points at a second K_eval, with fresh samples: has the inner estimate converged?
        check, _ = estimate_log_likelihood(model, x_test[ll_index], params.ll_samples,
                                           params.ll_inner_samples_check, params.batch_size, generator, progress)
        diff, diff_se = _mean_se(check - log_px)
        out.update({
            "test_log_likelihood_check": float(check.mean()),
            "ll_inner_samples_check": int(params.ll_inner_samples_check),
            "ll_check_diff": diff,
            "ll_check_diff_stderr": diff_se,
            "ll_check_agrees": None if diff_se is None else bool(abs(diff) <= 2.0 * diff_se),
        })
    return out


def evaluate_model(
    model_dir: Path, data_path: Path, out_dir: Path, params: EvaluateParams, progress: bool = True
) -> dict[str, Any]:
    """Evaluate models/<dataset>/<model>/model.pt on the test split of data_path; write out_dir.

    Returns the metrics written to out_dir/metrics.json (results only; the wall time goes to timing.json).
    """
    from pipelines.evaluate.figures import Figures
    from pipelines.evaluate.latent_metrics import interpolate_pairs, interpolation_numbers, latent_numbers
    from preprocessing.store import open_dataset

    t0 = time.perf_counter()
    model_dir, data_path, out_dir = Path(model_dir), Path(data_path), Path(out_dir)
    model, payload = load_model(model_dir / "model.pt")
    model.eval()
    # The precision of the device evaluating (the CPU here), not of the one that trained:
    # a bf16 model from a GPU runs fp32 on a CPU without native bf16 matmuls.
    eval_device = next(model.parameters()).device
    eval_precision = evaluation_precision(model.config.precision, eval_device)
    set_precision(model, eval_precision)
    dataset = open_dataset(data_path)
    config = model.config
    if tuple(config.x_shape) != tuple(dataset.x_shape):
        raise EvaluationError(f"{model_dir}: the model was trained on data of shape {tuple(config.x_shape)} but "
                              f"{data_path} holds data of shape {tuple(dataset.x_shape)}; evaluate it on the "
                              "data set it was trained on")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    rng_state = torch.get_rng_state()
    torch.manual_seed(params.seed)
    attrs = dict(dataset.attrs)
    name = str(getattr(dataset, "name", attrs.get("dataset", data_path.stem)))
    stand_in = bool(attrs.get("stand_in", False))
    source = str((attrs.get("params") or {}).get("source", ""))
    # Stand-in data (the procedural head, the embedded single trial) say so in every artefact.
    title = f"{config.model} on {name}" + (f" (stand-in data: {source or 'embedded'})" if stand_in else "")
    stages = tqdm(total=6, desc=f"evaluate {config.model}/{name}", disable=not progress)

    def done(what: str) -> None:
        stages.set_postfix_str(what)
        stages.update(1)

    try:
        x_test = test_inputs(dataset)
        metrics: dict[str, Any] = {"dataset": name, "model": config.model, "stand_in_data": stand_in,
                                   "data_source": source, "eval_device": eval_device.type,
                                   "eval_precision": eval_precision, "trained_precision": config.precision,
                                   "trained_device": str(payload.get("device", "cpu"))}
        metrics.update(_test_set_numbers(model, payload, x_test, params, rng, generator, progress))
        done("log-likelihood")
        mu_test = encode_means(model, x_test, params.batch_size)
        latent_metrics, scale = latent_numbers(model, dataset, x_test, mu_test, params, rng)
        metrics.update(latent_metrics)
        done("latent measurements")
        draw = Figures(model, dataset, mu_test, params, rng, out_dir, title, mf_scale=scale.mf_median)
        draw.latent_map()
        done("latent map")
        pair_labels = draw.colour_values if draw.categorical else None
        pairs = latent.endpoint_pairs(len(mu_test), params.interp_pairs, rng, pair_labels)
        records, nodes = interpolate_pairs(model, mu_test, pairs, params, generator, scale)
        metrics.update(interpolation_numbers(records))
        atomic_write_json(out_dir / "interpolation.json", {
            "graph_nodes": params.graph_nodes, "graph_k": params.graph_k,
            "line_steps": params.line_steps, "segment_steps": params.segment_steps,
            "pairs": [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()
                       if k not in ("path_z", "graph_z", "line_z")} for r in records],
        })
        draw.interpolation(records, nodes)
        done("interpolation")
        draw.samples(x_test, generator)
        done("samples")
        # Strict JSON: a non-finite number (e.g. a diverged model's likelihood) is written as null.
        metrics = {k: _finite(v) if isinstance(v, float) else v for k, v in metrics.items()}
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_json(out_dir / "timing.json", {"seconds": round(time.perf_counter() - t0, 2)})
        done("written")
    finally:
        stages.close()
        torch.set_rng_state(rng_state)
    return metrics
