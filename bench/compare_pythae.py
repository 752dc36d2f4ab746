"""Benchmark: vhp_core against pythae 0.1.2 on the same model, data and machine.

Data: dynamically binarised Fashion-MNIST from the zarr group of the prepare stage
(`vhp prepare fashion_mnist --out data/processed/fashion_mnist.zarr`, run here when the
group is missing). Every training batch is a fresh Bernoulli draw of the grey levels;
test log-likelihoods use the group's fixed binarised test set `test/x_binarised`.

Model, identical in both libraries: MLP encoder 784-300-300-(2 x 40) and decoder
40-300-300-784 with tanh, Bernoulli likelihood, a 40-d latent; Adam, the same learning
rate, batch 100 and number of epochs. The pythae side gets its own Encoder/Decoder
modules (plain nn.Linear/nn.Tanh stacks, decoder ending in a sigmoid as pythae's 'bce'
loss expects) whose initial weights are copied from our freshly built model, so both
start from the same point. Rows: pythae VAE, IWAE (K = 10) and VAMP against our
vae, iwae (k_iw = 10), vamp, vhp (REWO) and vhp-geco, plus two levers measured as rows of
their own: bf16 autocast (vae, vhp) and torch.compile of the network bodies (vae, iwae).

Method of measurement:
- Each row runs in its own spawned worker process, so its peak RSS (the kernel's VmHWM,
  reset after set-up and before evaluation) is its own. The driver lets one worker at a time train one
  epoch, round after round (A B C ... then ... C B A), so machine drift hits all rows
  alike; throughput is the median over the epochs, training samples per second of wall
  time (CPU seconds are recorded too).
- pythae is timed two ways: the same hand loop as ours calling
  `model({"data": x}).loss`, backward, Adam step (the rows that are also evaluated);
  and pythae's own BaseTrainer with its lightest settings (no eval set, no checkpoints,
  progress bars off), timed per epoch by a callback (a timing-only row: the trainer
  reseeds and rebuilds its optimiser at every `train()` call, and draws the epoch's
  binarisation outside the timed region).
- Test log-likelihood with S importance samples on one fixed subset of the test set for
  both libraries (pythae `get_nll`, called one test point at a time to keep per-point
  values, under torch.no_grad, with the fastest of its batch sizes measured here; ours
  `vhp_core.log_likelihood`), and on the full test set for ours at the budget's S.
  Evaluation speed is test points per second.
- `Budget.threads` torch threads per worker (2 in FULL; on a loaded 2-core machine use
  1: two OpenMP threads per process then spend their time waiting for each other). The
  load average before and after and the CPU time stolen by the hypervisor during the run
  are recorded: a run on a busy machine says so.
- Our evaluation runs its fast path (`vhp_core.log_likelihood`, the default) and, on the
  subset with the same random draws, the reference path (`reference=True`): the table
  of same numbers compares them, and bf16 with fp32 rows.
- Matmul FLOPs of one training sample and one evaluation sample are counted by
  torch.utils.flop_counter in each worker; with the measured rates they give GFLOP/s as a
  fraction of the fp32 and bf16 matmul peaks measured at the start of the same run.

Run:  .venv/bin/python bench/compare_pythae.py --quick        (a few minutes: checks the path)
      .venv/bin/python bench/compare_pythae.py                (the full comparison, see BENCHMARKS.md)
      .venv/bin/python bench/compare_pythae.py --render-only  (BENCHMARKS.md from the JSON)
      .venv/bin/python bench/compare_pythae.py --profile      (torch.profiler tables of one step each)
Writes bench/results/compare_pythae.json and the compare_pythae section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "compare_pythae.json"
MARKDOWN = REPO / "BENCHMARKS.md"
DATA = REPO / "data" / "processed" / "fashion_mnist.zarr"
BEGIN_MARK = "<!-- compare_pythae:begin (rendered by bench/compare_pythae.py from bench/results/compare_pythae.json) -->"
END_MARK = "<!-- compare_pythae:end -->"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Budget:
    """Everything that sets the work done; stored in the JSON beside the figures."""

    epochs: int  # training epochs of every trained row
    train_n: int  # training images used (0 = all 60,000)
    trainer_epochs: int  # epochs of the timing-only pythae BaseTrainer rows
    subset_n: int  # test points of the shared log-likelihood subset
    subset_samples: int  # S on the subset
    full_test_n: int  # test points of our full-test evaluation (0 = all 10,000)
    full_test_samples: int  # S on the full test set
    k_eval: int  # K_eval inner zeta samples for the hierarchical prior
    chunk: int  # our log_likelihood chunk (latent samples per pass); 0 = the library default
    full_test_models: tuple[str, ...] = ("vae", "iwae", "vhp")  # our fp32 rows evaluated on the full test set
    lr: float = 1e-3
    batch_size: int = 100
    latent_dim: int = 40
    hidden: tuple[int, ...] = (300, 300)
    activation: str = "tanh"
    k_iw: int = 10
    n_pseudo: int = 100
    zeta_dim: int = 40
    prior_hidden: tuple[int, ...] = (256, 256)
    k_inner: int = 10  # = k_iw, so that vhp and iwae are compared per step at the same K
    # kappa of the constraint C <= kappa^2 on the per-pixel BCE; None = auto, as the pipeline
    # trains: kappa^2 = 1.2 C_ae where the reconstruction-only phase plateaus, at the latest
    # after auto_max_fraction of the steps (so the prior trains for most of the budget).
    kappa: float | None = None
    auto_max_fraction: float = 0.2
    # torch threads per worker. 1 on a loaded machine: with 2 OpenMP threads on 2 busy cores
    # every parallel region waits for a descheduled thread, measured 40x below the anchors.
    threads: int = 2
    seed: int = 0


FULL = Budget(
    epochs=3, train_n=20000, trainer_epochs=2, subset_n=30, subset_samples=5000,
    full_test_n=0, full_test_samples=5000, k_eval=8, chunk=0, threads=2,
)
QUICK = Budget(
    epochs=2, train_n=2000, trainer_epochs=2, subset_n=4, subset_samples=500,
    full_test_n=20, full_test_samples=500, k_eval=8, chunk=0,
)


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


# --------------------------------------------------------------------------- data


def ensure_data(path: Path) -> None:
    """Create the zarr group with the prepare stage's command when it is missing."""
    if path.exists():
        return
    cmd = [sys.executable, "-m", "pipelines.cli", "prepare", "fashion_mnist", "--out", str(path), "--no-progress"]
    print("preparing data:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


@dataclass
class Arrays:
    train: torch.Tensor  # (N, 1, 28, 28) uint8 grey levels (byte = round(255 x)); 4x smaller than float32
    test_binarised: torch.Tensor  # (10000, 1, 28, 28) float32 0/1, the group's fixed binarisation
    x_shape: tuple[int, ...]


def load_arrays(path: Path, train_n: int) -> Arrays:
    """Train grey levels and the fixed binarised test set from the zarr group."""
    from preprocessing.store import open_dataset

    ds = open_dataset(path, check_values=False)
    if ds.likelihood != "bernoulli" or "x_binarised" not in ds.test.extra:
        raise SystemExit(f"{path}: expected a Bernoulli data set with test/x_binarised")
    n = len(ds.train) if train_n <= 0 else min(train_n, len(ds.train))
    # Converted block by block so that no float copy of the whole set raises the peak RSS.
    train = torch.empty((n, *ds.x_shape), dtype=torch.uint8)
    for i in range(0, n, 5000):
        block = np.asarray(ds.train.x[i : min(n, i + 5000)])
        train[i : i + len(block)] = torch.from_numpy(np.rint(block * 255.0).astype(np.uint8))
    test = torch.from_numpy(np.asarray(ds.test.extra["x_binarised"][:], dtype=np.float32))
    return Arrays(train=train, test_binarised=test, x_shape=tuple(ds.x_shape))


def subset_indices(n_test: int, n: int, seed: int) -> torch.Tensor:
    """The fixed test subset shared by both libraries (a seeded permutation prefix)."""
    g = torch.Generator().manual_seed(seed + 12345)
    return torch.randperm(n_test, generator=g)[:n].sort().values


def epoch_batches(train: torch.Tensor, epoch: int, batch_size: int, seed: int):
    """The epoch's batches: a seeded shuffle and a fresh binarisation per batch, same for every row."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(train.shape[0], generator=g)
    for i in range(0, train.shape[0], batch_size):
        grey = train[order[i : i + batch_size]].float().div_(255.0)
        yield torch.bernoulli(grey, generator=g)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def max_rss_mb() -> float:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (MB)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float | None:
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs), so that the
    training and evaluation peaks are not masked by data loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- models


def our_config(run: Run, budget: Budget, x_shape: tuple[int, ...]):
    from vhp_core import ModelConfig

    return ModelConfig(
        model=run.model, x_shape=x_shape, likelihood="bernoulli", latent_dim=budget.latent_dim,
        network="mlp", hidden=budget.hidden, activation=budget.activation, zeta_dim=budget.zeta_dim,
        prior_hidden=budget.prior_hidden, k_inner=budget.k_inner, k_iw=budget.k_iw,
        n_pseudo=budget.n_pseudo, precision=run.precision,
    )


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


def pythae_networks(budget: Budget, x_shape: tuple[int, ...]):
    """pythae Encoder/Decoder classes with our layer sizes (784-300-300-40, tanh)."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    data_dim = math.prod(x_shape)

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = _stack((data_dim, *budget.hidden, 2 * budget.latent_dim), budget.activation)

        def forward(self, x: torch.Tensor):
            mu, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = _stack((budget.latent_dim, *reversed(budget.hidden), data_dim), budget.activation)

        def forward(self, z: torch.Tensor):
            # pythae's 'bce' loss takes probabilities, hence the sigmoid.
            probs = torch.sigmoid(self.net(z))
            return ModelOutput(reconstruction=probs.reshape(z.shape[0], *x_shape))

    return Encoder(), Decoder()


def build_pythae(run: Run, budget: Budget, x_shape: tuple[int, ...]):
    """The pythae model of `run`, its encoder/decoder initialised with our model's weights."""
    from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig
    from vhp_core import build_model

    torch.manual_seed(budget.seed)
    ours = build_model(our_config(dataclasses.replace(run, library="ours", precision="fp32"), budget, x_shape))
    encoder, decoder = pythae_networks(budget, x_shape)
    encoder.net.load_state_dict(ours.encoder.body[1].state_dict())
    decoder.net.load_state_dict(ours.decoder.body.state_dict())
    common = dict(input_dim=x_shape, latent_dim=budget.latent_dim, reconstruction_loss="bce")
    if run.model == "vae":
        return VAE(VAEConfig(**common), encoder=encoder, decoder=decoder)
    if run.model == "iwae":
        return IWAE(IWAEConfig(**common, number_samples=budget.k_iw), encoder=encoder, decoder=decoder)
    if run.model == "vamp":
        cfg = VAMPConfig(**common, number_components=budget.n_pseudo, linear_scheduling_steps=0)
        return VAMP(cfg, encoder=encoder, decoder=decoder)
    raise ValueError(f"pythae has no counterpart of {run.model!r}")


# --------------------------------------------------------------------------- runners (inside a worker)


class OursRunner:
    """vhp_core.build_model + vhp_core.train_step; evaluation by vhp_core.log_likelihood."""

    def __init__(self, run: Run, budget: Budget, x_shape: tuple[int, ...], n_train: int) -> None:
        from vhp_core import ConstraintConfig, ConstraintState, build_model

        torch.manual_seed(budget.seed)
        self.budget = budget
        self.model = build_model(our_config(run, budget, x_shape))
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=budget.lr, fused=True)  # as pipelines.train.fit
        steps = budget.epochs * math.ceil(n_train / budget.batch_size)
        self.cfg = ConstraintConfig(kappa=budget.kappa, auto_max_steps=max(1, int(budget.auto_max_fraction * steps)))
        self.state = ConstraintState.initial(self.cfg, self.model.rule)
        self.generator = torch.Generator().manual_seed(budget.seed + 1)
        self.compiled = run.compiled

    def finish_setup(self, x: torch.Tensor) -> None:
        """Compile the network bodies of a compiled row and warm them up on x (no optimiser step)."""
        from vhp_core.networks import Network

        if not self.compiled:
            return
        for network in [m for m in self.model.modules() if isinstance(m, Network)]:
            network.body = torch.compile(network.body)
        self.model.objective_parts(x, torch.Generator().manual_seed(0)).total(1.0).backward()
        self.optimiser.zero_grad(set_to_none=True)

    def training_flops(self, x: torch.Tensor) -> float:
        """Matmul FLOPs of one forward + backward pass on x (own generator; no optimiser step)."""
        parts_of = self.model.objective_parts
        with FlopCounterMode(display=False) as counter:
            parts_of(x, torch.Generator().manual_seed(0)).total(1.0).backward()
        self.optimiser.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def eval_flops(self, x: torch.Tensor, samples: int) -> float:
        """Matmul FLOPs of evaluating one point with `samples` importance samples."""
        from vhp_core import log_likelihood

        with FlopCounterMode(display=False) as counter:
            log_likelihood(self.model, x[:1], samples, n_inner=self.budget.k_eval, generator=torch.Generator().manual_seed(0))
        return float(counter.get_total_flops())

    def train_epoch(self, batches) -> dict[str, Any]:
        from vhp_core import train_step

        self.model.train()
        n = steps = nonfinite = 0
        elbo = reconstruction = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for x in batches:
            self.state, terms = train_step(self.model, self.optimiser, x, self.state, self.cfg, self.generator)
            n += x.shape[0]
            steps += 1
            if terms.finite:
                elbo += terms.elbo
                reconstruction += terms.reconstruction
            else:
                nonfinite += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ok = max(steps - nonfinite, 1)
        return {
            "wall_s": wall, "cpu_s": cpu, "samples": n, "train_elbo": elbo / ok, "train_c": reconstruction / ok,
            "lambda": self.state.lambda_, "c_hat": self.state.c_hat, "prior_active": self.state.prior_active,
            "kappa_sq": self.state.kappa_sq,
            "nonfinite_steps": nonfinite,
        }

    def log_likelihood(self, x: torch.Tensor, samples: int, seed: int, reference: bool = False) -> torch.Tensor:
        from vhp_core import log_likelihood

        self.model.eval()
        kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(seed), "reference": reference}
        if self.budget.chunk > 0:
            kwargs["chunk"] = self.budget.chunk
        return log_likelihood(self.model, x, samples, n_inner=self.budget.k_eval, **kwargs)


