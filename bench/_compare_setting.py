"""The pythae comparison's setting: budgets, rows, and the model both libraries build.

The model is params.yaml's (the `train:` section, read by the pipeline's strict reader and
turned into vhp_core configs by `pipelines.train.flow.model_config` / `constraint_config`)
with the overrides of pythae's published MNIST setting (`OVERRIDES`): a 40-d latent,
784-300-300 MLPs, batch 100, K_inner = k_iw. Everything else (activation, k_iw, the
VampPrior's pseudo-inputs, the prior's widths, kappa and REWO's constants, the learning
rate) is params.yaml's. `resolve` needs the pipeline; a `Setting` it returns is plain data
(JSON), so bench/gpu.py can carry one to a machine without the pipeline.

Used by bench/compare_pythae.py and bench/gpu.py (bench/_gpu_runs.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DATASET = "fashion_mnist"  # params.yaml's per-data-set entries (network, kappa) of this data set
X_SHAPE = (1, 28, 28)
LIKELIHOOD = "bernoulli"
MODELS = ("vae", "iwae", "vamp", "vhp", "vhp-geco")
# pythae's MNIST setting on top of params.yaml's train section (dotted keys, as `dvc exp run -S train.<key>`)
OVERRIDES: dict[str, Any] = {
    "batch_size": 100,
    "precision": "fp32",  # the rows name their precision (fp32, bf16) themselves
    "model.latent_dim": 40,
    "model.hidden": [300, 300],
    "model.zeta_dim": 40,
    "model.k_inner": 10,  # = k_iw, so that vhp and iwae are compared per step at the same K
}


@dataclass(frozen=True)
class Budget:
    """The work a run does (not the model: that is the `Setting`); stored in the JSON beside the figures."""

    epochs: int  # training epochs of every trained row
    train_n: int  # training images used (0 = all 60,000)
    trainer_epochs: int  # epochs of the timing-only pythae BaseTrainer rows
    subset_n: int  # test points of the shared log-likelihood subset
    subset_samples: int  # S on the subset
    full_test_n: int  # test points of our full-test evaluation (0 = all 10,000)
    full_test_samples: int  # S on the full test set
    k_eval: int  # K_eval inner zeta samples for the hierarchical prior
    chunk: int  # our log_likelihood chunk (latent samples per pass); 0 = the library default
    full_test_models: tuple[str, ...]  # our fp32 rows evaluated on the full test set
    # torch threads per worker. 1 on a loaded machine: with 2 OpenMP threads on 2 busy cores
    # every parallel region waits for a descheduled thread, measured 40x below the anchors.
    threads: int
    seed: int  # shuffles, binarisation and initial weights of this bench


FULL = Budget(
    epochs=3, train_n=20000, trainer_epochs=2, subset_n=30, subset_samples=5000,
    full_test_n=0, full_test_samples=5000, k_eval=8, chunk=0, full_test_models=("vae", "iwae", "vhp"),
    threads=2, seed=0,
)
QUICK = Budget(
    epochs=2, train_n=2000, trainer_epochs=2, subset_n=4, subset_samples=500,
    full_test_n=20, full_test_samples=500, k_eval=8, chunk=0, full_test_models=("vae", "iwae", "vhp"),
    threads=2, seed=0,
)


@dataclass(frozen=True)
class Setting:
    """The resolved model and constraint of a run: plain data, from params.yaml with `overrides`."""

    overrides: dict[str, Any]  # what the bench changed in params.yaml's train section
    models: dict[str, dict[str, Any]]  # model name -> vhp_core.ModelConfig fields (fp32)
    constraint: dict[str, Any]  # vhp_core.ConstraintConfig fields for this run's length
    lr: float
    batch_size: int
    auto_max_fraction: float
    n_train: int  # the run length the constraint was resolved for: epochs x ceil(n_train / batch)
    epochs: int

    def model_config(self, model: str, precision: str = "fp32"):
        from vhp_core import ModelConfig

        return ModelConfig(**{**self.models[model], "precision": precision})

    def constraint_config(self):
        from vhp_core import ConstraintConfig

        return ConstraintConfig(**self.constraint)

    def record(self) -> dict[str, Any]:
        """The model fields of the results' `budget` record (the keys BENCHMARKS.md renders)."""
        m = self.models["vhp"]
        return {"lr": self.lr, "batch_size": self.batch_size, "latent_dim": m["latent_dim"], "hidden": list(m["hidden"]),
                "activation": m["activation"], "k_iw": m["k_iw"], "n_pseudo": m["n_pseudo"], "zeta_dim": m["zeta_dim"],
                "prior_hidden": list(m["prior_hidden"]), "k_inner": m["k_inner"], "kappa": self.constraint["kappa"],
                "auto_max_fraction": self.auto_max_fraction}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Setting:
        return cls(**json.loads(text))


