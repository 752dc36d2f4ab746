"""The evaluate stage: numbers and figures of one trained model on its data set's test split.

A recipe of three passes that flows one way: load the model, ask it everything once
(`record.query_record`, pass 1), compute the numbers from that record
(`numbers.evaluation_numbers`, pass 2, NumPy only), draw the figures from it
(`figures.draw_figures`, pass 3), write. Writes eval/<dataset>/<model>/:
- metrics.json: test log-likelihood by importance sampling (METHOD section 5,
  vhp_core.estimators) with S, K_eval and the number of points beside it, the
  ELBO on the same points and samples, for the hierarchical prior the same
  estimate at a second K_eval (has it converged?), the ELBO terms over the whole
  test split, the final lambda of training, and the paper's qualitative claims
  as scale-free numbers (definitions in the README's Evaluation section);
- interpolation.json: the per-pair numbers behind the interpolation medians;
- record.npz: the record the numbers and figures were made from (`record.load_record`
  reads it back, so figures can be redrawn without the model);
- timing.json: the wall time (kept out of metrics.json, which DVC compares);
- latent_map.png, interpolation.png, interpolation_frames.png,
  reconstructions.png, prior_samples.png.

The figures and measurements follow Klushyn et al. 2019 (figures 4-6) and
Chen et al. 2018 ("Metrics for deep generative models"). Every random choice
(test subsets, endpoint pairs, prior samples, importance samples) is seeded by
``EvaluateParams.seed``; the global torch RNG state is restored afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pipelines.checkpoint import atomic_write_json, load_model
from pipelines.errors import EvaluationError
from pipelines.evaluate.figures import draw_figures
from pipelines.evaluate.numbers import evaluation_numbers
from pipelines.evaluate.record import query_record, save_record
from pipelines.params import EvaluateParams
from vhp_core.networks import set_precision
from vhp_core.precision import evaluation_precision


def _final_constraint_state(payload: dict[str, Any]) -> tuple[float | None, float | None]:
    state = payload.get("constraint_state") or {}
    if not isinstance(state, dict):
        state = vars(state)
    lam = state.get("lambda_", state.get("lambda"))
    c_hat = state.get("c_hat")
    return (None if lam is None else float(lam)), (None if c_hat is None else float(c_hat))


def evaluate_model(
    model_dir: Path, data_path: Path, out_dir: Path, params: EvaluateParams, progress: bool = True
) -> dict[str, Any]:
    """Evaluate models/<dataset>/<model>/model.pt on the test split of data_path; write out_dir.

    Returns the metrics written to out_dir/metrics.json (results only; the wall time goes to timing.json).
    """
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
    attrs = dict(dataset.attrs)
    name = str(getattr(dataset, "name", attrs.get("dataset", data_path.stem)))
    stand_in = bool(attrs.get("stand_in", False))
    source = str((attrs.get("params") or {}).get("source", ""))
    lambda_, c_hat = _final_constraint_state(payload)
    info = {
        "header": {"dataset": name, "model": config.model, "stand_in_data": stand_in, "data_source": source,
                   "eval_device": eval_device.type, "eval_precision": eval_precision,
                   "trained_precision": config.precision, "trained_device": str(payload.get("device", "cpu"))},
        # Stand-in data (the procedural head, the embedded single trial) say so in every artefact.
        "title": f"{config.model} on {name}" + (f" (stand-in data: {source or 'embedded'})" if stand_in else ""),
        "final_lambda": lambda_, "final_c_hat": c_hat,
    }
    stages = tqdm(total=4, desc=f"evaluate {config.model}/{name}", disable=not progress)

    def done(what: str) -> None:
        stages.set_postfix_str(what)
        stages.update(1)

    rng = np.random.default_rng(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    rng_state = torch.get_rng_state()
    torch.manual_seed(params.seed)
    try:
        record = query_record(model, dataset, params, rng, generator, info, progress)
        done("model queried")
        metrics, pair_rows = evaluation_numbers(record)
        done("numbers")
        draw_figures(record, out_dir)
        done("figures")
        save_record(out_dir / "record.npz", record)
        atomic_write_json(out_dir / "interpolation.json", {
            "graph_nodes": params.graph_nodes, "graph_k": params.graph_k,
            "line_steps": params.line_steps, "segment_steps": params.segment_steps, "pairs": pair_rows})
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_json(out_dir / "timing.json", {"seconds": round(time.perf_counter() - t0, 2)})
        done("written")
    finally:
        stages.close()
        torch.set_rng_state(rng_state)
    return metrics