class PythaeLoopRunner:
    """The same hand loop as ours around pythae's model: forward(...).loss, backward, Adam step."""

    def __init__(self, run: Run, budget: Budget, x_shape: tuple[int, ...], nll_batch: int) -> None:
        self.model = build_pythae(run, budget, x_shape)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=budget.lr)
        self.nll_batch = nll_batch
        self.epoch = 0
        torch.manual_seed(budget.seed + 1)

    def train_epoch(self, batches) -> dict[str, Any]:
        self.model.train()
        self.epoch += 1
        n = steps = 0
        loss_sum = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for x in batches:
            out = self.model({"data": x}, epoch=self.epoch)
            self.optimiser.zero_grad()
            out.loss.backward()
            self.optimiser.step()
            loss_sum += out.loss.item()  # what BaseTrainer does every step too
            n += x.shape[0]
            steps += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"wall_s": wall, "cpu_s": cpu, "samples": n, "train_loss": loss_sum / max(steps, 1)}

    def training_flops(self, x: torch.Tensor) -> float:
        """Matmul FLOPs of one forward + backward pass on x (global RNG restored; no optimiser step)."""
        with torch.random.fork_rng(), FlopCounterMode(display=False) as counter:
            self.model({"data": x}, epoch=1).loss.backward()
        self.optimiser.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def eval_flops(self, x: torch.Tensor, samples: int) -> float:
        """Matmul FLOPs of get_nll on one point with `samples` importance samples."""
        self.model.eval()
        with torch.random.fork_rng(), torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.model.get_nll(x[:1], n_samples=samples, batch_size=min(samples, self.nll_batch))
        return float(counter.get_total_flops())

    def log_likelihood(self, x: torch.Tensor, samples: int, seed: int, reference: bool = False) -> torch.Tensor:
        del reference  # pythae has one path
        torch.manual_seed(seed)
        # get_nll returns the mean log p(x) of the rows it is given; one row per call
        # keeps per-point values (it loops over rows one by one internally anyway).
        self.model.eval()
        out = torch.empty(x.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for i in range(x.shape[0]):
                out[i] = float(self.model.get_nll(x[i : i + 1], n_samples=samples, batch_size=self.nll_batch))
        return out


class PythaeTrainerRunner:
    """pythae's BaseTrainer, one `train()` call of one epoch per round; timing only."""

    def __init__(self, run: Run, budget: Budget, x_shape: tuple[int, ...], arrays: Arrays, workdir: str) -> None:
        import logging

        from pythae.data.datasets import BaseDataset
        from pythae.trainers import BaseTrainer, BaseTrainerConfig
        from pythae.trainers.training_callbacks import TrainingCallback

        for name in ("pythae.trainers.base_trainer.base_trainer", "pythae.trainers.training_callbacks"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.arrays = arrays
        self.budget = budget
        self.generator = torch.Generator().manual_seed(budget.seed + 2)
        self.dataset = BaseDataset(self._binarised(), torch.zeros(arrays.train.shape[0]))
        marks: dict[str, float] = {}
        self.marks = marks

        class EpochTimer(TrainingCallback):
            def on_epoch_begin(self, training_config, **kwargs):
                marks["begin"], marks["cpu_begin"] = time.perf_counter(), time.process_time()

            def on_epoch_end(self, training_config, **kwargs):
                marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

        config = BaseTrainerConfig(
            output_dir=workdir, per_device_train_batch_size=budget.batch_size, num_epochs=1,
            learning_rate=budget.lr, optimizer_cls="Adam", steps_saving=None, steps_predict=None,
            no_cuda=True, seed=budget.seed,
        )
        self.trainer = BaseTrainer(
            model=build_pythae(run, budget, x_shape), train_dataset=self.dataset, training_config=config,
            callbacks=[EpochTimer()],
        )

    def _binarised(self) -> torch.Tensor:
        return torch.bernoulli(self.arrays.train.float().div_(255.0), generator=self.generator)

    def train_epoch(self, batches) -> dict[str, Any]:
        del batches  # the trainer iterates its own DataLoader
        self.dataset.data = self._binarised()  # this epoch's binarisation, outside the timed region
        t0 = time.perf_counter()
        self.trainer.train()
        call = time.perf_counter() - t0
        m = self.marks
        return {
            "wall_s": m["end"] - m["begin"], "cpu_s": m["cpu_end"] - m["cpu_begin"],
            "samples": len(self.dataset), "train_call_wall_s": call,
        }


# --------------------------------------------------------------------------- worker process


def worker_main(conn, run: Run, budget: Budget, data_path: str, nll_batch: int, workdir: str) -> None:
    """One row's process: load data, build, then obey (command, argument) messages."""
    try:
        torch.set_num_threads(budget.threads)
        arrays = load_arrays(Path(data_path), budget.train_n)
        if run.library == "ours":
            runner: Any = OursRunner(run, budget, arrays.x_shape, len(arrays.train))
        elif run.driver == "loop":
            runner = PythaeLoopRunner(run, budget, arrays.x_shape, nll_batch)
        else:
            runner = PythaeTrainerRunner(run, budget, arrays.x_shape, arrays, workdir)
        n_params = sum(p.numel() for p in runner.model.parameters()) if hasattr(runner, "model") else None
        setup = {"rss_setup_mb": current_rss_mb(), "rss_setup_peak_mb": max_rss_mb(), "n_params": n_params}
        if hasattr(runner, "training_flops"):
            x = next(epoch_batches(arrays.train, 10**6, budget.batch_size, budget.seed))
            setup["train_flops_per_sample"] = runner.training_flops(x) / x.shape[0]
            if run.evaluated:
                s = min(budget.subset_samples, 100)
                setup["eval_flops_per_point"] = runner.eval_flops(arrays.test_binarised[:1], s) * budget.subset_samples / s
            if hasattr(runner, "finish_setup"):
                t0 = time.perf_counter()
                runner.finish_setup(x)
                setup["finish_setup_s"] = time.perf_counter() - t0
        setup["peak_reset"] = reset_peak_rss()
        conn.send(("ok", setup))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    parent = os.getppid()
    while True:
        while not conn.poll(5.0):
            if os.getppid() != parent:  # the driver died: do not linger
                return
        command, arg = conn.recv()
        try:
            if command == "stop":
                conn.send(("ok", {"rss_peak_mb": max_rss_mb()}))
                return
            if command == "epoch":
                result = runner.train_epoch(epoch_batches(arrays.train, arg, budget.batch_size, budget.seed))
                result["rss_mb"] = max_rss_mb()
                conn.send(("ok", result))
            elif command == "reset_peak":
                conn.send(("ok", {"peak_reset": reset_peak_rss()}))
            elif command == "ll":
                indices, samples, seed, reference = arg
                x = arrays.test_binarised[indices]
                runner.log_likelihood(x[:1], min(samples, 200), seed, reference)  # warm-up, untimed
                t0, c0 = time.perf_counter(), time.process_time()
                ll = runner.log_likelihood(x, samples, seed, reference)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                conn.send(("ok", {"ll": ll.tolist(), "wall_s": wall, "cpu_s": cpu, "rss_mb": max_rss_mb()}))
            else:
                conn.send(("error", f"unknown command {command!r}"))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class Worker:
    """Driver-side handle of a worker process."""

    def __init__(self, ctx, run: Run, budget: Budget, data_path: Path, nll_batch: int, workdir: str) -> None:
        self.run = run
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=worker_main, args=(child, run, budget, str(data_path), nll_batch, workdir), daemon=True
        )
        self.process.start()
        self.info = self._reply()
        self.alive = True

    def _reply(self) -> dict[str, Any]:
        status, payload = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.run.key}: {payload}")
        return payload

    def call(self, command: str, arg: Any = None) -> dict[str, Any]:
        self.conn.send((command, arg))
        return self._reply()

    def stop(self) -> dict[str, Any]:
        if not self.alive:
            return {}
        out = self.call("stop")
        self.process.join(timeout=30)
        self.alive = False
        return out


