"""The rows of the pythae comparison, inside their worker processes: ours, pythae's hand loop, pythae's BaseTrainer.

Each runner trains one epoch on the batches it is given (`train_epoch`), counts the matmul
FLOPs of a training step and of an evaluated point, and estimates per-point test
log-likelihoods (`log_likelihood`). Ours is vhp_core.build_model + vhp_core.train_step with
the setting's configs (params.yaml with the comparison's overrides); pythae's models start
from our model's initial weights.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from _compare_data import Arrays
from _compare_setting import Budget, Run, Setting, build_pythae


class OursRunner:
    """vhp_core.build_model + vhp_core.train_step; evaluation by vhp_core.log_likelihood."""

    def __init__(self, run: Run, setting: Setting, budget: Budget) -> None:
        from vhp_core import ConstraintState, build_model

        torch.manual_seed(budget.seed)
        self.budget = budget
        self.model = build_model(setting.model_config(run.model, run.precision))
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=setting.lr, fused=True)  # as pipelines.train.fit
        self.cfg = setting.constraint_config()  # kappa and REWO's constants of params.yaml, for this run's length
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

    def __init__(self, run: Run, setting: Setting, budget: Budget, nll_batch: int) -> None:
        self.model = build_pythae(run, setting, budget.seed)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=setting.lr)
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

    def __init__(self, run: Run, setting: Setting, budget: Budget, arrays: Arrays, workdir: str) -> None:
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
            output_dir=workdir, per_device_train_batch_size=setting.batch_size, num_epochs=1,
            learning_rate=setting.lr, optimizer_cls="Adam", steps_saving=None, steps_predict=None,
            no_cuda=True, seed=budget.seed,
        )
        self.trainer = BaseTrainer(
            model=build_pythae(run, setting, budget.seed), train_dataset=self.dataset, training_config=config,
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
