"""bench/gpu.py's measurements: training throughput (ours, pythae's hand loop, pythae's BaseTrainer),
log-likelihood timing, and torch.profiler summaries where a goal is missed.

The model and data are compare_pythae's (params.yaml's model with pythae's MNIST setting as
overrides: 784-300-300-40 MLPs, Bernoulli likelihood, dynamically binarised Fashion-MNIST,
Adam, batch 100): a `Setting` of bench/_compare_setting.py, resolved from params.yaml.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch

from _compare_setting import Run, Setting, build_pythae
from _gpu_setup import sync

SEED = 0  # initial weights, shuffles and draws of every row


class Batches:
    """The epoch's batches on the device: a seeded shuffle and a fresh Bernoulli draw of each batch.

    The grey levels live on the device as uint8 once; a step copies nothing from the host.
    """

    def __init__(self, train_u8: torch.Tensor, batch_size: int, seed: int) -> None:
        self.train = train_u8
        self.batch_size = batch_size
        self.gen = torch.Generator(device=train_u8.device).manual_seed(seed)

    def epoch(self, limit: int | None = None):
        n = self.train.shape[0] if limit is None else min(limit, self.train.shape[0])
        order = torch.randperm(self.train.shape[0], generator=self.gen, device=self.train.device)[:n]
        for i in range(0, n, self.batch_size):
            grey = self.train[order[i:i + self.batch_size]].float().div_(255.0)
            yield torch.bernoulli(grey, generator=self.gen)


class Ours:
    """vhp_core.build_model + vhp_core.train_step on the device (as OursRunner of compare_pythae)."""

    def __init__(self, model: str, precision: str, setting: Setting, device: torch.device,
                 compile_mode: str | None = None) -> None:
        from vhp_core import ConstraintState, build_model
        from vhp_core.networks import Network

        torch.manual_seed(SEED)
        self.model = build_model(setting.model_config(model, precision)).to(device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=setting.lr, fused=True)
        self.cfg = setting.constraint_config()  # params.yaml's kappa and REWO constants, for the setting's run length
        self.state = ConstraintState.initial(self.cfg, self.model.rule)
        self.generator = torch.Generator(device=device).manual_seed(SEED + 1)
        if compile_mode:
            for network in [m for m in self.model.modules() if isinstance(m, Network)]:
                network.body = torch.compile(network.body, mode=compile_mode)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        from vhp_core import train_step

        self.state, terms = train_step(self.model, self.optimiser, x, self.state, self.cfg, self.generator)
        return terms.total  # -ELBO (vae) or -IW bound (iwae) per data point for lambda = 1; REWO's objective for vhp


class PythaeLoop:
    """The same hand loop around pythae's model: forward(...).loss, backward, Adam step, loss.item()."""

    def __init__(self, model: str, setting: Setting, device: torch.device) -> None:
        self.model = build_pythae(Run("pythae", model), setting, SEED).to(device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=setting.lr)
        self.epoch = 1

    def step(self, x: torch.Tensor) -> float:
        out = self.model({"data": x}, epoch=self.epoch)
        self.optimiser.zero_grad()
        out.loss.backward()
        self.optimiser.step()
        return out.loss.item()


def time_epochs(runner: Any, batches: Batches, epochs: int, cap_s: float, limit: int | None = None) -> dict[str, Any]:
    """Train `epochs` epochs (fewer when `cap_s` runs out); samples/s of each, the per-step losses."""
    rates, losses, t_start = [], [], time.monotonic()
    for _ in range(epochs):
        if rates and time.monotonic() - t_start > cap_s:
            break
        sync()
        t0, n = time.perf_counter(), 0
        for x in batches.epoch(limit):
            losses.append(runner.step(x))
            n += x.shape[0]
        sync()
        rates.append(n / (time.perf_counter() - t0))
    values = [float(v) for v in (torch.stack(losses).tolist() if losses and torch.is_tensor(losses[0]) else losses)]
    return {"samples_per_s_epochs": rates, "samples_per_s": statistics.median(rates[1:] or rates),
            "epochs": len(rates), "loss_curve": curve(values), "loss_tail": tail(values)}


def curve(values: list[float], points: int = 30) -> list[float]:
    """The per-step losses as `points` window means."""
    if not values:
        return []
    edges = np.linspace(0, len(values), min(points, len(values)) + 1).astype(int)
    return [float(np.mean(values[a:b])) for a, b in zip(edges[:-1], edges[1:])]