# --------------------------------------------------------------------------- the comparison


def pick_nll_batch(budget: Budget, arrays: Arrays, candidates: tuple[int, ...] = (100, 500, 1000, 5000)) -> dict[str, Any]:
    """The fastest pythae get_nll batch_size on this machine (VAE, a few points, S of the subset).

    get_nll draws max(batch_size, ...) samples in whole batches: with S = 5000 every
    candidate here divides S, so each draws exactly S samples.
    """
    torch.set_num_threads(budget.threads)
    model = build_pythae(Run("pythae", "vae"), budget, arrays.x_shape).eval()
    x = arrays.test_binarised[:2]
    timings = {}
    for bs in candidates:
        if budget.subset_samples % bs or bs > budget.subset_samples:
            continue
        best = math.inf
        for _ in range(1):
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(x.shape[0]):
                    model.get_nll(x[i : i + 1], n_samples=budget.subset_samples, batch_size=bs)
            best = min(best, time.perf_counter() - t0)
        timings[bs] = x.shape[0] / best
    chosen = max(timings, key=timings.get) if timings else 100
    return {"chosen": chosen, "points_per_s": {str(k): v for k, v in timings.items()}}


def summarise_epochs(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [e["samples"] / e["wall_s"] for e in epochs]
    cpu_rates = [e["samples"] / e["cpu_s"] for e in epochs if e["cpu_s"] > 0]
    return {
        "samples_per_s_median": statistics.median(rates),
        "samples_per_s_best": max(rates),
        "samples_per_s_all": rates,
        "samples_per_cpu_s_median": statistics.median(cpu_rates) if cpu_rates else None,
    }


def ll_summary(ll: list[float], wall: float, cpu: float) -> dict[str, Any]:
    values = np.asarray(ll, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "sem": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None,
        "n": int(len(values)),
        "points_per_s": len(values) / wall,
        "points_per_cpu_s": len(values) / cpu if cpu > 0 else None,
        "wall_s": wall,
    }


def machine_info(load: tuple[float, float, float]) -> dict[str, Any]:
    def lscpu(field: str) -> str | None:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        for line in out.splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        return None

    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "cpu_model": lscpu("Model name"),
        "cpus": os.cpu_count(),
        "cores_per_socket": lscpu("Core(s) per socket"),
        "threads_per_core": lscpu("Thread(s) per core"),
        "flags_bf16": "avx512_bf16" in (lscpu("Flags") or ""),
        "flags_avx512": "avx512f" in (lscpu("Flags") or ""),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "pythae": version("pythae"),
        "numpy": np.__version__,
        "load_average_at_start": load,
    }


