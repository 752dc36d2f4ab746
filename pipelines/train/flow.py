"""The training stage: one recipe, ``train_one``, and the Prefect flow that runs it.

``train_one`` is the only way a model gets trained: open the zarr group -> build
the model from its config -> ``fit`` (REWO, GECO or the plain bound, as the model
name says) -> test terms -> write outputs. The Prefect flow (``vhp train``), the
sweep and the DDP launcher all call it; they differ only in the ``StepHooks``
and the folders they pass.

The flow reads like that recipe: take the run lock, train (a task retried once
on I/O trouble, never on a training error), publish the metrics as a Prefect
artifact. Tasks live at module level so tests reach their ``.fn``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.logging import get_run_logger

from pipelines.train.data import TrainingData, load_training_data
from pipelines.train.fit import FitResult, StepHooks, fit, total_steps
from pipelines.train.outputs import constraint_report, test_terms, write_outputs
from pipelines.params import AUTO, CALIBRATED, LEARNED, BaseParams, TrainParams
from pipelines.errors import ConstraintNotMetError, worth_a_retry
from pipelines.train.validation import calibrate_sigma_on, validation_for
from pipelines.runtime import resolve_device, run_lock, set_determinism, set_threads
from vhp_core import ConstraintConfig, ModelConfig, build_model
from vhp_core.precision import resolve_precision


def model_config(params: TrainParams, dataset: str, model: str, x_shape: tuple[int, ...],
                 likelihood: str, device: torch.device | str = "cpu") -> ModelConfig:
    """The frozen model config for one (data set, model) cell of the train matrix.

    ``train.precision: auto`` resolves for ``device``: bf16 where it multiplies bf16 natively.
    """
    std = params.gaussian_std[dataset]
    return ModelConfig(
        model=model,
        x_shape=tuple(int(s) for s in x_shape),
        likelihood=likelihood,
        network=params.network[dataset],
        precision=resolve_precision(params.precision, device),
        gaussian_std=1.0 if std in (LEARNED, CALIBRATED) else float(std),
        learn_std=std == LEARNED,
        std_calibration=params.calibration.variant if std == CALIBRATED else "none",
        std_per_dim=params.calibration.per_dim if std == CALIBRATED else False,
        **dataclasses.asdict(params.model),
    )


def constraint_config(params: TrainParams, dataset: str, n_train: int) -> ConstraintConfig:
    """kappa of the data set (None for ``auto``) and the constants of ``train.constraint``.

    With ``kappa: auto`` the initial phase is capped at ``auto_max_fraction`` of the run's steps.
    """
    constants = dataclasses.asdict(params.constraint)
    fraction = constants.pop("auto_max_fraction")
    kappa = params.kappa[dataset]
    return ConstraintConfig(
        kappa=None if kappa == AUTO else float(kappa),
        auto_max_steps=max(1, math.floor(fraction * total_steps(n_train, params))),
        **constants,
    )


def open_training_set(data_path: Path, params: TrainParams) -> tuple[Any, TrainingData]:
    """The zarr group (schema checked) and its training split."""
    from preprocessing.store import open_dataset

    dataset = open_dataset(Path(data_path))
    return dataset, load_training_data(dataset, params)


def train_one(
    dataset_name: str,
    model_name: str,
    data_path: Path,
    out_dir: Path,
    checkpoint_path: Path,
    params: TrainParams,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
    hooks: Callable[[torch.nn.Module, TrainingData], StepHooks] | None = None,
    stop_after_steps: int | None = None,
    on_progress: Callable[[int, int, Any], None] | None = None,
) -> tuple[FitResult, dict[str, Any] | None]:
    """Open -> build -> fit -> write; returns the fit and the metrics (None where this process writes nothing).

    ``hooks(model, data)`` gives the StepHooks of data-parallel training (one process without it).

    Raises ConstraintNotMetError, before writing anything, when ``train.require_constraint``
    is set and the prior never trained: on every process of a data-parallel run together
    (``StepHooks.finish`` decides it collectively).
    """
    dataset, data = open_training_set(data_path, params)
    device_ = resolve_device(device)
    config = model_config(params, dataset_name, model_name, dataset.x_shape, dataset.likelihood, device_)
    ccfg = constraint_config(params, dataset_name, data.n)
    set_determinism(seed)
    model = build_model(config)
    model.to(device_)
    step_hooks = StepHooks() if hooks is None else hooks(model, data)
    validation = validation_for(dataset, params.val_every, seed, data.n)
    result = fit(model, config, ccfg, data, params, seed, Path(checkpoint_path), progress=progress,
                 stop_after_steps=stop_after_steps, device=device_, hooks=step_hooks, on_progress=on_progress,
                 validation=validation)
    if stop_after_steps is not None and result.step < total_steps(data.n, params):
        return result, None
    # Every process decides, and data-parallel ones decide together, before any writes:
    # no process is left waiting in a collective that another one has left.
    warning = constraint_report(result, model_name)
    refuse = bool(warning and params.require_constraint)
    if step_hooks.finish is not None:
        refuse = step_hooks.finish(result.model, result.state, refuse)
    if refuse:
        raise ConstraintNotMetError(f"{model_name} on {dataset_name}: {warning or 'the constraint was never met'} "
                                    "(train.require_constraint is true; nothing written)")
    if not step_hooks.main:
        return result, None
    if validation is not None and params.calibration.final == "val":
        calibrate_sigma_on(result.model, validation.x, seed)  # sigma^2 = the kept model's val error
    terms = test_terms(result.model, dataset, seed)  # on the training device, in the training precision
    evaluated = None if validation is None else {
        "val": validation.terms(result.model), "train_eval": validation.terms(result.model, validation.train_x)}
    metrics = write_outputs(result, config, ccfg, params, seed, Path(out_dir), terms, dataset_name,
                            device=device_.type, evaluated=evaluated)
    return result, metrics


# --------------------------------------------------------------------------- Prefect

def _no_retry_for_training_errors(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - sorted by pipelines.errors.worth_a_retry
        return worth_a_retry(err)
    return False


@task(name="train", retries=1, retry_delay_seconds=1, cache_policy=NONE,
      retry_condition_fn=_no_retry_for_training_errors)
def train_task(dataset_name: str, model_name: str, data_path: str, out_dir: str, checkpoint_path: str,
               params: TrainParams, base: BaseParams, progress: bool) -> dict[str, Any]:
    artifact = create_progress_artifact(progress=0.0, key=f"train-progress-{dataset_name}-{model_name}".replace(
        "_", "-"), description=f"training {model_name} on {dataset_name}: percent of the run's steps")

    def report(step: int, steps: int, state: Any) -> None:
        update_progress_artifact(artifact, progress=100.0 * step / steps,
                                 description=f"step {step}/{steps}: lambda {state.lambda_:.3g} "
                                             f"(max {state.lambda_peak:.3g} at step {state.lambda_peak_step}; "
                                             f"violated at {state.violated}/{state.updates} updates), "
                                             f"C_hat {state.c_hat:.3g}, kappa^2 "
                                             f"{'-' if state.kappa_sq is None else format(state.kappa_sq, '.3g')}, "
                                             f"prior {'on' if state.prior_active else 'off'}")

    _, metrics = train_one(dataset_name, model_name, Path(data_path), Path(out_dir), Path(checkpoint_path),
                           params, base.seed, base.device, progress, on_progress=report)
    assert metrics is not None
    return metrics


def metrics_markdown(title: str, metrics: dict[str, Any]) -> str:
    """A metrics dict as a markdown table, with the constraint warning on top when there is one."""
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in _flat(metrics).items())
    warning = metrics.get("constraint_warning")
    banner = f"> **Warning:** {warning}\n\n" if warning else ""
    if metrics.get("rewo_note"):
        banner += f"> {metrics['rewo_note']}\n\n"
    return f"# {title}\n\n{banner}| metric | value |\n|---|---|\n{rows}\n"


@task(name="publish-metrics", cache_policy=NONE)
def publish_task(dataset_name: str, model_name: str, metrics: dict[str, Any]) -> None:
    warning = metrics.get("constraint_warning")
    if warning:
        get_run_logger().warning("%s on %s: %s", model_name, dataset_name, warning)
    create_markdown_artifact(
        key=f"train-{dataset_name}-{model_name}".replace("_", "-"),
        markdown=metrics_markdown(f"{model_name} on {dataset_name}", metrics),
        description=f"final training metrics of {model_name} on {dataset_name}",
    )


@flow(name="train", log_prints=True)
def train_flow(dataset_name: str, model_name: str, data_path: str, out_dir: str, checkpoint_dir: str,
               params: TrainParams, base: BaseParams, progress: bool = True) -> dict[str, Any]:
    threads = set_threads(base.threads)
    print(f"training {model_name} on {dataset_name} with {threads} threads")
    with run_lock(Path(checkpoint_dir)):
        metrics = train_task(dataset_name, model_name, data_path, out_dir,
                             str(Path(checkpoint_dir) / "checkpoint.pt"), params, base, progress)
    publish_task(dataset_name, model_name, metrics)
    return metrics


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def run_training(dataset_name: str, model_name: str, data_path: Path, out_dir: Path,
                 checkpoint_dir: Path, params: TrainParams, base: BaseParams,
                 progress: bool = True) -> dict[str, Any]:
    """Run the flow; the data are checked before anything is created, and a successful run
    removes its resumption checkpoint."""
    from preprocessing.store import open_dataset

    open_dataset(Path(data_path))  # a broken group fails here, before the lock or any folder exists
    metrics = train_flow(dataset_name, model_name, str(data_path), str(out_dir), str(checkpoint_dir),
                         params, base, progress)
    (Path(checkpoint_dir) / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
