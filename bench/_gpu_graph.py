"""bench/gpu.py's launch-overhead levers: a whole training step as one CUDA graph, and
torch.compile(mode="reduce-overhead") of the network bodies; the adoption check of both.

`Graphed` captures forward, backward and the Adam step (capturable) of a model whose lambda
never moves (rule 'none': vae, iwae) on a static input buffer, after warm-up steps on a side
stream, and replays it for each batch. The step's noise comes from the same seeded generator as
the eager runner's, registered with the graph where torch offers it (graph-safe RNG), else from
the default CUDA generator seeded alike. Each step's loss is cloned out of the graph's buffer.
The graph keeps no non-finite skip; instead it counts non-finite losses on the device and the
row reports the count. Without CUDA the same step runs uncaptured (a check of the logic only).

A lever is adopted only where it is faster than the eager row and the log-likelihood after
training stays within tolerance of the eager model's (paired: the same points and draws).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from _compare_setting import Setting
from _gpu_runs import SEED, Batches, Ours, time_epochs, time_log_likelihood


class Graphed(Ours):
    """Ours, with the whole step (forward, backward, Adam) captured once and replayed."""

    warmup_steps = 3

    def __init__(self, model: str, setting: Setting, device: torch.device) -> None:
        from vhp_core.constraint import objective_mode

        super().__init__(model, "fp32", setting, device)
        if self.model.rule != "none":
            raise ValueError(f"{model}: lambda moves under rule '{self.model.rule}'; a graph needs a static objective")
        if objective_mode(self.state, self.cfg, self.model.rule) != "lagrangian":
            raise ValueError(f"{model}: the objective is not the full bound at the start")
        self.lambda_ = float(self.state.lambda_)
        self.optimiser, self.optimiser_kind = _capturable_adam(self.model.parameters(), setting.lr, device)
        self.capture = device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.static_loss = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = 0
        self.rng = "uncaptured (no CUDA)"
        self.seed = SEED + 1

    def _body(self) -> None:
        parts = self.model.objective_parts(self.static_x, self.generator)
        total = parts.total(self.lambda_)
        total.backward()
        self.optimiser.step()
        self.static_loss.copy_(total.detach())
        self.nonfinite.add_((~torch.isfinite(total.detach())).long())

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_x is None:
            self.static_x = torch.empty_like(x)
        if x.shape != self.static_x.shape:
            raise ValueError(f"batch of shape {tuple(x.shape)}; the graph was captured for {tuple(self.static_x.shape)}")
        self.static_x.copy_(x)
        self.steps += 1
        if not self.capture or self.steps <= self.warmup_steps:
            self._eager()
        elif self.graph is None:
            self._capture()
            self.graph.replay()
        else:
            self.graph.replay()
        return self.static_loss.clone()

    def _eager(self) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        if not self.capture:
            self._body()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        register = getattr(graph, "register_generator_state", None)
        try:
            if register is None:
                raise AttributeError("torch.cuda.CUDAGraph has no register_generator_state")
            register(self.generator)
            self.rng = "the runner's seeded generator, registered with the graph"
        except Exception as err:  # noqa: BLE001 - fall back to the default CUDA generator
            torch.cuda.manual_seed(self.seed)
            self.generator = None
            self.rng = f"default CUDA generator (register_generator_state: {type(err).__name__}: {err})"
        self.optimiser.zero_grad(set_to_none=True)  # the graph's backward allocates the grads in its pool
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            self._body()
        self.graph = graph

    def report(self) -> dict[str, Any]:
        return {"captured": self.graph is not None, "rng": self.rng, "nonfinite_steps": int(self.nonfinite),
                "optimiser": self.optimiser_kind}


def _capturable_adam(params, lr: float, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    params = list(params)
    if device.type == "cuda":
        try:
            return torch.optim.Adam(params, lr=lr, fused=True, capturable=True), "Adam(fused, capturable)"
        except Exception:  # noqa: BLE001 - the foreach kernel is capturable too
            return torch.optim.Adam(params, lr=lr, foreach=True, capturable=True), "Adam(foreach, capturable)"
    return torch.optim.Adam(params, lr=lr, fused=True), "Adam(fused)"


class Compiled(Ours):
    """Ours with the network bodies under torch.compile; a new CUDA-graph step before each train step,
    and the returned loss cloned so no graph output is kept across steps."""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        if mark is not None:
            mark()
        return super().step(x).clone()


def ll_check(model: torch.nn.Module, eager_model: torch.nn.Module, test: torch.Tensor, samples: int,
             cap_s: float) -> dict[str, Any]:
    """The log-likelihood of a lever's model against the eager model's: paired (same points, same draws)."""
    ll_l = time_log_likelihood(model, test, samples, None, cap_s)
    ll_e = time_log_likelihood(eager_model, test, samples, None, cap_s)
    n = min(ll_l["points"], ll_e["points"])
    diff = ll_l["_values"][:n] - ll_e["_values"][:n]
    tol = max(0.05, 3 * float(diff.std(ddof=1)) / n ** 0.5) if n > 1 else 0.05
    return {"ll_lever": float(ll_l["_values"][:n].mean()), "ll_eager": float(ll_e["_values"][:n].mean()),
            "ll_points": n, "ll_samples": samples, "ll_tolerance": tol, "ll_same": bool(abs(float(diff.mean())) <= tol)}


def graphed_row(model: str, setting: Setting, device: torch.device, train_u8: torch.Tensor, epochs: int, cap_s: float,
                eager: dict[str, Any], test: torch.Tensor, ll_samples: int, ll_cap_s: float) -> dict[str, Any]:
    """Train `model` with the graphed step (same seeds and batches as the eager row), time it, check it."""
    t0 = time.perf_counter()
    runner = Graphed(model, setting, device)
    row: dict[str, Any] = {**time_epochs(runner, Batches(train_u8, setting.batch_size, seed=1), epochs, cap_s),
                           "precision": "fp32", **runner.report(), "setup_and_train_s": time.perf_counter() - t0}
    row["_model"] = runner.model
    if "samples_per_s" in eager:
        row["speedup_vs_eager"] = row["samples_per_s"] / eager["samples_per_s"]
        if eager.get("loss_tail") and row.get("loss_tail"):
            a, e = row["loss_tail"], eager["loss_tail"]
            noise = 3 * ((a["se"] or 0) ** 2 + (e["se"] or 0) ** 2) ** 0.5
            row["same_curve_as_eager"] = bool(abs(a["mean"] - e["mean"]) <= max(noise, 0.01 * abs(e["mean"])))
    if "_model" in eager:
        try:
            row.update(ll_check(runner.model, eager["_model"], test, ll_samples, ll_cap_s))
        except Exception as err:  # noqa: BLE001 - recorded; the row is then not adopted
            row["ll_error"] = f"{type(err).__name__}: {err}"
    row["adopt"] = adopt(row)
    return row


def adopt(row: dict[str, Any]) -> bool:
    """A lever's row counts only if it is faster than eager, its log-likelihood and loss curve the same."""
    return bool(row.get("samples_per_s") and row.get("speedup_vs_eager", 0) > 1.0 and row.get("ll_same") is True
                and row.get("same_curve_as_eager") is not False and not row.get("nonfinite_steps"))