def cpu_times() -> dict[str, int]:
    """The machine's cumulative CPU time counters (USER_HZ ticks) from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, map(int, fields)))


def machine_load(start: dict[str, int], end: dict[str, int]) -> dict[str, float | None]:
    """Busy and stolen fractions of the machine's CPU time between two cpu_times() readings."""
    if not start or not end:
        return {"busy_fraction": None, "steal_fraction": None}
    delta = {k: end[k] - start[k] for k in start}
    total = sum(delta.values()) or 1
    return {"busy_fraction": 1.0 - (delta["idle"] + delta["iowait"]) / total, "steal_fraction": delta["steal"] / total}


def matmul_peaks(threads: int) -> dict[str, float]:
    """fp32 and bf16 matmul peaks (GFLOP/s) with `threads` torch threads, by bench/train_step.py's method."""
    from train_step import matmul_peak_gflops  # the sibling script (bench/ is on sys.path when run as a script)

    torch.set_num_threads(threads)
    return {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}


def run_comparison(budget: Budget, runs: tuple[Run, ...], data_path: Path, quick: bool) -> dict[str, Any]:
    started = time.time()
    load_before, cpu_before = os.getloadavg(), cpu_times()
    peaks = matmul_peaks(budget.threads)
    print(f"load average {load_before}; matmul peaks GFLOP/s {peaks}", flush=True)
    ensure_data(data_path)
    arrays = load_arrays(data_path, budget.train_n)
    n_test = arrays.test_binarised.shape[0]
    subset = subset_indices(n_test, budget.subset_n, budget.seed)
    full = torch.arange(n_test if budget.full_test_n <= 0 else min(budget.full_test_n, n_test))
    print(f"train {arrays.train.shape[0]} images, test subset {len(subset)}, full test {len(full)}", flush=True)
    n_train = int(arrays.train.shape[0])
    nll_batch = pick_nll_batch(budget, arrays)
    print("pythae get_nll batch sizes (points/s):", nll_batch, flush=True)
    del arrays

    # pythae's BaseTrainer always adds tqdm progress bars; tqdm reads TQDM_DISABLE when it is
    # imported, so it has to be in the environment the spawned workers start with.
    os.environ["TQDM_DISABLE"] = "1"
    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="compare_pythae_")
    workers: dict[str, Worker] = {}
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        t0 = time.perf_counter()
        try:
            workers[run.key] = Worker(ctx, run, budget, data_path, nll_batch["chosen"], workdir)
            rows[run.key] = {"run": asdict(run), "setup": workers[run.key].info, "epochs": []}
        except Exception as err:  # a row that cannot start is reported, not fatal
            rows[run.key] = {"run": asdict(run), "error": str(err)}
            print(f"[{run.key}] failed to start: {err}", flush=True)
            continue
        print(f"[{run.key}] ready in {time.perf_counter() - t0:.1f}s ({workers[run.key].info})", flush=True)

    # Training: one epoch per row per round, the order reversed every other round.
    for epoch in range(budget.epochs):
        order = list(workers.values()) if epoch % 2 == 0 else list(reversed(workers.values()))
        for w in order:
            if not w.alive or (w.run.driver == "trainer" and epoch >= budget.trainer_epochs):
                continue
            try:
                result = w.call("epoch", epoch)
            except Exception as err:
                rows[w.run.key]["error"] = str(err)
                print(f"[{w.run.key}] epoch {epoch} failed: {err}", flush=True)
                w.alive = False
                continue
            rows[w.run.key]["epochs"].append(result)
            extra = {k: result[k] for k in ("train_elbo", "train_c", "lambda", "train_loss") if k in result}
            print(f"[{w.run.key}] epoch {epoch + 1}: {result['samples'] / result['wall_s']:,.0f} samples/s {extra}", flush=True)
        for w in list(workers.values()):
            if w.alive and w.run.driver == "trainer" and epoch + 1 >= budget.trainer_epochs:
                rows[w.run.key]["final"] = w.stop()
    for key, row in rows.items():
        if row.get("epochs"):
            row["training"] = summarise_epochs(row["epochs"])
            row["rss_train_peak_mb"] = max(e["rss_mb"] for e in row["epochs"])

    # Log-likelihood on the shared subset (pairs interleaved), then ours on the full test set.
    for w in workers.values():
        if w.alive:
            w.call("reset_peak")
    for w in workers.values():
        if not (w.alive and w.run.evaluated):
            continue
        try:
            res = w.call("ll", (subset, budget.subset_samples, EVAL_SEED, False))
        except Exception as err:
            rows[w.run.key]["error"] = str(err)
            w.alive = False
            continue
        rows[w.run.key]["ll_subset"] = ll_summary(res["ll"], res["wall_s"], res["cpu_s"])
        rows[w.run.key]["ll_subset"]["values"] = res["ll"]
        print(f"[{w.run.key}] subset log-likelihood {rows[w.run.key]['ll_subset']['mean']:.2f} "
              f"({rows[w.run.key]['ll_subset']['points_per_s']:.1f} points/s)", flush=True)
        if w.run.library == "ours" and w.run.precision == "fp32" and not w.run.compiled:
            # The reference path with the same random draws: the same numbers up to rounding?
            res = w.call("ll", (subset, budget.subset_samples, EVAL_SEED, True))
            rows[w.run.key]["ll_subset_reference"] = ll_summary(res["ll"], res["wall_s"], res["cpu_s"])
            rows[w.run.key]["ll_subset_reference"]["values"] = res["ll"]
            print(f"[{w.run.key}] subset log-likelihood, reference path: "
                  f"{rows[w.run.key]['ll_subset_reference']['points_per_s']:.1f} points/s", flush=True)
    for w in workers.values():
        # The full test set costs S x 10,000 decoder passes a row: the goal rows only.
        if not (w.alive and w.run.library == "ours" and w.run.evaluated and w.run.precision == "fp32"
                and not w.run.compiled and w.run.model in budget.full_test_models):
            continue
        try:
            res = w.call("ll", (full, budget.full_test_samples, EVAL_SEED, False))
        except Exception as err:
            rows[w.run.key]["error"] = str(err)
            w.alive = False
            continue
        rows[w.run.key]["ll_full"] = ll_summary(res["ll"], res["wall_s"], res["cpu_s"])
        print(f"[{w.run.key}] full-test log-likelihood {rows[w.run.key]['ll_full']['mean']:.2f} "
              f"({rows[w.run.key]['ll_full']['points_per_s']:.1f} points/s)", flush=True)
    for w in workers.values():
        if w.alive:
            rows[w.run.key]["final"] = w.stop()
    for row in rows.values():
        if "final" in row and "ll_subset" in row:
            row["rss_eval_peak_mb"] = row["final"]["rss_peak_mb"]

    results = {
        "benchmark": "compare_pythae",
        "quick": quick,
        "created_unix": started,
        "wall_minutes": (time.time() - started) / 60.0,
        "machine": {**machine_info(load_before), "load_average_at_end": os.getloadavg(),
                    **machine_load(cpu_before, cpu_times()), "matmul_peak_gflops": peaks},
        "budget": asdict(budget),
        "data": {"path": str(data_path.relative_to(REPO)) if data_path.is_relative_to(REPO) else str(data_path),
                 "train_images": n_train, "test_subset": subset.tolist(),
                 "full_test_points": len(full)},
        "pythae_get_nll_batch": nll_batch,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
    }
    results["comparison"] = compare(results)
    return results