def resolve(epochs: int, n_train: int, extra: dict[str, Any] | None = None, path: Path | str | None = None) -> Setting:
    """The setting from params.yaml (or `path`) with OVERRIDES and `extra`, for `epochs` epochs over `n_train` images."""
    from _params import PARAMS, constraint_config, jsonable, model_config, train_params

    overrides = {**OVERRIDES, "epochs": epochs, **(extra or {})}
    params = train_params(overrides, path or PARAMS)
    models = {m: dataclasses.asdict(model_config(params, DATASET, m, X_SHAPE, LIKELIHOOD)) for m in MODELS}
    constraint = dataclasses.asdict(constraint_config(params, DATASET, n_train))
    return Setting(overrides=jsonable(overrides), models=models, constraint=constraint, lr=params.lr,
                   batch_size=params.batch_size, auto_max_fraction=params.constraint.auto_max_fraction,
                   n_train=n_train, epochs=epochs)


@dataclass(frozen=True)
class Run:
    """One row: which library, model, driver (hand loop or pythae's BaseTrainer) and precision."""

    library: str  # 'ours' | 'pythae'
    model: str  # our model name: 'vae' | 'iwae' | 'vamp' | 'vhp' | 'vhp-geco'
    driver: str = "loop"  # 'loop' | 'trainer' (pythae BaseTrainer, timing only)
    precision: str = "fp32"
    compiled: bool = False  # ours: the network bodies under torch.compile (inductor) for training

    @property
    def key(self) -> str:
        return f"{self.library}/{self.model}/{self.driver}/{self.precision}" + ("/compiled" if self.compiled else "")

    @property
    def evaluated(self) -> bool:
        return self.driver == "loop"


PYTHAE_NAMES = {"vae": "VAE", "iwae": "IWAE", "vamp": "VAMP"}
EVAL_SEED = 7  # every evaluation (both libraries, both paths) starts from this seed

RUNS = (
    Run("pythae", "vae"),
    Run("ours", "vae"),
    Run("pythae", "iwae"),
    Run("ours", "iwae"),
    Run("pythae", "vamp"),
    Run("ours", "vamp"),
    Run("ours", "vhp"),
    Run("ours", "vhp-geco"),
    Run("ours", "vae", precision="bf16"),
    Run("ours", "vhp", precision="bf16"),
    Run("ours", "vae", compiled=True),
    Run("ours", "iwae", compiled=True),
    Run("pythae", "vae", driver="trainer"),
    Run("pythae", "iwae", driver="trainer"),
    Run("pythae", "vamp", driver="trainer"),
)


# --------------------------------------------------------------------------- pythae's side


def _activation(name: str) -> nn.Module:
    return {"tanh": nn.Tanh, "relu": nn.ReLU}[name]()


def _stack(sizes: tuple[int, ...], activation: str) -> nn.Sequential:
    # Linear, act, Linear, act, Linear: the same indices as vhp_core's mlp, so the
    # state_dicts match one to one and weights can be copied across.
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


def pythae_networks(setting: Setting, x_shape: tuple[int, ...]):
    """pythae Encoder/Decoder classes with our layer sizes (784-300-300-40, tanh)."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    data_dim = math.prod(x_shape)
    m = setting.models["vae"]
    hidden, latent, activation = tuple(m["hidden"]), m["latent_dim"], m["activation"]

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = _stack((data_dim, *hidden, 2 * latent), activation)

        def forward(self, x: torch.Tensor):
            mu, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = _stack((latent, *reversed(hidden), data_dim), activation)

        def forward(self, z: torch.Tensor):
            # pythae's 'bce' loss takes probabilities, hence the sigmoid.
            probs = torch.sigmoid(self.net(z))
            return ModelOutput(reconstruction=probs.reshape(z.shape[0], *x_shape))

    return Encoder(), Decoder()


def build_pythae(run: Run, setting: Setting, seed: int, x_shape: tuple[int, ...] = X_SHAPE):
    """The pythae model of `run`, its encoder/decoder initialised with our model's weights."""
    from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig

    from vhp_core import build_model

    torch.manual_seed(seed)
    ours = build_model(setting.model_config(run.model, "fp32"))
    encoder, decoder = pythae_networks(setting, x_shape)
    encoder.net.load_state_dict(ours.encoder.body[1].state_dict())
    decoder.net.load_state_dict(ours.decoder.body.state_dict())
    m = setting.models[run.model]
    common = dict(input_dim=x_shape, latent_dim=m["latent_dim"], reconstruction_loss="bce")
    if run.model == "vae":
        return VAE(VAEConfig(**common), encoder=encoder, decoder=decoder)
    if run.model == "iwae":
        return IWAE(IWAEConfig(**common, number_samples=m["k_iw"]), encoder=encoder, decoder=decoder)
    if run.model == "vamp":
        cfg = VAMPConfig(**common, number_components=m["n_pseudo"], linear_scheduling_steps=0)
        return VAMP(cfg, encoder=encoder, decoder=decoder)
    raise ValueError(f"pythae has no counterpart of {run.model!r}")


def load_setting(path: Path) -> Setting:
    """A setting written by `Setting.to_json` (bench/gpu.py --write-setting)."""
    try:
        return Setting.from_json(Path(path).read_text())
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"{path}: not a setting written by bench/gpu.py --write-setting ({type(err).__name__}: {err})") \
            from None