def compile_lever(args, deadline, device: torch.device, train_u8: torch.Tensor, data, trained: dict[str, Any],
                  setting: Setting) -> dict[str, Any]:
    """torch.compile(mode=args.lever_mode) of the network bodies, with its log-likelihood check."""
    lever: dict[str, Any] = {"mode": f"torch.compile(mode='{args.lever_mode}') of the network bodies, "
                                     "cudagraph_mark_step_begin per step, losses cloned"}
    t0 = time.perf_counter()
    try:
        compiled = Compiled("vae", "fp32", setting, device, compile_mode=args.lever_mode)
        lever["train"] = time_epochs(compiled, Batches(train_u8, setting.batch_size, seed=1), args.epochs,
                                     deadline.cap(args.row_cap + 60))
    except Exception as err:  # noqa: BLE001
        lever["error"] = f"{type(err).__name__}: {err}"
        lever["traceback"] = traceback.format_exc()[-2000:]
        return lever
    lever["setup_and_train_s"] = time.perf_counter() - t0
    eager = trained.get("ours/vae/fp32", {})
    if "samples_per_s" in eager:
        lever["speedup"] = lever["train"]["samples_per_s"] / eager["samples_per_s"]
    if "_model" in eager:
        from vhp_core.networks import Network

        for network in [m for m in compiled.model.modules() if isinstance(m, Network)]:
            network.body = getattr(network.body, "_orig_mod", network.body)  # the trained weights, evaluated eagerly
        test = torch.from_numpy(data[1][: args.lever_ll_points]).to(device)
        try:
            lever.update(ll_check(compiled.model, eager["_model"], test, args.lever_ll_samples, deadline.cap(20)))
        except Exception as err:  # noqa: BLE001 - recorded; not adopted
            lever["ll_error"] = f"{type(err).__name__}: {err}"
        lever["adopt"] = bool(lever.get("ll_same") and lever.get("speedup", 0) > 1.1)
    return lever