# --------------------------------------------------------------------------- figures from the rows


def _rate(rows: dict, key: str) -> float | None:
    row = rows.get(key, {})
    return row.get("training", {}).get("samples_per_s_median")


def _values(rows: dict, key: str, field: str = "ll_subset") -> list[float] | None:
    """The per-point log-likelihoods of one row's evaluation `field`, if it ran."""
    return (rows.get(key, {}).get(field) or {}).get("values")


def _paired(rows: dict, a: str, b: str) -> dict[str, float] | None:
    """The per-point difference a - b on the shared subset (see `_difference`)."""
    return _difference(_values(rows, a), _values(rows, b))


def _round_ratio(rows: dict, a: str, b: str, cpu: bool = False) -> float | None:
    """Median over training rounds of rate(a) / rate(b), each round's two epochs run back to back.

    Pairing by round cancels the load of other jobs that varies from round to round;
    with cpu=True the rates are per CPU-second of the row's own process instead of wall time.
    """
    ea, eb = rows.get(a, {}).get("epochs"), rows.get(b, {}).get("epochs")
    if not ea or not eb:
        return None
    unit = "cpu_s" if cpu else "wall_s"
    ratios = [(x["samples"] / x[unit]) / (y["samples"] / y[unit]) for x, y in zip(ea, eb) if x[unit] > 0 and y[unit] > 0]
    return statistics.median(ratios) if ratios else None


