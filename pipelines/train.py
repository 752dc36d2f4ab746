"""The training stage: a Prefect flow over plain, resumable training code.

The flow reads like the recipe it runs: open the zarr group -> build the model
from its config -> train with REWO (or GECO / the plain ELBO, as the model name
says) with a progress bar and atomic checkpoints -> write metrics and curves ->
publish the metrics as a Prefect artifact. The work lives in plain functions
(``fit`` and friends) that run without Prefect; tests call them directly.

Resumption: ``checkpoints/<dataset>/<model>/checkpoint.pt`` (kept outside the
DVC-managed model folder, which DVC clears before a stage runs) holds weights,
optimiser, RNG states, the constraint state, the epoch permutation and the
curves so far, tagged with a fingerprint of the config and the data. A rerun
with the same fingerprint continues at the checkpoint's step and, with the same
seed, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from pipelines.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    config_to_dict,
    load_payload,
)
from vhp_core import (
    ConstraintConfig,
    ConstraintState,
    ModelConfig,
    build_model,
    constraint_rule,
    train_step,
)


CURVE_COLUMNS = (
    "step", "epoch", "lr", "total", "reconstruction", "nll", "regulariser",
    "lambda", "c_hat", "constraint", "elbo", "prior_active",
)


# --------------------------------------------------------------------------- params

@dataclass(frozen=True)
class ModelParams:
    """Architecture knobs shared by every trained model (``train.model``)."""

    latent_dim: int = 2
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    gaussian_std: float = 1.0
    learn_std: bool = False
    zeta_dim: int = 2
    prior_hidden: tuple[int, ...] = (256, 256)
    k_inner: int = 16
    k_iw: int = 10
    n_pseudo: int = 100


@dataclass(frozen=True)
class ConstraintParams:
    """REWO/GECO constants (``train.constraint``); kappa is per data set."""

    alpha: float = 0.99
    nu: float = 0.01
    beta: float = 1.0
    lambda_min: float = 0.0
    lambda_max: float = 1e4
    lambda_init: float = 1.0


@dataclass(frozen=True)
class TrainParams:
    """The ``train:`` section of params.yaml."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    epochs: int
    batch_size: int
    lr: float
    kappa: dict[str, float]
    network: dict[str, str] = field(default_factory=dict)
    lr_schedule: str = "cosine"
    lr_min_factor: float = 0.1
    warmup_steps: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    precision: str = "fp32"
    max_nonfinite: int = 20
    max_train_samples: int = 0
    memory_budget_mb: int = 2048
    model: ModelParams = field(default_factory=ModelParams)
    constraint: ConstraintParams = field(default_factory=ConstraintParams)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every", "max_nonfinite"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_train_samples", "warmup_steps", "memory_budget_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"lr_schedule must be constant, cosine or step, got {self.lr_schedule!r}")
        if not 0.0 < self.lr_min_factor <= 1.0:
            raise ValueError(f"lr_min_factor must be in (0, 1], got {self.lr_min_factor}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name, kappa in self.kappa.items():
            if not kappa > 0:
                raise ValueError(f"kappa.{name} must be > 0, got {kappa}")
        for dataset in self.datasets:
            if dataset not in self.kappa:
                raise ValueError(f"kappa has no value for data set {dataset!r}")
        for name, net in self.network.items():
            if net not in ("mlp", "conv"):
                raise ValueError(f"network.{name} must be mlp or conv, got {net!r}")


@dataclass(frozen=True)
class BaseParams:
    """The ``base:`` section: what every stage shares."""

    seed: int = 0
    threads: int = 0  # 0 = all cores
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.device not in ("cpu", "auto", "cuda"):
            raise ValueError(f"device must be cpu, auto or cuda, got {self.device!r}")


def model_config(params: TrainParams, dataset: str, model: str, x_shape: tuple[int, ...],
                 likelihood: str) -> ModelConfig:
    """The frozen model config for one (data set, model) cell of the train matrix."""
    return ModelConfig(
        model=model,
        x_shape=tuple(int(s) for s in x_shape),
        likelihood=likelihood,
        network=params.network.get(dataset, "mlp"),
        precision=params.precision,
        **dataclasses.asdict(params.model),
    )


def constraint_config(params: TrainParams, dataset: str) -> ConstraintConfig:
    return ConstraintConfig(kappa=params.kappa[dataset], **dataclasses.asdict(params.constraint))


# --------------------------------------------------------------------------- pure rules

def learning_rate(step: int, total_steps: int, params: TrainParams) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then the schedule."""
    base = params.lr
    if params.warmup_steps and step < params.warmup_steps:
        return base * (step + 1) / params.warmup_steps
    if params.lr_schedule == "constant" or total_steps <= params.warmup_steps:
        return base
    progress = (step - params.warmup_steps) / max(1, total_steps - params.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    floor = params.lr_min_factor
    if params.lr_schedule == "cosine":
        return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    # step: drop to the floor in three equal decades of training
    drops = min(int(progress * 3), 3)
    return base * floor ** (drops / 3)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` fails clearly without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("base.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def set_threads(threads: int) -> int:
    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def set_determinism(seed: int) -> None:
    """Same seed and params -> same weights (CPU kernels in deterministic mode)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def fingerprint(config: ModelConfig, ccfg: ConstraintConfig, params: TrainParams,
                seed: int, data_id: str) -> str:
    blob = json.dumps(
        {
            "config": config_to_dict(config),
            "constraint": dataclasses.asdict(ccfg),
            "train": dataclasses.asdict(params),
            "seed": seed,
            "data": data_id,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- errors

class TrainingError(RuntimeError):
    """Training cannot go on (non-finite run, lock held, ...); never worth a retry."""


class NonFiniteTrainingError(TrainingError):
    pass


class RunLockedError(TrainingError):
    pass


# --------------------------------------------------------------------------- data

@dataclass
class TrainingData:
    """Training inputs as a tensor, or a zarr array streamed a window of chunks at a time.

    Streaming keeps memory flat as the data grow. A uniformly random batch would touch
    dozens of compressed chunks for one or two rows each, so a streamed epoch instead
    visits windows of ``window_rows`` consecutive rows in random order and shuffles
    rows within each window (``epoch_permutation``); a batch then reads at most two
    windows, each decompressed once and kept while batches draw from it.
    """

    x: Any                     # torch.Tensor (in memory) or a zarr array (streamed)
    n: int
    binarise: bool
    data_id: str
    streamed: bool = False
    window_rows: int = 0       # streamed only: rows read at once (whole chunks)
    _windows: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def epoch_permutation(self, gen: torch.Generator) -> torch.Tensor:
        if not self.streamed or self.window_rows <= 0:
            return torch.randperm(self.n, generator=gen)
        w = self.window_rows
        starts = torch.randperm(math.ceil(self.n / w), generator=gen) * w
        return torch.cat([s + torch.randperm(min(w, self.n - s), generator=gen) for s in starts.tolist()])

    def _window(self, index: int) -> torch.Tensor:
        if index not in self._windows:
            if len(self._windows) >= 2:  # a batch straddles at most two windows
                self._windows.pop(next(iter(self._windows)))
            lo = index * self.window_rows
            hi = min(lo + self.window_rows, self.n)
            self._windows[index] = torch.from_numpy(np.asarray(self.x[lo:hi], dtype=np.float32))
        return self._windows[index]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.streamed and self.window_rows <= 0:
            # no window: read exactly the rows asked for (sorted, as zarr wants)
            order = torch.argsort(idx)
            rows = np.asarray(self.x.get_orthogonal_selection((idx[order].numpy(),)), dtype=np.float32)
            xb = torch.empty((len(idx),) + rows.shape[1:], dtype=torch.float32)
            xb[order] = torch.from_numpy(rows)
        elif self.streamed:
            window = idx // self.window_rows
            xb = torch.empty((len(idx),) + tuple(self.x.shape[1:]), dtype=torch.float32)
            for w in torch.unique(window).tolist():
                sel = window == w
                xb[sel] = self._window(w)[idx[sel] - w * self.window_rows]
        else:
            xb = self.x[idx]
        if self.binarise:
            # dynamic binarisation: a fresh Bernoulli draw every time a batch is seen
            xb = torch.bernoulli(xb)
        return xb


def load_training_data(dataset: Any, params: TrainParams) -> TrainingData:
    """Training split of an opened zarr group (``preprocessing.store.Dataset``)."""
    arr = dataset.train.x
    n = int(arr.shape[0])
    if params.max_train_samples:
        n = min(n, params.max_train_samples)
    nbytes = n * int(np.prod(arr.shape[1:])) * 4
    binarise = dataset.likelihood == "bernoulli"
    data_id = _data_id(dataset)
    if nbytes > params.memory_budget_mb * 2**20:
        chunk_rows = int(arr.chunks[0])
        # about 16 MB a window (whole chunks, 8 of the usual 2 MB ones): two cached windows
        # keep memory flat, and a batch still mixes rows of many samples
        row_bytes = max(1, int(np.prod(arr.shape[1:])) * 4)
        window_chunks = max(1, (16 * 2**20) // (chunk_rows * row_bytes))
        return TrainingData(x=arr, n=n, binarise=binarise, data_id=data_id, streamed=True,
                            window_rows=chunk_rows * window_chunks)
    x = torch.from_numpy(np.asarray(arr[:n], dtype=np.float32))
    return TrainingData(x=x, n=n, binarise=binarise, data_id=data_id)


def _data_id(dataset: Any) -> str:
    attrs = dict(dataset.attrs)
    blob = json.dumps({k: attrs.get(k) for k in ("sources", "params", "schema_version")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the loop

@dataclass
class FitResult:
    model: torch.nn.Module
    state: ConstraintState
    curves: list[list[float]]
    step: int
    epochs: int
    resumed_from: int
    skipped_steps: int
    prior_activation_step: int | None
    last_epoch_terms: dict[str, float]
    seconds: float
    samples: int


def _checkpoint_payload(model, optimiser, state, config, ccfg, step, epoch, batch_index,
                        perm, gen, curves, fp, skipped, activation_step, epoch_sums) -> dict:
    return {
        "format": 1,
        "config": config_to_dict(config),
        "constraint_config": dataclasses.asdict(ccfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimiser": optimiser.state_dict(),
        "constraint_state": dataclasses.asdict(state),
        "step": step,
        "epoch": epoch,
        "batch_index": batch_index,
        "perm": perm,
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": gen.get_state(),
        "curves": curves,
        "fingerprint": fp,
        "skipped_steps": skipped,
        "prior_activation_step": -1 if activation_step is None else activation_step,
        "epoch_sums": epoch_sums,
    }


def _state_from_dict(data: dict[str, Any]) -> ConstraintState:
    return ConstraintState(**data)


def iterate_batches(perm: torch.Tensor, batch_size: int, start: int) -> Iterator[tuple[int, torch.Tensor]]:
    n_batches = math.ceil(len(perm) / batch_size)
    for b in range(start, n_batches):
        yield b, perm[b * batch_size:(b + 1) * batch_size]


def fit(
    model: torch.nn.Module,
    config: ModelConfig,
    ccfg: ConstraintConfig,
    data: TrainingData,
    params: TrainParams,
    seed: int,
    checkpoint_path: Path,
    progress: bool = True,
    stop_after_steps: int | None = None,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Train ``model`` on ``data``; resume from ``checkpoint_path`` when it matches.

    ``stop_after_steps`` ends the loop early (as an interruption would), leaving
    the last checkpoint behind; it exists for tests and for time-boxed runs.
    """
    t0 = time.perf_counter()
    fp = fingerprint(config, ccfg, params, seed, data.data_id)
    device = torch.device(device)
    model.to(device)
    # fused: one kernel for the whole update (Adam is a quarter of a small step on CPU)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr, fused=True)
    gen = torch.Generator().manual_seed(seed)
    state = ConstraintState.initial(ccfg, constraint_rule(config.model))
    step, epoch, batch_index = 0, 0, 0
    perm: torch.Tensor | None = None
    curves: list[list[float]] = []
    skipped = 0
    activation_step: int | None = 0 if state.prior_active else None
    epoch_sums: dict[str, float] = {}
    resumed_from = 0

    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.exists():
        try:
            ck = load_payload(checkpoint_path)
        except CheckpointError as err:
            raise TrainingError(f"{err}; delete it to start afresh") from err
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["state_dict"])
            model.to(device)
            optimiser.load_state_dict(ck["optimiser"])
            state = _state_from_dict(ck["constraint_state"])
            step, epoch, batch_index = int(ck["step"]), int(ck["epoch"]), int(ck["batch_index"])
            perm = ck["perm"]
            torch.set_rng_state(ck["torch_rng"])
            gen.set_state(ck["shuffle_rng"])
            curves = [list(row) for row in ck["curves"]]
            skipped = int(ck["skipped_steps"])
            activation_step = None if ck["prior_activation_step"] < 0 else int(ck["prior_activation_step"])
            epoch_sums = dict(ck["epoch_sums"])
            resumed_from = step
        else:
            print(f"{checkpoint_path}: config or data changed since this checkpoint; starting afresh")

    n_batches = math.ceil(data.n / params.batch_size)
    total_steps = params.epochs * n_batches
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step",
               desc=f"train {config.model}", mininterval=1.0, dynamic_ncols=True)
    consecutive_bad = 0
    samples = 0
    model.train()
    try:
        while epoch < params.epochs:
            if batch_index == 0 or perm is None:
                perm = data.epoch_permutation(gen)
                epoch_sums = {}
            for b, idx in iterate_batches(perm, params.batch_size, batch_index):
                lr = learning_rate(step, total_steps, params)
                for group in optimiser.param_groups:
                    group["lr"] = lr
                xb = data.batch(idx).to(device, non_blocking=True)
                new_state, terms = train_step(model, optimiser, xb, state, ccfg)
                samples += len(idx)
                batch_index = b + 1
                if not terms.finite:
                    skipped += 1
                    consecutive_bad += 1
                    if consecutive_bad >= params.max_nonfinite:
                        raise NonFiniteTrainingError(
                            f"{consecutive_bad} non-finite losses or gradients in a row at step {step}; "
                            f"training stopped, last good checkpoint kept at {checkpoint_path}"
                        )
                    continue
                consecutive_bad = 0
                state = new_state
                step += 1
                if activation_step is None and state.prior_active:
                    activation_step = step
                total = float(terms.total.item())
                values = {"total": total, "reconstruction": terms.reconstruction, "nll": terms.nll,
                          "regulariser": terms.regulariser, "elbo": terms.elbo}
                for key, value in values.items():
                    epoch_sums[key] = epoch_sums.get(key, 0.0) + float(value) * len(idx)
                epoch_sums["n"] = epoch_sums.get("n", 0.0) + len(idx)
                if step % params.log_every == 0 or step == total_steps:
                    curves.append([
                        step, epoch, lr, total, terms.reconstruction, terms.nll,
                        terms.regulariser, state.lambda_, state.c_hat, terms.constraint, terms.elbo,
                        float(state.prior_active),
                    ])
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(lam=f"{state.lambda_:.3g}", C=f"{state.c_hat:.3g}",
                                    prior="on" if state.prior_active else "off", refresh=False)
                if step % params.checkpoint_every == 0:
                    atomic_torch_save(checkpoint_path, _checkpoint_payload(
                        model, optimiser, state, config, ccfg, step, epoch, batch_index, perm, gen,
                        curves, fp, skipped, activation_step, epoch_sums))
                if stop_after_steps is not None and step >= stop_after_steps:
                    raise _Interrupted()
            epoch += 1
            batch_index = 0
    except _Interrupted:
        pass
    finally:
        bar.close()
    n = max(epoch_sums.get("n", 0.0), 1.0)
    last = {k: v / n for k, v in epoch_sums.items() if k != "n"}
    return FitResult(model=model, state=state, curves=curves, step=step, epochs=epoch,
                     resumed_from=resumed_from, skipped_steps=skipped,
                     prior_activation_step=activation_step, last_epoch_terms=last,
                     seconds=time.perf_counter() - t0, samples=samples)


class _Interrupted(Exception):
    pass


@torch.no_grad()
def evaluate_elbo(model: torch.nn.Module, dataset: Any, seed: int, batch_size: int = 512) -> dict[str, float]:
    """Mean loss terms over the test split, one z per point with a fixed seed.

    The same inputs and means as the evaluate stage (its fixed binarised test copy
    for Bernoulli data), so the two stages' numbers agree.
    """
    from pipelines.evaluate import mean_loss_terms, test_inputs

    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return mean_loss_terms(model, test_inputs(dataset), batch_size)
    finally:
        torch.set_rng_state(state)
        model.train()


def curves_tsv(curves: list[list[float]]) -> str:
    lines = ["\t".join(CURVE_COLUMNS)]
    for row in curves:
        cells = []
        for col, value in zip(CURVE_COLUMNS, row):
            cells.append(str(int(value)) if col in ("step", "epoch") else repr(float(value)))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def write_outputs(result: FitResult, config: ModelConfig, ccfg: ConstraintConfig,
                  params: TrainParams, seed: int, out_dir: Path, test_terms: dict[str, float],
                  dataset_name: str) -> dict[str, Any]:
    """model.pt, metrics.json, curves.tsv, curves.png and timing.json, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "dataset": dataset_name,
        "model": config.model,
        "steps": result.step,
        "epochs": result.epochs,
        "final_lambda": result.state.lambda_,
        "final_c_hat": result.state.c_hat,
        "kappa_squared": ccfg.kappa ** 2,
        "constraint_met": bool(result.state.c_hat <= ccfg.kappa ** 2),
        "prior_active": bool(result.state.prior_active),
        "prior_activation_step": result.prior_activation_step,
        "skipped_steps": result.skipped_steps,
        "train": {k: float(v) for k, v in result.last_epoch_terms.items()},
        "test": {k: float(v) for k, v in test_terms.items()},
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
    }
    atomic_torch_save(out_dir / "model.pt", payload)
    atomic_write_text(out_dir / "curves.tsv", curves_tsv(result.curves))
    plot_curves(result.curves, out_dir / "curves.png", title=f"{config.model} on {dataset_name}",
                kappa_squared=ccfg.kappa ** 2)
    atomic_write_json(out_dir / "metrics.json", metrics)
    # wall-clock figures live apart from metrics.json so that metrics are reproducible
    atomic_write_json(out_dir / "timing.json", {
        "seconds": result.seconds,
        "samples_per_second": result.samples / max(result.seconds, 1e-9),
        "resumed_from_step": result.resumed_from,
        "threads": torch.get_num_threads(),
    })
    return metrics


def plot_curves(curves: list[list[float]], path: Path, title: str, kappa_squared: float) -> None:
    """Training curves as a PNG (lambda, C_hat against kappa^2, loss terms)."""
    from pipelines.figures import new_figure, save_figure

    arr = np.asarray(curves, dtype=float).reshape(-1, len(CURVE_COLUMNS))
    col = {name: i for i, name in enumerate(CURVE_COLUMNS)}
    fig = new_figure(13, 3.4)
    axes = fig.subplots(1, 3)
    steps = arr[:, col["step"]]
    axes[0].plot(steps, arr[:, col["lambda"]], color="C3")
    axes[0].set_yscale("log")
    axes[0].set_title("λ")
    axes[1].plot(steps, arr[:, col["c_hat"]], label="Ĉ (moving average)")
    axes[1].plot(steps, arr[:, col["reconstruction"]], alpha=0.4, label="C (batch)")
    axes[1].axhline(kappa_squared, color="k", ls="--", lw=1, label="κ²")
    axes[1].set_title("reconstruction error")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, -arr[:, col["elbo"]], label="−ELBO")
    axes[2].plot(steps, arr[:, col["nll"]], label="−log p(x|z)")
    axes[2].plot(steps, arr[:, col["regulariser"]], label="KL or log q − F")
    axes[2].set_title("loss terms (per data point)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, Path(path))


def hold_run_lock(lock_dir: Path) -> FileLock:
    """One training run per output folder: a second one is refused, not interleaved."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / ".train.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        owner = (lock_dir / ".train.pid").read_text().strip() if (lock_dir / ".train.pid").exists() else "?"
        raise RunLockedError(
            f"{lock_dir}: another training run (pid {owner}) is writing here; refusing to start"
        ) from err
    (lock_dir / ".train.pid").write_text(str(os.getpid()))
    return lock


# --------------------------------------------------------------------------- Prefect

def _no_retry_for_training_errors(task, task_run, state) -> bool:
    try:
        state.result()
    except TrainingError:
        return False
    except Exception:  # noqa: BLE001 - anything else (I/O hiccups) is worth one more try
        return True
    return False


def _build_flow():
    from prefect import flow, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.cache_policies import NONE

    @task(name="open-dataset", retries=2, retry_delay_seconds=2, cache_policy=NONE)
    def open_data(data_path: str, params: TrainParams):
        from preprocessing.store import open_dataset

        dataset = open_dataset(Path(data_path))
        return dataset, load_training_data(dataset, params)

    @task(name="build-model", cache_policy=NONE)
    def build(config: ModelConfig, seed: int) -> torch.nn.Module:
        set_determinism(seed)
        return build_model(config)

    @task(name="fit", retries=1, retry_delay_seconds=1, cache_policy=NONE,
          retry_condition_fn=_no_retry_for_training_errors)
    def fit_task(model, config, ccfg, data, params, seed, checkpoint_path, progress, device):
        return fit(model, config, ccfg, data, params, seed, Path(checkpoint_path), progress=progress,
                   device=device)

    @task(name="write-outputs", cache_policy=NONE)
    def outputs(result, config, ccfg, params, seed, out_dir, dataset, dataset_name):
        test_terms = evaluate_elbo(result.model, dataset, seed)
        return write_outputs(result, config, ccfg, params, seed, Path(out_dir), test_terms, dataset_name)

    @flow(name="train", log_prints=True)
    def train_flow(dataset_name: str, model_name: str, data_path: str, out_dir: str,
                   checkpoint_dir: str, params: TrainParams, base: BaseParams,
                   progress: bool = True) -> dict[str, Any]:
        threads = set_threads(base.threads)
        print(f"training {model_name} on {dataset_name} with {threads} threads")
        lock = hold_run_lock(Path(checkpoint_dir))
        try:
            dataset, data = open_data(data_path, params)
            config = model_config(params, dataset_name, model_name, dataset.x_shape, dataset.likelihood)
            ccfg = constraint_config(params, dataset_name)
            model = build(config, base.seed)
            checkpoint_path = str(Path(checkpoint_dir) / "checkpoint.pt")
            device = resolve_device(base.device)
            result = fit_task(model, config, ccfg, data, params, base.seed, checkpoint_path, progress,
                              str(device))
            metrics = outputs(result, config, ccfg, params, base.seed, out_dir, dataset, dataset_name)
        finally:
            lock.release()
        rows = "\n".join(
            f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in _flat(metrics).items()
        )
        create_markdown_artifact(
            key=f"train-{dataset_name}-{model_name}".replace("_", "-"),
            markdown=f"# {model_name} on {dataset_name}\n\n| metric | value |\n|---|---|\n{rows}\n",
            description=f"final training metrics of {model_name} on {dataset_name}",
        )
        return metrics

    return train_flow


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


@functools.cache
def train_flow():
    """The Prefect ``train`` flow (built on first use so that importing is cheap)."""
    return _build_flow()


def run_training(dataset_name: str, model_name: str, data_path: Path, out_dir: Path,
                 checkpoint_dir: Path, params: TrainParams, base: BaseParams,
                 progress: bool = True) -> dict[str, Any]:
    """Run the flow; a successful run removes its resumption checkpoint."""
    metrics = train_flow()(dataset_name, model_name, str(data_path), str(out_dir),
                           str(checkpoint_dir), params, base, progress)
    (Path(checkpoint_dir) / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
