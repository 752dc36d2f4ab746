"""BENCHMARKS.md's gpu section, rendered from bench/results/gpu.json between its own markers.

Only the bytes between `<!-- gpu:begin ... -->` and `<!-- gpu:end -->` change; where the
markers are missing the section is appended at the end of the file (``_benchmarks_md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _benchmarks_md import render_section

NOTE = "(rendered by bench/gpu.py from bench/results/gpu.json)"


def _num(value: Any, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)


def _loads(values: Any) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "—"


def _met(goal: dict[str, Any] | None) -> str:
    return "—" if not goal else ("met" if goal.get("met") else "**missed**")


def section(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    merged = r.get("merged_from") or {}
    lines = ["## One GPU: vhp_core against pythae 0.1.2, and the log-likelihood at S = 5000", "",
             f"All figures come from one run of `bench/gpu.py` ({r.get('total_s', '?')} s"
             + (", tiny sizes" if r.get("tiny") else "") + ")"
             + (f"; the phases {', '.join(merged.get('phases_kept') or [])} from an earlier run "
                f"({merged.get('started')}, {merged.get('total_s')} s) on the same kind of machine" if merged else "")
             + ".", "",
             f"- Machine: {m.get('device_name', 'no GPU')} ({m.get('memory_gib', '?')} GiB, driver {m.get('driver')}), "
             f"{m.get('cpus')} CPUs; Python {m.get('python')}, torch {m.get('torch')} (CUDA {m.get('torch_cuda')}), "
             f"pythae {(r.get('wheels') or {}).get('pythae', 'not run')}. Load average at the start "
             f"{_loads(m.get('load_average_start'))}, at the end {_loads(r.get('load_average_end'))}.",
             f"- TF32: {m.get('tf32_policy', '—')}. `precision: auto` resolves to bf16 here: "
             f"{m.get('bf16_supported')}.",
             f"- CUDA tests (`pytest -m gpu`): {(r.get('tests') or {}).get('summary', 'not run')}.", ""]
    train = r.get("training") or {}
    lines += ["Training, 784-300-300-40 tanh MLPs, dynamically binarised Fashion-MNIST, batch 100, Adam "
              "(median epoch; pythae's BaseTrainer: one epoch, its own DataLoader):", "",
              "| row | precision | samples/s | × pythae's trainer | loss at the end (mean ± se) |",
              "|---|---|---:|---:|---:|"]
    for key, row in train.items():
        if not isinstance(row, dict):
            continue
        tail = row.get("loss_tail") or {}
        note = row.get("error") or row.get("skipped")
        loss = f"{tail['mean']:.2f} ± {_num(tail.get('se'), '.2f')}" if tail else "—"
        ref = (train.get(f"pythae-trainer/{key.split('/')[1]}/fp32") or {}).get("samples_per_s") if "/" in key else None
        ratio = row["samples_per_s"] / ref if ref and row.get("samples_per_s") else None
        name = key.rsplit("/", 1)[0] + (" (one CUDA graph per step)" if key.endswith("/graphed") else "")
        lines.append(f"| {name} | {row.get('precision', 'fp32')} | "
                     f"{note or _num(row.get('samples_per_s'))} | {_num(ratio, '.2f')} | {loss} |")
    for key, row in train.items():
        if isinstance(row, dict) and key.endswith("/graphed") and "samples_per_s" in row:
            lines.append(f"\n- {key}: forward, backward and Adam ({row.get('optimiser')}) captured once, replayed per "
                         f"batch (captured: {row.get('captured')}; noise: {row.get('rng')}); "
                         f"{_num(row.get('speedup_vs_eager'), '.2f')}× the eager row; log-likelihood "
                         f"{_num(row.get('ll_lever'), '.3f')} vs eager {_num(row.get('ll_eager'), '.3f')} "
                         f"(tolerance {_num(row.get('ll_tolerance'), '.3f')}), same loss curve as eager: "
                         f"{row.get('same_curve_as_eager')}, non-finite steps {row.get('nonfinite_steps')}: "
                         f"{'adopted' if row.get('adopt') else 'not adopted'}.")
    goals = r.get("goals") or {}
    lines += [""]
    for model in ("vae", "iwae"):
        g = goals.get(f"train_{model}") or {}
        lines.append(f"- {model}: {_num(g.get('speedup'), '.1f')}× pythae's trainer ({g.get('row', '—')}, "
                     f"same loss curve within noise: {g.get('same_loss_curve')}); goal ≥ {g.get('goal')}×: "
                     f"{_met(g)}.")
    lo = r.get("launch_overhead") or {}
    if "step_ms_batch_100" in lo:
        lever = lo.get("lever") or {}
        lines.append(f"- Launch overhead: a step takes {lo['step_ms_batch_100']:.2f} ms at batch 100 and "
                     f"{lo['step_ms_batch_1000']:.2f} ms at batch 1000 (a sample costs "
                     f"{lo['per_sample_cost_ratio_100_vs_1000']:.1f}× more at batch 100). Lever"
                     f"{' ' + lever['mode'] if 'mode' in lever else ''}: "
                     + (f"{lever['speedup']:.2f}× the eager samples/s, log-likelihood {_num(lever.get('ll_lever'), '.3f')} "
                        f"vs {_num(lever.get('ll_eager'), '.3f')} (tolerance {_num(lever.get('ll_tolerance'), '.3f')}): "
                        f"{'adopted' if lever.get('adopt') else 'not adopted'}."
                        if "speedup" in lever else f"{lever.get('skipped') or lever.get('error') or 'not measured'}."))
    ll = r.get("log_likelihood") or {}
    lines += ["", "Log-likelihood, S = 5000 importance samples (vhp: K_eval = 16), fp32 models of the training rows:", "",
              "| model | test points | seconds | goal | log p(x) (mean ± se) |", "|---|---:|---:|---:|---:|"]
    for model in ("vae", "iwae", "vhp"):
        row, g = ll.get(model) or {}, goals.get(f"ll_{model}") or {}
        if "full_s" not in row:
            lines.append(f"| {model} | — | {row.get('skipped') or row.get('error', '—')} | {g.get('goal')} s | — |")
            continue
        secs = f"{row['full_s']:.1f}" + (" (extrapolated)" if row.get("extrapolated") else "")
        lines.append(f"| {model} | {row['points']:,} of {row['of']:,} | {secs} | ≤ {g.get('goal')} s: {_met(g)} | "
                     f"{row['mean']:.2f} ± {_num(row.get('sem'), '.2f')} |")
    for name in ("cpu_gpu_vae", "cpu_gpu_vhp"):
        c = ll.get(name)
        if c:
            lines.append(f"\n- CPU ↔ GPU, {name[8:]}, the same draws on {c['points']} points at S = {c['samples']}: "
                         f"largest difference {c['max_abs_diff']:.1e} nats (tolerance {c['tolerance']:.0e}).")
    prof = r.get("profiles") or {}
    if isinstance(prof, dict) and any(isinstance(v, str) for v in prof.values()):
        lines += ["", "Where the time goes for the goals missed (torch.profiler, top rows by device time; "
                  "full tables in the JSON):", ""]
        for key, table in prof.items():
            if isinstance(table, str):
                head = "\n".join(table.splitlines()[:10])
                lines += [f"{key}:", "", "```", head, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def render(json_path: Path, md_path: Path) -> None:
    if not Path(json_path).is_file():
        raise SystemExit(f"{json_path}: no results to render; run bench/gpu.py on a GPU first")
    results = json.loads(Path(json_path).read_text())
    render_section("gpu", section(results), Path(md_path), note=NOTE)
    print(f"rendered the gpu section of {md_path}")