VARIANTS = {"": "fp32", " bf16": "bf16", " compiled": "fp32/compiled"}  # label suffix -> key suffix


def _gflops(row: dict[str, Any], peaks: dict[str, float]) -> dict[str, float | None]:
    """Achieved matmul GFLOP/s of a row's training and subset evaluation, as fractions of the fp32 peak.

    (bf16 rows also get their fraction of the bf16 peak in the JSON: where bf16 is emulated,
    autocast's small GEMMs beat the square-matmul "peak", so that fraction exceeds 1.)
    """
    setup, peak = row.get("setup", {}), peaks.get("fp32")
    own = peaks.get(row["run"]["precision"])
    train_rate = row.get("training", {}).get("samples_per_s_median")
    eval_rate = (row.get("ll_subset") or {}).get("points_per_s")
    out: dict[str, float | None] = dict.fromkeys(
        ("train_gflops", "train_fraction", "train_fraction_own_peak", "eval_gflops", "eval_fraction", "eval_fraction_own_peak"))
    if setup.get("train_flops_per_sample") and train_rate:
        out["train_gflops"] = setup["train_flops_per_sample"] * train_rate / 1e9
        out["train_fraction"] = out["train_gflops"] / peak if peak else None
        out["train_fraction_own_peak"] = out["train_gflops"] / own if own else None
    if setup.get("eval_flops_per_point") and eval_rate:
        out["eval_gflops"] = setup["eval_flops_per_point"] * eval_rate / 1e9
        out["eval_fraction"] = out["eval_gflops"] / peak if peak else None
        out["eval_fraction_own_peak"] = out["eval_gflops"] / own if own else None
    return out


