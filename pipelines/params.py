"""params.yaml -> frozen dataclasses, once, at the entry point: every stage's params record.

Each section of ``params.yaml`` maps to one frozen dataclass here (the
``prepare_*`` records live beside their preprocessing code, ``report:``'s beside the
report in ``pipelines.report.params``, so the report imports no model code). The records have no
defaults: params.yaml is the only source of values, so a key deleted from the file
is an error, never silently filled in (``pipelines.params_file`` reads strictly).
Value checks (negative sizes, kappa <= 0, ...) live in ``__post_init__``.
vhp_core's ``ModelConfig`` and ``ConstraintConfig`` are built from these records by
``pipelines.train.flow.model_config`` and ``constraint_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, make_dataclass
from typing import Any, Literal, get_args, get_type_hints

from pipelines.params_file import (  # noqa: F401  (re-exported: the reader beside the records)
    DEFAULT_PARAMS,
    ParamsError,
    dotted_keys,
    from_dict,
    load_section,
    read_yaml,
    section,
)
from vhp_core.choices import (
    CALIBRATIONS,
    NETWORK_NAMES,
    PRECISION_SETTINGS,
    VARIANTS,
    ActivationName,
    Calibration,
    NetworkName,
    PrecisionSetting,
    Variant,
)
from vhp_core.config import ConstraintConfig
from vhp_core.registry import MODEL_NAMES

# The enumerated settings that only the pipeline reads; the model's own are vhp_core.choices.
Device = Literal["cpu", "auto", "cuda"]
LrSchedule = Literal["constant", "cosine", "step"]
CalibrationFinal = Literal["train", "val"]  # sigma of training's error | refitted to the kept model's val error
TaskRunner = Literal["local", "dask"]
DEVICES: tuple[str, ...] = get_args(Device)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
CALIBRATION_FINALS: tuple[str, ...] = get_args(CalibrationFinal)
TASK_RUNNERS: tuple[str, ...] = get_args(TaskRunner)

AUTO = "auto"        # train.kappa.<dataset>: auto -> chosen from the data (METHOD §4)
LEARNED = "learned"  # train.gaussian_std.<dataset>: learned -> a learned scalar sigma
CALIBRATED = "calibrated"  # train.gaussian_std.<dataset>: sigma^2 = the mean squared error (train.calibration)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class BaseParams:
    """``base:``: what every stage shares."""

    seed: int
    threads: int   # torch threads; 0 = all cores
    device: Device

    def __post_init__(self) -> None:
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _check(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")


@dataclass(frozen=True)
class ModelParams:
    """``train.model``: the architecture fields of vhp_core.ModelConfig that do not come from the data."""

    latent_dim: int
    hidden: tuple[int, ...]
    activation: ActivationName
    zeta_dim: int
    prior_hidden: tuple[int, ...]
    k_inner: int
    k_iw: int
    n_pseudo: int


def _check_constraint(self: Any) -> None:
    _check(self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}")
    _check(0.0 < self.auto_max_fraction < 1.0,
           f"auto_max_fraction must be in (0, 1), got {self.auto_max_fraction}")


# ``train.constraint`` holds vhp_core.ConstraintConfig's constants (METHOD §4), named, typed and
# documented there once, in the config's order. What the config takes from elsewhere is not here:
# kappa (``train.kappa.<dataset>``) and auto_max_steps, which stands here as ``auto_max_fraction``
# (the initial phase of ``kappa: auto`` lasts at most this fraction of the run's steps;
# ``pipelines.train.flow.constraint_config`` turns it into steps).
_constraint_hints = get_type_hints(ConstraintConfig)
ConstraintParams = make_dataclass(
    "ConstraintParams",
    [("auto_max_fraction", float) if f.name == "auto_max_steps" else (f.name, _constraint_hints[f.name])
     for f in fields(ConstraintConfig) if f.name != "kappa"],
    frozen=True,
    namespace={"__post_init__": _check_constraint, "__module__": __name__,
               "__doc__": "``train.constraint``: vhp_core.ConstraintConfig's constants, kappa aside, "
                          "with auto_max_fraction for auto_max_steps."},
)


@dataclass(frozen=True)
class CalibrationParams:
    """``train.calibration``: the calibrated Gaussian decoder (``gaussian_std: calibrated``)."""

    variant: Calibration
    per_dim: bool   # one sigma per data dimension
    final: CalibrationFinal

    def __post_init__(self) -> None:
        _check(self.variant in CALIBRATIONS, f"variant must be one of {CALIBRATIONS}, got {self.variant!r}")
        _check(self.final in CALIBRATION_FINALS, f"final must be one of {CALIBRATION_FINALS}, got {self.final!r}")


@dataclass(frozen=True)
class TrainParams:
    """``train:``: the training stage (and every caller of ``pipelines.recipe.train_one``)."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    epochs: int
    batch_size: int
    lr: float
    lr_schedule: LrSchedule
    lr_min_factor: float
    warmup_steps: int
    checkpoint_every: int
    log_every: int
    precision: PrecisionSetting
    max_nonfinite: int
    max_train_samples: int
    memory_budget_mb: int
    require_constraint: bool
    val_every: int   # steps between evaluations of the val split's bound; 0 = none
    kappa: dict[str, float | str]
    gaussian_std: dict[str, float | str]
    calibration: CalibrationParams
    network: dict[str, NetworkName]
    model: ModelParams
    constraint: ConstraintParams  # type: ignore[valid-type]  (built by make_dataclass above)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every", "max_nonfinite"):
            _check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_train_samples", "warmup_steps", "memory_budget_mb", "val_every"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _check(0.0 < self.lr_min_factor <= 1.0, f"lr_min_factor must be in (0, 1], got {self.lr_min_factor}")
        _check(self.precision in PRECISION_SETTINGS,
               f"precision must be one of {PRECISION_SETTINGS}, got {self.precision!r}")
        for model in self.models:
            _check(model in MODEL_NAMES, f"models: unknown model {model!r} (known: {', '.join(MODEL_NAMES)})")
        for name, kappa in self.kappa.items():
            _check(kappa == AUTO or (isinstance(kappa, float) and kappa > 0),
                   f"kappa.{name} must be 'auto' or a number > 0, got {kappa!r}")
        for name, std in self.gaussian_std.items():
            _check(std in (LEARNED, CALIBRATED) or (isinstance(std, float) and std > 0),
                   f"gaussian_std.{name} must be 'calibrated', 'learned' or a number > 0, got {std!r}")
        for name, net in self.network.items():
            _check(net in NETWORK_NAMES, f"network.{name} must be one of {NETWORK_NAMES}, got {net!r}")
        for table in ("kappa", "gaussian_std", "network"):
            for dataset in self.datasets:
                _check(dataset in getattr(self, table), f"{table} has no value for data set {dataset!r}")