def tail(values: list[float], fraction: float = 0.2) -> dict[str, float]:
    """Mean of the last `fraction` of the steps and its standard error (in windows of 20 steps, which decorrelates)."""
    last = np.asarray(values[-max(20, int(len(values) * fraction)):], dtype=float)
    windows = last[: len(last) // 20 * 20].reshape(-1, 20).mean(axis=1) if len(last) >= 40 else last
    se = float(windows.std(ddof=1) / math.sqrt(len(windows))) if len(windows) > 1 else math.nan
    return {"mean": float(last.mean()), "se": se, "steps": int(len(last))}


def time_trainer(model: str, setting: Setting, train_u8: np.ndarray, n: int, use_cuda: bool) -> dict[str, Any]:
    """pythae's BaseTrainer for one epoch over n binarised images, timed by an epoch callback."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    for name in ("pythae.trainers.base_trainer.base_trainer", "pythae.trainers.training_callbacks"):
        logging.getLogger(name).setLevel(logging.WARNING)
    g = torch.Generator().manual_seed(SEED + 2)
    data = torch.bernoulli(torch.from_numpy(train_u8[:n]).float().div_(255.0), generator=g)
    marks: dict[str, float] = {}

    class EpochTimer(TrainingCallback):
        def on_epoch_begin(self, training_config, **kwargs):
            marks["begin"] = time.perf_counter()

        def on_epoch_end(self, training_config, **kwargs):
            sync()
            marks["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="gpu_bench_pythae_") as workdir:
        config = BaseTrainerConfig(output_dir=workdir, per_device_train_batch_size=setting.batch_size, num_epochs=1,
                                   learning_rate=setting.lr, optimizer_cls="Adam", steps_saving=None,
                                   steps_predict=None, no_cuda=not use_cuda, seed=SEED)
        trainer = BaseTrainer(model=build_pythae(Run("pythae", model), setting, SEED),
                              train_dataset=BaseDataset(data, torch.zeros(n)), training_config=config,
                              callbacks=[EpochTimer()])
        trainer.train()
    return {"samples_per_s": n / (marks["end"] - marks["begin"]), "samples": n,
            "device": str(next(trainer.model.parameters()).device)}


# --------------------------------------------------------------------------- log-likelihood


def time_log_likelihood(model: torch.nn.Module, x: torch.Tensor, samples: int, k_eval: int | None, cap_s: float,
                        seed: int = 7) -> dict[str, Any]:
    """S-sample log-likelihood of the rows of x on their device, in pieces, stopping when `cap_s` runs out.

    The first piece (a few rows) predicts the whole; if the prediction exceeds the cap, only
    as many rows as fit are done and the full time is extrapolated (and says so).
    """
    from vhp_core import log_likelihood
    from vhp_core.estimators import default_chunk

    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    chunk = default_chunk(model, x.device)
    rows_per_piece = max(1, min(len(x), 500))
    log_likelihood(model, x[:2], min(samples, 50), n_inner=k_eval, generator=gen)  # warm-up, untimed
    sync()
    out, t0 = [], time.perf_counter()
    done = 0
    while done < len(x):
        piece = x[done:done + rows_per_piece]
        out.append(log_likelihood(model, piece, samples, n_inner=k_eval, generator=gen))
        sync()
        done += len(piece)
        elapsed = time.perf_counter() - t0
        if done < len(x) and elapsed / done * len(x) > cap_s and elapsed > 0.25 * cap_s:
            break
        if elapsed > cap_s:
            break
    wall = time.perf_counter() - t0
    ll = torch.cat(out).cpu().numpy()
    return {"points": int(done), "of": int(len(x)), "wall_s": wall, "full_s": wall / done * len(x),
            "extrapolated": done < len(x), "chunk": int(chunk), "samples": samples, "k_eval": k_eval,
            "mean": float(ll.mean()), "sem": float(ll.std(ddof=1) / math.sqrt(len(ll))) if len(ll) > 1 else None,
            "_values": ll}


def cpu_gpu_same_numbers(model: torch.nn.Module, x: torch.Tensor, samples: int, k_eval: int | None) -> dict[str, Any]:
    """The same weights and draws (one CPU generator) on the CPU and on the GPU: the largest difference."""
    import copy

    from vhp_core import log_likelihood

    chunk = 4096
    cpu_model = copy.deepcopy(model).cpu().eval()
    t0 = time.perf_counter()
    cpu = log_likelihood(cpu_model, x.cpu(), samples, n_inner=k_eval, chunk=chunk,
                         generator=torch.Generator().manual_seed(11))
    cpu_s = time.perf_counter() - t0
    gpu = log_likelihood(model.eval(), x, samples, n_inner=k_eval, chunk=chunk,
                         generator=torch.Generator().manual_seed(11)).cpu()
    diff = (gpu - cpu).abs()
    return {"points": int(len(x)), "samples": samples, "max_abs_diff": float(diff.max()),
            "mean_cpu": float(cpu.mean()), "mean_gpu": float(gpu.mean()), "cpu_s": cpu_s, "tolerance": 2e-3,
            "same": bool(diff.max() <= 2e-3)}


# --------------------------------------------------------------------------- profiles


def profile_table(fn: Callable[[], Any], rows: int = 12) -> str:
    """torch.profiler's table of `fn` (CPU and CUDA activities), the rows taking the most device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    averages = prof.key_averages()
    keys = ("self_device_time_total", "self_cuda_time_total") if torch.cuda.is_available() else ()
    for key in (*keys, "self_cpu_time_total"):
        try:
            return averages.table(sort_by=key, row_limit=rows, max_name_column_width=48)
        except (AttributeError, KeyError, ValueError, RuntimeError):
            continue
    return str(averages)[:4000]


def step_time_ms(runner: Ours, batches: Batches, batch_size: int, steps: int) -> float:
    """Milliseconds a training step takes at `batch_size` (after 5 warm-up steps)."""
    old = batches.batch_size
    batches.batch_size = batch_size

    def endless():
        while True:
            yield from batches.epoch()

    try:
        it = endless()
        for _ in range(5):
            runner.step(next(it))
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step(next(it))
        sync()
        return (time.perf_counter() - t0) / steps * 1e3
    finally:
        batches.batch_size = old
