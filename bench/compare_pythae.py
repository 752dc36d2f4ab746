"""Benchmark: vhp_core against pythae 0.1.2 on the same model, data and machine.

Data: dynamically binarised Fashion-MNIST from the zarr group of the prepare stage
(`vhp prepare fashion_mnist --out data/processed/fashion_mnist.zarr`, run here when the
group is missing). Every training batch is a fresh Bernoulli draw of the grey levels;
test log-likelihoods use the group's fixed binarised test set `test/x_binarised`.

Model, identical in both libraries: params.yaml's (the `train:` section through the
pipeline's `model_config` / `constraint_config`) with pythae's MNIST setting as overrides
(bench/_compare_setting.py: MLP encoder 784-300-300-(2 x 40) and decoder 40-300-300-784, a
40-d latent, batch 100, K_inner = k_iw), tanh, Bernoulli likelihood; Adam at params.yaml's
learning rate (constant, in both hand loops), the same number of epochs. The overrides are
printed and stored in the JSON (`overrides`). The pythae side gets its own Encoder/Decoder
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

The parts, one job each: _compare_setting (budgets, rows, the model from params.yaml),
_compare_data, _compare_runners (inside a worker), _compare_worker, _compare_run (the
driver), _compare_figures (goal figures from the rows), _compare_render (the Markdown);
bench/_machine.py records the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench/_*.py parts (also when imported)
from _compare_data import DATA, ensure_data, epoch_batches, load_arrays  # noqa: E402
from _compare_figures import compare  # noqa: E402
from _compare_render import write_markdown  # noqa: E402
from _compare_run import run_comparison  # noqa: E402
from _compare_runners import OursRunner, PythaeLoopRunner  # noqa: E402
from _compare_setting import EVAL_SEED, FULL, QUICK, RUNS, Budget, Run, resolve  # noqa: E402
from _params import describe  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "compare_pythae.json"
MARKDOWN = REPO / "BENCHMARKS.md"


def profile_steps(budget: Budget, data_path: Path, steps: int = 30) -> None:
    """torch.profiler tables of training steps of ours vs pythae's hand loop, and one evaluation."""
    from torch.profiler import ProfilerActivity, profile

    ensure_data(data_path)
    torch.set_num_threads(budget.threads)
    arrays = load_arrays(data_path, 2000)
    setting = resolve(budget.epochs, len(arrays.train))
    print(f"model and constraint: {describe(setting.overrides)}", flush=True)
    batches = list(epoch_batches(arrays.train, 0, setting.batch_size, budget.seed))[:steps]
    for model in ("vae", "iwae"):
        ours = OursRunner(Run("ours", model), setting, budget)
        theirs = PythaeLoopRunner(Run("pythae", model), setting, budget, 1000)
        for name, runner in (("ours", ours), ("pythae", theirs)):
            runner.train_epoch(batches[:5])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runner.train_epoch(batches)
            print(f"==== {name} {model}: {steps} training steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    x = arrays.test_binarised[:4]
    ours = OursRunner(Run("ours", "vae"), setting, budget)
    theirs = PythaeLoopRunner(Run("pythae", "vae"), setting, budget, 1000)
    for name, runner in (("ours", ours), ("pythae", theirs)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner.log_likelihood(x, budget.subset_samples, EVAL_SEED)
        print(f"==== {name} vae: log-likelihood of {len(x)} points, S = {budget.subset_samples}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


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
        atomic_write_text(out, json.dumps(results, indent=1) + "\n")
        write_markdown(results, markdown or MARKDOWN)
        print(f"rendered {markdown or MARKDOWN} from {out}")
        return 0

    runs = RUNS if not args.only else tuple(r for r in RUNS if r.key in set(args.only))
    results = run_comparison(budget, runs, args.data, args.quick)
    if args.notes:
        results["notes"] = json.loads(args.notes.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    print(json.dumps(results["comparison"], indent=1))
    if markdown:
        write_markdown(results, markdown)
        print(f"rendered {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