@dataclass(frozen=True)
class EvaluateParams:
    """``evaluate:``. For numbers to compare with the literature: ll_samples 5000, ll_points 0 (all)."""

    seed: int
    batch_size: int        # encoding, decoding and ELBO batches
    ll_samples: int        # S, importance samples per test point
    ll_inner_samples: int  # K_eval, zeta samples per z for the hierarchical prior's p(z)
    ll_inner_samples_check: int  # a second K_eval on the same points: has the estimate converged?
    ll_points: int         # test points in the log-likelihood estimate; 0 = all
    max_train_points: int  # encoded training points for kNN accuracy and R^2
    grid_size: int         # MF heat map resolution (grid_size x grid_size)
    mf_chunk: int          # at most this many latent points per vmap(jacfwd) call
    mf_points: int         # test points and bounding-box samples for the MF fraction
    mf_quantile: float
    knn_k: int
    graph_nodes: int       # prior samples in the interpolation graph
    graph_k: int           # neighbours per node
    interp_pairs: int      # seeded endpoint pairs of test points
    line_steps: int        # points on the decoded straight line
    segment_steps: int     # points per graph edge when the path is decoded
    n_frames: int          # decoded frames shown along an interpolation
    n_reconstructions: int
    n_samples: int         # prior samples shown
    max_plot_points: int   # encoded test points drawn on the latent map

    def __post_init__(self) -> None:
        positive = ("batch_size", "ll_samples", "ll_inner_samples", "ll_inner_samples_check", "grid_size",
                    "mf_chunk", "mf_points", "knn_k", "graph_nodes", "graph_k", "interp_pairs", "segment_steps", "n_frames",
                    "n_reconstructions", "n_samples", "max_plot_points", "max_train_points")
        for name in positive:
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.ll_points >= 0, f"ll_points must be >= 0 (0 = all test points), got {self.ll_points}")
        _check(self.grid_size >= 2 and self.line_steps >= 2, "grid_size and line_steps must be >= 2")
        _check(0.0 < self.mf_quantile < 1.0, f"mf_quantile must be in (0, 1), got {self.mf_quantile}")
        _check(self.graph_k < self.graph_nodes,
               f"graph_k ({self.graph_k}) must be smaller than graph_nodes ({self.graph_nodes})")


@dataclass(frozen=True)
class RetrainParams:
    """``retrain:``: the champion/challenger job."""

    dataset: str
    model: str
    metric: str
    higher_is_better: bool
    min_improvement: float
    command: tuple[str, ...]
    registry: str
    timeout_seconds: int

    def __post_init__(self) -> None:
        _check(bool(self.command), "command must not be empty")
        _check(self.min_improvement >= 0, f"min_improvement must be >= 0, got {self.min_improvement}")
        _check(self.timeout_seconds > 0, f"timeout_seconds must be positive, got {self.timeout_seconds}")
        _check(self.model in MODEL_NAMES, f"model: unknown model {self.model!r}")


@dataclass(frozen=True)
class SweepParams:
    """``sweep:``: the grid (data set x model x kappa x seed) and where it runs."""

    datasets: tuple[str, ...]
    kappa: tuple[float | str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    task_runner: TaskRunner
    dask_address: str    # scheduler address (tcp://host:8786); empty = a LocalCluster
    n_workers: int       # LocalCluster worker processes (one thread each)
    out: str
    epochs: int | None   # None (null in params.yaml) = train.epochs

    def __post_init__(self) -> None:
        for name in ("datasets", "kappa", "models", "seeds"):
            values = getattr(self, name)
            _check(bool(values), f"{name} must list at least one value")
            _check(len(set(values)) == len(values), f"{name} lists a value twice: {list(values)}")
        for k in self.kappa:
            _check(k == AUTO or (isinstance(k, float) and k > 0), f"kappa values must be 'auto' or > 0, got {k!r}")
        for model in self.models:
            _check(model in MODEL_NAMES, f"models: unknown model {model!r}")
        _check(self.task_runner in TASK_RUNNERS, f"task_runner must be one of {TASK_RUNNERS}, got {self.task_runner!r}")
        _check(self.n_workers >= 1, f"n_workers must be >= 1, got {self.n_workers}")
        _check(self.epochs is None or self.epochs >= 1,
               f"epochs must be >= 1 or null (= train.epochs), got {self.epochs}")
        _check(bool(self.out), "out must name a folder")
