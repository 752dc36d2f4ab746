"""One process per row of the pythae comparison: the worker's command loop and the driver's handle of it.

A row's own process makes its peak RSS (the kernel's VmHWM, reset after set-up and before
evaluation) its own. The worker loads the data, builds its runner, reports its set-up
(memory, parameters, FLOPs of a step and of an evaluated point) and then obeys
(command, argument) messages: `epoch`, `reset_peak`, `ll`, `stop`.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from _compare_data import epoch_batches, load_arrays
from _compare_runners import OursRunner, PythaeLoopRunner, PythaeTrainerRunner
from _compare_setting import Budget, Run, Setting
from _machine import current_rss_mb, peak_rss_mb, reset_peak_rss


def worker_main(conn, run: Run, setting: Setting, budget: Budget, data_path: str, nll_batch: int, workdir: str) -> None:
    """One row's process: load data, build, then obey (command, argument) messages."""
    try:
        torch.set_num_threads(budget.threads)
        arrays = load_arrays(Path(data_path), budget.train_n)
        if run.library == "ours":
            runner: Any = OursRunner(run, setting, budget)
        elif run.driver == "loop":
            runner = PythaeLoopRunner(run, setting, budget, nll_batch)
        else:
            runner = PythaeTrainerRunner(run, setting, budget, arrays, workdir)
        n_params = sum(p.numel() for p in runner.model.parameters()) if hasattr(runner, "model") else None
        setup = {"rss_setup_mb": current_rss_mb(), "rss_setup_peak_mb": peak_rss_mb(), "n_params": n_params}
        if hasattr(runner, "training_flops"):
            x = next(epoch_batches(arrays.train, 10**6, setting.batch_size, budget.seed))
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
                conn.send(("ok", {"rss_peak_mb": peak_rss_mb()}))
                return
            if command == "epoch":
                result = runner.train_epoch(epoch_batches(arrays.train, arg, setting.batch_size, budget.seed))
                result["rss_mb"] = peak_rss_mb()
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
                conn.send(("ok", {"ll": ll.tolist(), "wall_s": wall, "cpu_s": cpu, "rss_mb": peak_rss_mb()}))
            else:
                conn.send(("error", f"unknown command {command!r}"))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class Worker:
    """Driver-side handle of a worker process."""

    def __init__(self, ctx, run: Run, setting: Setting, budget: Budget, data_path: Path, nll_batch: int,
                 workdir: str) -> None:
        self.run = run
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=worker_main, args=(child, run, setting, budget, str(data_path), nll_batch, workdir), daemon=True
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
