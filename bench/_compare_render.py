"""The compare_pythae section of BENCHMARKS.md, rendered entirely from the results JSON.

The section sits between its own markers; `write_markdown` replaces those bytes and keeps
everything else of the file (``_benchmarks_md.render_section``, as every bench's section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _benchmarks_md import render_section
from _compare_figures import row_label
from _compare_setting import PYTHAE_NAMES

SECTION = "compare_pythae"
NOTE = "(rendered by bench/compare_pythae.py from bench/results/compare_pythae.json)"


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def _command(recorded: str) -> str:
    # The JSON records the interpreter's base name; the project's interpreter is .venv/bin/python.
    return ".venv/bin/python " + recorded.split(" ", 1)[1] if " " in recorded else recorded




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
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Replace the compare_pythae section of `path` (or create the file), keeping everything else."""
    render_section(SECTION, render_markdown(results), Path(path), note=NOTE)