def _difference(a: list[float] | None, b: list[float] | None) -> dict[str, float] | None:
    """Mean, standard error, mean and max absolute value of the per-point difference a - b."""
    if not a or not b or len(a) != len(b):
        return None
    d = np.asarray(a) - np.asarray(b)
    sem = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return {"mean": float(d.mean()), "sem": sem, "mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max())}


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """The goal figures: training throughput, evaluation speed and time, same numbers, FLOP rates, gaps.

    Training speed-ups are medians over rounds of the per-round ratio (wall time), with the
    same per CPU-second of each process beside them (less sensitive to other jobs' load).
    """
    rows = results["rows"]
    peaks = results["machine"].get("matmul_peak_gflops", {})
    out: dict[str, Any] = {
        "training_speedup": {}, "training_speedup_cpu": {}, "eval_speedup": {}, "full_test_minutes": {},
        "same_numbers": {}, "gflops": {}, "ll_gap_vhp": {},
    }
    for model in PYTHAE_NAMES:
        for label, suffix in VARIANTS.items():
            ours = f"ours/{model}/loop/{suffix}"
            for driver in ("loop", "trainer"):
                theirs = f"pythae/{model}/{driver}/fp32"
                name = f"{model}{label} vs pythae {driver}"
                r = _round_ratio(rows, ours, theirs)
                if r:
                    out["training_speedup"][name] = r
                    out["training_speedup_cpu"][name] = _round_ratio(rows, ours, theirs, cpu=True)
        b = rows.get(f"pythae/{model}/loop/fp32", {}).get("ll_subset")
        for label, suffix, field in (("", "fp32", "ll_subset"), (" reference path", "fp32", "ll_subset_reference"),
                                     (" bf16", "bf16", "ll_subset")):
            a = rows.get(f"ours/{model}/loop/{suffix}", {}).get(field)
            if a and b:
                out["eval_speedup"][f"{model}{label}"] = a["points_per_s"] / b["points_per_s"]
    r = _round_ratio(rows, "ours/vhp/loop/fp32", "ours/iwae/loop/fp32")
    if r:
        out["training_speedup"]["vhp vs ours iwae (per step)"] = r
        out["training_speedup_cpu"]["vhp vs ours iwae (per step)"] = _round_ratio(
            rows, "ours/vhp/loop/fp32", "ours/iwae/loop/fp32", cpu=True)
    for key, row in rows.items():
        if row.get("ll_full"):
            out["full_test_minutes"][key] = {"minutes": row["ll_full"]["wall_s"] / 60.0, "points": row["ll_full"]["n"]}
        ref = _difference(_values(rows, key), _values(rows, key, "ll_subset_reference"))
        if ref:
            out["same_numbers"][f"{row_label(row['run'])}: fast - reference path (same draws)"] = ref
        if "setup" in row:
            out["gflops"][key] = _gflops(row, peaks)
    for model in ("vae", "vhp"):
        d = _paired(rows, f"ours/{model}/loop/bf16", f"ours/{model}/loop/fp32")
        if d:
            out["same_numbers"][f"ours {model}: bf16 - fp32 model (trained apart, same draws)"] = d
    for model in ("vae", "iwae"):
        d = _paired(rows, f"ours/{model}/loop/fp32/compiled", f"ours/{model}/loop/fp32")
        if d:
            out["same_numbers"][f"ours {model}: compiled - eager model (trained apart, same draws)"] = d
    for model in ("vamp", "iwae", "vae"):
        gap = _paired(rows, "ours/vhp/loop/fp32", f"pythae/{model}/loop/fp32")
        if gap:
            out["ll_gap_vhp"][f"vhp - pythae {model}"] = gap
        gap = _paired(rows, "ours/vhp/loop/fp32", f"ours/{model}/loop/fp32")
        if gap:
            out["ll_gap_vhp"][f"vhp - ours {model}"] = gap
    return out


# --------------------------------------------------------------------------- BENCHMARKS.md


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def _command(recorded: str) -> str:
    # The JSON records the interpreter's base name; the project's interpreter is .venv/bin/python.
    return ".venv/bin/python " + recorded.split(" ", 1)[1] if " " in recorded else recorded


def row_label(run: dict[str, Any]) -> str:
    if run["library"] == "pythae":
        name = f"pythae {PYTHAE_NAMES[run['model']]}"
        return name + (" (BaseTrainer)" if run["driver"] == "trainer" else " (hand loop)")
    return (f"ours {run['model']}" + (" bf16" if run["precision"] == "bf16" else "")
            + (" compiled" if run.get("compiled") else ""))


def _triple(v: list[float] | None) -> str:
    return "–" if not v else ", ".join(f"{x:.1f}" for x in v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _nats(v: float, sign: str = "") -> str:
    """A difference in nats: fixed point, or scientific where it is below 0.001 (rounding-level)."""
    return format(v, f"{sign}.1e") if 0 < abs(v) < 1e-3 else format(v, f"{sign}.3f")


def _ll(s: dict[str, Any] | None) -> str:
    if not s:
        return "–"
    return f"{s['mean']:.2f} ± {s['sem']:.2f}" if s.get("sem") else f"{s['mean']:.2f}"


def render_markdown(results: dict[str, Any]) -> str:
    """The compare_pythae section of BENCHMARKS.md, entirely from the JSON."""
    b, m, rows, cmp = results["budget"], results["machine"], results["rows"], results["comparison"]
    peaks = m.get("matmul_peak_gflops", {})
    steal = m.get("steal_fraction")
    lines = [
        BEGIN_MARK,
        "## vhp_core vs pythae 0.1.2 (dynamically binarised Fashion-MNIST)",
        "",
        "All figures below come from one run of `bench/compare_pythae.py` on one machine"
        + (" (**quick mode: a path check, not a measurement**)" if results["quick"] else "") + ".",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpus']} CPUs ({m['cores_per_socket']} cores, {m['threads_per_core']} thread per core), "
        f"{m['memory_gib']} GiB; torch CPU capability {m.get('torch_cpu_capability', '–')}, AVX-512: "
        f"{'yes' if m.get('flags_avx512') else 'no'}, avx512_bf16: {'yes' if m['flags_bf16'] else 'no'}. "
        f"Python {m['python']}, torch {m['torch']}, pythae {m['pythae']}, numpy {m['numpy']}; torch threads per row: {b['threads']}.",
        f"- Quiet machine? Load average before the run {_triple(m.get('load_average_at_start'))}, after it "
        f"{_triple(m.get('load_average_at_end'))}; during the run the machine was busy {_pct(m.get('busy_fraction'))} of its CPU time "
        f"and {_pct(steal)} was stolen by the hypervisor (time the VM was ready to run but the host ran something else). "
        "Rows are interleaved epoch by epoch (A B C … then … C B A) so that drift hits all rows alike; the median epoch is reported.",
        f"- Matmul peaks measured at the start of the run, {b['threads']} threads: fp32 {peaks.get('fp32', float('nan')):.1f} GFLOP/s, "
        f"bf16 {peaks.get('bf16', float('nan')):.1f} GFLOP/s.",
        f"- Command: `{_command(results['command'])}` (from the repository root); wall time of the whole run {results['wall_minutes']:.1f} min.",
        f"- Model (both libraries): MLP encoder 784-{'-'.join(map(str, b['hidden']))}-2×{b['latent_dim']}, decoder mirrored, "
        f"{b['activation']}, Bernoulli likelihood, {b['latent_dim']}-d latent; Adam, lr {b['lr']}, batch {b['batch_size']} "
        "(ours: fused Adam, as `pipelines.train.fit` trains); pythae's encoder/decoder start from our initial weights.",
        f"- Budget: {b['epochs']} epochs on {results['data']['train_images']:,} training images (a fresh binarisation per batch); "
        f"pythae BaseTrainer rows (timing only): {b['trainer_epochs']} epochs. IWAE K = {b['k_iw']}; VampPrior "
        f"{b['n_pseudo']} pseudo-inputs (both); vhp: ζ {b['zeta_dim']}-d, prior MLPs {'-'.join(map(str, b['prior_hidden']))}, "
        f"K_inner {b['k_inner']}, "
        + (f"κ = {b['kappa']} (C ≤ κ² = {b['kappa'] ** 2:.3f} BCE per pixel); " if b.get("kappa") else
           f"κ auto as the pipeline trains (κ² = 1.2 C_ae where the reconstruction-only phase plateaus, at the latest "
           f"after {b.get('auto_max_fraction', 0.2):.0%} of the steps); ")
        +
        "vhp-geco the same with GECO. Compiled rows: the network bodies under `torch.compile` (inductor, C++ on this CPU) for training.",
        f"- Test log-likelihood: S = {b['subset_samples']} importance samples on the same fixed {b['subset_n']}-point "
        f"subset of the fixed binarised test set for both libraries, every evaluation from the same seed; ours also on "
        f"{results['data']['full_test_points']:,} test points with S = {b['full_test_samples']} ({', '.join(b.get('full_test_models', []))}). "
        f"K_eval = {b['k_eval']} for the hierarchical prior. "
        f"pythae `get_nll` runs under `torch.no_grad()` with batch_size {results['pythae_get_nll_batch']['chosen']} "
        f"(the fastest measured here: {', '.join(f'{k}: {v:.1f}' for k, v in results['pythae_get_nll_batch']['points_per_s'].items())} points/s).",
        "- GFLOP/s: matmul FLOPs of one training sample (forward + backward) and of one evaluated point, counted by "
        "`torch.utils.flop_counter` in each row's process, times the measured rate; % of the fp32 matmul peak (bf16 rows too).",
        "- Memory: peak RSS (kernel VmHWM) of each row's own process, reset after set-up and again before evaluation.",
        "",
        "| row | train samples/s (median) | samples / CPU-s | train GFLOP/s (% fp32 peak) | peak RSS train (MB) | peak RSS eval (MB) "
        f"| log p(x), subset S={b['subset_samples']} | eval points/s (% fp32 peak) | reference path points/s "
        f"| log p(x), {results['data']['full_test_points']:,} pts S={b['full_test_samples']} | full test minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in rows.items():
        t = row.get("training", {})
        s, f, ref = row.get("ll_subset"), row.get("ll_full"), row.get("ll_subset_reference")
        g = cmp.get("gflops", {}).get(key, {})
        label = row_label(row["run"]) + (" (error, see JSON)" if "error" in row else "")
        train_g = "–" if g.get("train_gflops") is None else f"{g['train_gflops']:.1f} ({_pct(g.get('train_fraction'))})"
        eval_r = "–" if not s else f"{s['points_per_s']:.2f}" + (f" ({_pct(g.get('eval_fraction'))})" if g.get("eval_fraction") else "")
        lines.append(
            f"| {label} | {_fmt(t.get('samples_per_s_median'))} | {_fmt(t.get('samples_per_cpu_s_median'))} | {train_g} "
            f"| {_fmt(row.get('rss_train_peak_mb'))} | {_fmt(row.get('rss_eval_peak_mb'))} | {_ll(s)} | {eval_r} "
            f"| {_fmt(ref and ref['points_per_s'], ',.2f')} | {_ll(f)} | {_fmt(f and f['wall_s'] / 60.0, '.1f')} |"
        )
    lines += ["", "± is the standard error over test points.", "", "### Against the goals", ""]
    lines.append("| figure | value | goal |")
    lines.append("|---|---:|---|")
    for name, v in cmp["training_speedup"].items():
        cpu = cmp.get("training_speedup_cpu", {}).get(name)
        cpu_s = f" ({cpu:.2f}× per CPU-s)" if cpu else ""
        goal = "≥ 1×" if "vhp vs" in name else "≥ 2×"
        lines.append(f"| training throughput, ours {name} (median of per-round ratios) | {v:.2f}×{cpu_s} | {goal} |")
    for name, v in cmp["eval_speedup"].items():
        base = name.split(" ")[0]
        lines.append(f"| log-likelihood evaluation speed, ours {name} vs pythae {PYTHAE_NAMES[base]} | {v:.2f}× | ≥ 5× |")
    for key, v in cmp.get("full_test_minutes", {}).items():
        goal = "≤ 15 min" if "/vhp/" in key else "≤ 5 min"
        lines.append(f"| {row_label(rows[key]['run'])}: S = {b['full_test_samples']} on {v['points']:,} test points | "
                     f"{v['minutes']:.1f} min | {goal} |")
    for name, v in cmp.get("same_numbers", {}).items():
        sem = f" ± {_nats(v['sem'])}" if v.get("sem") is not None else ""
        goal = "< 0.05 nats" if "reference" in name else "within seed noise"
        lines.append(f"| same numbers, {name} | {_nats(v['mean'], '+')}{sem} nats (mean abs {_nats(v['mean_abs'])}, "
                     f"max {_nats(v['max_abs'])}) | {goal} |")
    for name, v in cmp["ll_gap_vhp"].items():
        sem = f" ± {v['sem']:.2f}" if v.get("sem") is not None else ""
        lines.append(f"| log p(x) gap {name} (paired, subset) | {v['mean']:+.2f}{sem} nats | (context) |")
    notes = results.get("notes")
    if notes:
        lines += ["", "### Findings", ""] + [f"- {n}" for n in notes]
    lines += ["", END_MARK]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Replace the compare_pythae section of `path` (or create the file), keeping everything else."""
    section = render_markdown(results)
    if path.exists():
        text = path.read_text()
        if BEGIN_MARK in text and END_MARK in text:
            head, rest = text.split(BEGIN_MARK, 1)
            tail = rest.split(END_MARK, 1)[1]
            text = head + section.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = "# Benchmarks\n\nFigures measured by the scripts in `bench/`; each section is rendered from its JSON.\n\n" + section
    path.write_text(text)


# --------------------------------------------------------------------------- profiling


def profile_steps(budget: Budget, data_path: Path, steps: int = 30) -> None:
    """torch.profiler tables of training steps of ours vs pythae's hand loop, and one evaluation."""
    from torch.profiler import ProfilerActivity, profile

    from vhp_core import train_step

    ensure_data(data_path)
    torch.set_num_threads(budget.threads)
    arrays = load_arrays(data_path, 2000)
    batches = list(epoch_batches(arrays.train, 0, budget.batch_size, budget.seed))[:steps]
    for model in ("vae", "iwae"):
        ours = OursRunner(Run("ours", model), budget, arrays.x_shape, len(arrays.train))
        theirs = PythaeLoopRunner(Run("pythae", model), budget, arrays.x_shape, 1000)
        for name, runner in (("ours", ours), ("pythae", theirs)):
            runner.train_epoch(batches[:5])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runner.train_epoch(batches)
            print(f"==== {name} {model}: {steps} training steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    x = arrays.test_binarised[:4]
    ours = OursRunner(Run("ours", "vae"), budget, arrays.x_shape, len(arrays.train))
    theirs = PythaeLoopRunner(Run("pythae", "vae"), budget, arrays.x_shape, 1000)
    for name, runner in (("ours", ours), ("pythae", theirs)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner.log_likelihood(x, budget.subset_samples, EVAL_SEED)
        print(f"==== {name} vae: log-likelihood of {len(x)} points, S = {budget.subset_samples}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    del train_step


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: small budget, checks the whole path")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/compare_pythae.json; "
                        "with --quick a file in the temp folder)")
    parser.add_argument("--markdown", type=Path, help="Markdown file whose compare_pythae section is rendered "
                        "(default: BENCHMARKS.md for the full run; none with --quick)")
    parser.add_argument("--data", type=Path, default=DATA, help="the Fashion-MNIST zarr group (created when missing)")
    parser.add_argument("--epochs", type=int, help="override the budget's epochs")
    parser.add_argument("--threads", type=int, help="override the budget's torch threads per worker")
    parser.add_argument("--only", nargs="*", help="run only these rows (keys like ours/vae/loop/fp32)")
    parser.add_argument("--render-only", action="store_true", help="render the Markdown from an existing JSON")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables and exit")
    parser.add_argument("--notes", type=Path, help="JSON list of findings to store in the results and render")
    args = parser.parse_args(argv)

    budget = QUICK if args.quick else FULL
    if args.epochs:
        budget = dataclasses.replace(budget, epochs=args.epochs)
    if args.threads:
        budget = dataclasses.replace(budget, threads=args.threads)
    out = args.out or (Path(tempfile.gettempdir()) / "compare_pythae_quick.json" if args.quick else RESULTS)
    markdown = args.markdown or (None if args.quick else MARKDOWN)

    if args.profile:
        profile_steps(budget, args.data)
        return 0
    if args.render_only:
        results = json.loads(out.read_text())
        results["comparison"] = compare(results)
        if args.notes:
            results["notes"] = json.loads(args.notes.read_text())
        out.write_text(json.dumps(results, indent=1) + "\n")
        write_markdown(results, markdown or MARKDOWN)
        print(f"rendered {markdown or MARKDOWN} from {out}")
        return 0

    runs = RUNS if not args.only else tuple(r for r in RUNS if r.key in set(args.only))
    results = run_comparison(budget, runs, args.data, args.quick)
    if args.notes:
        results["notes"] = json.loads(args.notes.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    print(json.dumps(results["comparison"], indent=1))
    if markdown:
        write_markdown(results, markdown)
        print(f"rendered {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
