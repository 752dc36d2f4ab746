"""Benchmark on one CUDA GPU: correctness tests, training throughput against pythae 0.1.2, log-likelihood speed.

One command, at most 8 minutes on one GPU (every phase has a time cap; the JSON is
rewritten after each phase, so a cut run keeps what it measured):

1. `pytest -m gpu tests/test_gpu.py`: bf16 precision on CUDA, bit-identical resume on CUDA,
   data-parallel training over NCCL on every GPU present, CPU <-> GPU same log-likelihoods.
2. Training samples/s of our vae, iwae and vhp (fp32, and `precision: auto`, which is bf16
   on a bf16 GPU) against pythae's hand loop and pythae's own BaseTrainer, on the same GPU,
   model and data: compare_pythae's 784-300-300-40 tanh MLPs on dynamically binarised
   Fashion-MNIST (the 60,000 training images), Adam, batch 100. Loss curves side by side.
   Our data live on the GPU as uint8 once; pythae's trainer uses its own DataLoader.
3. Launch overhead: a step's time at batch 100 against batch 1000, and one lever,
   `torch.compile(mode="reduce-overhead")` (CUDA graphs) of the network bodies, adopted
   only where it is faster and the log-likelihood stays within tolerance.
4. S = 5000 log-likelihood on all 10,000 test points (vae, iwae; vhp with K_eval 16),
   and CPU <-> GPU numbers with the same draws.
5. Goals met or missed; for a missed one a torch.profiler table says where the time goes.

Imports vhp_core, torch, numpy, and pythae from carried wheels (--wheels). The model and its
constraint are params.yaml's with compare_pythae's overrides (bench/_compare_setting.py),
resolved through the pipeline where it is installed; on a GPU machine without it (no Prefect,
no zarr) from the setting carried beside the data (--setting, written by --write-setting on a
machine with the pipeline, for the same sizes). Without CUDA it says so in one line, runs its
CPU-side checks and exits 0; `--force-cpu --tiny` runs every phase on the CPU with small sizes
(a check of the script itself).

Run:  python bench/gpu.py --write-setting .gpu_carry/setting.json   (where the pipeline is installed)
      python bench/gpu.py --data-dir .gpu_carry/fmnist --wheels .gpu_carry/wheels --out $OUT/gpu.json
      python bench/gpu.py --render-only     (BENCHMARKS.md's gpu section from bench/results/gpu.json)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # pythae's trainer draws progress bars; read when tqdm is imported
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO)]
SITE = "/tmp/vhp_gpu_site"

from _gpu_wheels import install_from_argv  # noqa: E402

# before torch: a carried typing_extensions or pydantic must be the one every later import sees
WHEELS = install_from_argv(sys.argv[1:], REPO / ".gpu_carry" / "wheels", SITE)

import torch  # noqa: E402

from _gpu_goals import GOALS, goals  # noqa: E402
from _gpu_render import render  # noqa: E402
from _params import describe  # noqa: E402
from _gpu_setup import (Deadline, Results, gpu_info, gpu_setting, load_fashion_mnist, merge_base,  # noqa: E402
                        parse_phases, sync)
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = REPO / "bench" / "results" / "gpu.json"
TOTAL_S = 450.0  # 7.5 minutes: the 8-minute promise with room for start-up (--budget-s)


def phase(results: Results, name: str, fn: Callable[[], Any]) -> Any:
    """Run one phase; its result (or its error) goes into the JSON, which is saved either way."""
    t0 = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        value = fn()
    except Exception as err:  # a failed phase is recorded, the run goes on
        value = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        print(f"   {name} failed: {err}", flush=True)
    results.data.setdefault("phases_s", {})[name] = round(time.perf_counter() - t0, 1)
    results.data[name] = value
    results.save()
    return value


def run_tests(deadline: Deadline, site: str) -> dict[str, Any]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not importable here"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, str(REPO), str(REPO / "tests")])}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-o", "addopts=", "-q",
           "-rs", "-m", "gpu", "tests/test_gpu.py"]
    # its own process group, so that a timeout also ends the processes its tests spawn
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=deadline.cap(210))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"status": "timeout", "summary": "timed out", "output_tail": stdout[-3000:], "stderr_tail": stderr[-1500:]}
    lines = stdout.strip().splitlines()
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else "", "output_tail": stdout[-4000:],
            "stderr_tail": stderr[-1500:]}


def training(args, deadline: Deadline, device: torch.device, data, pythae_ok: bool, setting) -> dict[str, Any]:
    from _gpu_runs import Batches, Ours, PythaeLoop, time_epochs, time_trainer

    train_u8 = torch.from_numpy(data[0][: args.train_n]).to(device)
    rows: dict[str, Any] = {}
    plan = [("ours", m, p) for m in ("vae", "iwae", "vhp") for p in ("fp32", "auto")]
    plan += [("pythae-loop", m, "fp32") for m in ("vae", "iwae")] + [("pythae-trainer", m, "fp32")
                                                                     for m in ("vae", "iwae")]
    # last: a failed capture cannot cost the rows it is compared with
    plan += [("ours", m, "graphed") for m in ("vae", "iwae")]
    for i, (kind, model, precision) in enumerate(plan):
        key = f"{kind}/{model}/{precision}"
        cap = deadline.cap(min(args.row_cap, (deadline.left() - args.reserve_after_training) / (len(plan) - i)))
        if cap < 3:
            rows[key] = {"skipped": "out of time"}
            continue
        try:
            batches = Batches(train_u8, setting.batch_size, seed=1)
            if precision == "graphed":
                from _gpu_graph import graphed_row

                test = torch.from_numpy(data[1][: args.lever_ll_points]).to(device)
                rows[key] = graphed_row(model, setting, device, train_u8, args.epochs, cap, rows.get(f"ours/{model}/fp32", {}),
                                        test, args.lever_ll_samples, deadline.cap(20))
            elif kind == "ours":
                from vhp_core.precision import resolve_precision

                runner = Ours(model, resolve_precision(precision, device), setting, device)
                rows[key] = {**time_epochs(runner, batches, args.epochs, cap), "precision":
                             resolve_precision(precision, device)}
                if precision == "fp32":
                    rows[key]["_model"] = runner.model  # kept for the log-likelihood phase (not saved)
            elif not pythae_ok:
                rows[key] = {"skipped": "pythae is not importable"}
            elif kind == "pythae-loop":
                rows[key] = time_epochs(PythaeLoop(model, setting, device), batches, args.epochs, cap)
            else:
                rows[key] = time_trainer(model, setting, data[0], min(args.train_n, args.trainer_n), device.type == "cuda")
        except Exception as err:
            rows[key] = {"error": f"{type(err).__name__}: {err}"}
        shown = {k: v for k, v in rows[key].items() if k in ("samples_per_s", "error", "skipped", "adopt", "rng")}
        print(f"   {key}: {shown}", flush=True)
    return rows


def launch_overhead(args, deadline: Deadline, device: torch.device, data, trained: dict[str, Any],
                    setting) -> dict[str, Any]:
    """A step at batch 100 and 1000, and the CUDA-graph lever with its log-likelihood check."""
    from _gpu_runs import Batches, Ours, step_time_ms

    train_u8 = torch.from_numpy(data[0][: args.train_n]).to(device)
    runner = Ours("vae", "fp32", setting, device)
    batches = Batches(train_u8, setting.batch_size, seed=3)
    out: dict[str, Any] = {"step_ms_batch_100": step_time_ms(runner, batches, 100, 50),
                           "step_ms_batch_1000": step_time_ms(runner, batches, 1000, 20)}
    # time per sample at batch 100 over that at batch 1000: near 10 means a step costs the same whatever its size
    out["per_sample_cost_ratio_100_vs_1000"] = (out["step_ms_batch_100"] / 100) / (out["step_ms_batch_1000"] / 1000)
    if (device.type != "cuda" and not args.lever_on_cpu) or deadline.left() < args.lever_min_left:
        out["lever"] = {"skipped": "no CUDA" if device.type != "cuda" else "out of time"}
        return out
    from _gpu_graph import compile_lever

    try:
        out["lever"] = compile_lever(args, deadline, device, train_u8, data, trained, setting)
    except Exception as err:  # the step times above stay
        out["lever"] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
    return out


def log_likelihoods(args, deadline: Deadline, device: torch.device, data, trained: dict[str, Any]) -> dict[str, Any]:
    from _gpu_runs import cpu_gpu_same_numbers, time_log_likelihood

    test = torch.from_numpy(data[1][: args.test_n]).to(device)
    out: dict[str, Any] = {}
    for name, k_eval in (("vae", None), ("iwae", None), ("vhp", args.k_eval)):
        row = trained.get(f"ours/{name}/fp32", {})
        if "_model" not in row:
            out[name] = {"skipped": "no trained model"}
            continue
        goal = GOALS["ll_seconds"][name]
        cap = deadline.cap(min(args.ll_cap, max(goal * 1.5, 10)))
        out[name] = time_log_likelihood(row["_model"], test, args.samples, k_eval, cap)
        print(f"   {name}: {out[name]['points']}/{out[name]['of']} points in {out[name]['wall_s']:.1f} s "
              f"(full {out[name]['full_s']:.1f} s), mean {out[name]['mean']:.3f}", flush=True)
    if device.type == "cuda":
        for name, k_eval in (("vae", None), ("vhp", 4)):
            if "_model" in trained.get(f"ours/{name}/fp32", {}) and deadline.left() > 30:
                out[f"cpu_gpu_{name}"] = cpu_gpu_same_numbers(trained[f"ours/{name}/fp32"]["_model"], test[:64],
                                                              200, k_eval)
    return out


def profiles(args, deadline: Deadline, device: torch.device, data, results: dict[str, Any],
             trained: dict[str, Any], setting) -> dict[str, Any]:
    """Where the time goes, for each goal missed (a short run of the same work under torch.profiler)."""
    from _gpu_runs import Batches, Ours, profile_table
    from vhp_core import log_likelihood

    out: dict[str, Any] = {}
    for key, goal in (results.get("goals") or {}).items():
        if goal.get("met") or deadline.left() < 25:
            continue
        name = key.split("_", 1)[1]
        if key.startswith("train_") and f"ours/{name}/fp32" in trained:
            runner = Ours(name, "fp32", setting, device)
            batches = Batches(torch.from_numpy(data[0][:2000]).to(device), 100, seed=5)

            def work():
                for x in batches.epoch():
                    runner.step(x)
            out[key] = profile_table(work)
        elif key.startswith("ll_") and "_model" in trained.get(f"ours/{name}/fp32", {}):
            model = trained[f"ours/{name}/fp32"]["_model"]
            x = torch.from_numpy(data[1][:20]).to(device)
            k = args.k_eval if name == "vhp" else None
            out[key] = profile_table(lambda: log_likelihood(model, x, args.samples, n_inner=k))
    return out


def cpu_checks(args) -> dict[str, Any]:
    """What can be checked without a GPU: precision resolution, the data files, the setting, the estimator."""
    from vhp_core import build_model, log_likelihood
    from vhp_core.precision import TF32_POLICY, resolve_precision

    out: dict[str, Any] = {"precision_auto_cpu": resolve_precision("auto", "cpu"), "tf32_policy": TF32_POLICY}
    if not (args.data_dir and Path(args.data_dir).is_dir()):
        return out
    train, test = load_fashion_mnist(Path(args.data_dir))
    out["data"] = {"train": list(train.shape), "test": list(test.shape), "test_ones": float(test.mean())}
    try:
        setting, out["setting"] = gpu_setting(args.epochs, len(train[: args.train_n]), Path(args.setting))
    except SystemExit as err:  # reported: the GPU run would refuse the same way
        out["setting"] = str(err)
        return out
    torch.manual_seed(0)
    model = build_model(setting.model_config("vae"))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))
    ll = log_likelihood(model, x, 20, generator=torch.Generator().manual_seed(0))
    out["ll_finite"] = bool(torch.isfinite(ll).all())
    return out


def write_setting(args) -> int:
    """--write-setting: the setting of a run of these sizes, from params.yaml, for a machine without the pipeline."""
    from _compare_setting import resolve

    train, _ = load_fashion_mnist(Path(args.data_dir))
    setting = resolve(args.epochs, len(train[: args.train_n]))
    atomic_write_text(Path(args.write_setting), setting.to_json())
    print(f"wrote {args.write_setting}: {describe(setting.overrides)}, {setting.epochs} epochs over "
          f"{setting.n_train} images")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO / ".gpu_carry" / "fmnist"), help="Fashion-MNIST idx .gz files")
    p.add_argument("--wheels", default=str(REPO / ".gpu_carry" / "wheels"), help="pythae and its pure-Python wheels")
    p.add_argument("--site", default=SITE, help="where the wheels are unpacked")
    p.add_argument("--out", action="append", default=[], help="another path to write the JSON to (repeatable)")
    p.add_argument("--render-only", action="store_true", help="render BENCHMARKS.md's gpu section from the JSON")
    p.add_argument("--force-cpu", action="store_true", help="run every phase on the CPU (checks the script)")
    p.add_argument("--tiny", action="store_true", help="small sizes (with --force-cpu: a few minutes on 2 cores)")
    p.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    p.add_argument("--lever-on-cpu", action="store_true", help="with --force-cpu: try the compile lever too")
    p.add_argument("--lever-mode", default="reduce-overhead", help="torch.compile mode of the lever")
    p.add_argument("--phases", default="tests,training,launch_overhead,log_likelihood,profiles",
                   help="comma-separated phases to run (default: all)")
    p.add_argument("--merge", default=None, help="an earlier results JSON: keep its phases not run now")
    p.add_argument("--budget-s", type=float, default=TOTAL_S, help="the whole run's wall-clock budget")
    p.add_argument("--setting", default=str(REPO / ".gpu_carry" / "setting.json"),
                   help="the model setting carried to a machine without the pipeline (see --write-setting)")
    p.add_argument("--write-setting", default=None, metavar="PATH",
                   help="resolve the setting from params.yaml for these sizes (--tiny), write it to PATH and exit")
    args = p.parse_args(argv)
    phases = parse_phases(args.phases)
    if args.skip_tests and "tests" in phases:
        phases.remove("tests")
    if args.render_only:
        render(RESULTS, REPO / "BENCHMARKS.md")
        return 0
    sizes = dict(train_n=60000, trainer_n=60000, epochs=3, test_n=10000, samples=5000, k_eval=16, row_cap=40.0,
                 ll_cap=150.0, reserve_after_training=200.0, lever_min_left=90.0, lever_ll_points=2000,
                 lever_ll_samples=1000)
    if args.tiny:
        sizes.update(train_n=1000, trainer_n=500, epochs=2, test_n=60, samples=100, k_eval=4, row_cap=15.0,
                     ll_cap=15.0, reserve_after_training=40.0, lever_min_left=0.0, lever_ll_points=20,
                     lever_ll_samples=50)
    # time kept for the phases after training, in proportion to the default run's
    shares = {"launch_overhead": 0.35, "log_likelihood": 0.55, "profiles": 0.1}
    sizes["reserve_after_training"] *= sum(v for k, v in shares.items() if k in phases)
    for k, v in sizes.items():
        setattr(args, k, v)
    if args.write_setting:
        return write_setting(args)
    base = merge_base(Path(args.merge) if args.merge else None, phases)
    deadline = Deadline(args.budget_s)
    info = gpu_info()
    if not info["cuda"] and not args.force_cpu:
        print("bench/gpu.py: no CUDA device here; ran the CPU-side checks only, no GPU figures: "
              f"{cpu_checks(args)}")
        return 0
    device = torch.device("cuda" if info["cuda"] and not args.force_cpu else "cpu")
    if device.type == "cuda":
        from vhp_core.precision import TF32_POLICY, apply_tf32_policy

        apply_tf32_policy()
        info["tf32_policy"] = TF32_POLICY
    paths = [Path(o) for o in args.out] + ([RESULTS] if device.type == "cuda" else [])
    results = Results(paths, {**base, "machine": info, "device": device.type, "tiny": args.tiny, "sizes": sizes,
                              "goals_set": GOALS, "phases_run": phases,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    results.save()
    wheels = phase(results, "wheels", lambda: dict(WHEELS or {}))  # unpacked at import time, before torch
    try:
        import pythae

        wheels["pythae"] = getattr(pythae, "__version__", None) or "imported"
        pythae_ok = True
    except Exception as err:  # noqa: BLE001 - reported, the pythae rows are skipped
        wheels["pythae_error"] = f"{type(err).__name__}: {err}"
        pythae_ok = False
    if "tests" in phases:
        phase(results, "tests", lambda: run_tests(deadline, args.site))
    data = load_fashion_mnist(Path(args.data_dir)) if set(phases) - {"tests"} else None
    setting = None
    if data is not None:
        setting, source = gpu_setting(args.epochs, len(data[0][: args.train_n]), Path(args.setting))
        results.data["setting"] = {"source": source, "overrides": setting.overrides}
        print(f"   model and constraint from {source}: {describe(setting.overrides)}", flush=True)
    trained: dict[str, Any] = {}
    if "training" in phases:
        trained = phase(results, "training", lambda: training(args, deadline, device, data, pythae_ok, setting))
    if "log_likelihood" in phases:
        phase(results, "log_likelihood", lambda: log_likelihoods(args, deadline, device, data, trained))
    results.data["goals"] = goals(results.data)
    results.save()
    if "profiles" in phases:
        phase(results, "profiles", lambda: profiles(args, deadline, device, data, results.data, trained, setting))
    if "launch_overhead" in phases:  # last: torch.compile's lever may take long to compile
        phase(results, "launch_overhead", lambda: launch_overhead(args, deadline, device, data, trained, setting))
    sync()
    results.data.update(load_average_end=os.getloadavg(), total_s=round(deadline.elapsed(), 1),
                        peak_gpu_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
                        if device.type == "cuda" else None)
    results.save()
    if device.type == "cuda":
        try:
            render(RESULTS, REPO / "BENCHMARKS.md")
        except (Exception, SystemExit) as err:  # noqa: BLE001 - the JSON is written; render later with --render-only
            print(f"render failed: {err}")
    met = {k: v.get("met") for k, v in results.data["goals"].items()}
    print(f"done in {deadline.elapsed():.0f} s; goals met: {met}; wrote {', '.join(map(str, paths)) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
