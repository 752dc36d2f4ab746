"""Where VHP's held-out log-likelihood goes, from the claims run's models: the prior's train/test gap, reconstruction against prior part, sigma, capacity and inner samples.

For one data set of bench/claims.py's full run and the rows vhp, iwae and iwae (warm-up), every seed:
1. the prior's train/test gap in log p(z): the mean of log p(z) at codes z ~ q(z|x) of training
   points against codes of test points (`--codes` samples a point). For the hierarchical prior
   log p(z) is the importance-weighted bound F with K zetas, at K = 16 and K = 128 (has the inner
   estimate converged?); for N(0, I) the exact density. Also as the gap beside iwae's (same seed).
2. the test ELBO split into reconstruction E_q[log p(x|z)] and the prior part
   E_q[log p(z) - log q(z|x)] on the same points and codes (F at K = 128), beside the same split
   on the training points: does VHP lose in reconstruction (sigma, C) or in the prior?
3. each model's stored calibrated sigma and C (per-dimension squared error) on train/val/test,
   from the training's metrics.json;
4. the prior's capacity: parameters of p(z|zeta) and q(zeta|z) against the training split's
   whole sequences (the split unit, e.g. trials) and frames;
5. the test log-likelihood at K_eval = 16 and 128 (the evaluation's metrics.json).

Models load through pipelines.checkpoint.load_model and run in the evaluation's precision; data
through preprocessing.store.open_dataset. Output: bench/results/heldout_gap.json (merged data set
by data set), the `heldout_gap` section of BENCHMARKS.md, and a table on stdout.

Run:   nice -n 10 .venv/bin/python bench/heldout_gap.py --datasets cmu09 cmu
       .venv/bin/python bench/heldout_gap.py --markdown     (BENCHMARKS.md from the JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _benchmarks_md import render_section  # noqa: E402
from _claims_setting import BUDGETS, ROWS, row_folder  # noqa: E402
from _machine import cores_line  # noqa: E402

from pipelines.checkpoint import load_model  # noqa: E402
from pipelines.queries import test_inputs  # noqa: E402
from vhp_core import HierarchicalPrior  # noqa: E402
from vhp_core.networks import set_precision  # noqa: E402
from vhp_core.precision import evaluation_precision  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "heldout_gap.json"
NOTE = "(rendered by bench/heldout_gap.py from bench/results/heldout_gap.json)"
LABELS = ("vhp", "iwae", "iwae (warm-up)")
K_SMALL, K_LARGE = 16, 128
PRIOR_ROWS = 4096  # zeta rows through the hierarchical prior at once (bounds memory)


# ----------------------------------------------------------------------------- pure parts


def prior_capacity(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the learned prior: p(z|zeta) (Theta) and q(zeta|z) (Phi); zeros for a fixed prior."""
    prior = model.prior
    if not isinstance(prior, HierarchicalPrior):
        return {"p_z_given_zeta": 0, "q_zeta_given_z": 0, "prior_parameters": 0}
    p = sum(t.numel() for t in prior.p_z_given_zeta.parameters())
    q = sum(t.numel() for t in prior.q_zeta_given_z.parameters())
    return {"p_z_given_zeta": p, "q_zeta_given_z": q, "prior_parameters": p + q}


def training_units(dataset) -> dict:
    """The training split's whole sequences (the split unit named in attrs['split'], counted from its label)
    and frames; units None where the split has no such label."""
    split = dict(dataset.attrs).get("split") or {}
    unit = str(split.get("unit", "trial"))
    labels = dataset.train.labels or {}
    units = int(len(np.unique(np.asarray(labels[unit][:])))) if unit in labels else None
    return {"unit": unit, "train_units": units, "train_frames": int(dataset.train.x.shape[0])}


@torch.no_grad()
def log_prior(model: torch.nn.Module, z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """log p(z) per row, float64: F with k zetas for the hierarchical prior, else the exact density."""
    prior = model.prior
    if not isinstance(prior, HierarchicalPrior):
        return model.log_prior(z).double()
    step = max(1, PRIOR_ROWS // k)
    return torch.cat([prior.log_prob_bound(z[i:i + step], k, generator).double() for i in range(0, len(z), step)])


@torch.no_grad()
def code_terms(model: torch.nn.Module, x: np.ndarray, codes: int, ks: tuple[int, ...], generator: torch.Generator,
               batch: int = 256) -> dict[str, np.ndarray]:
    """Per (code, point) terms at z ~ q(z|x), `codes` codes a point, (codes, N) float64 each:
    log_px = log p(x|z), log_q = log q(z|x), c = per-dimension squared error, log_pz_<k> = log p(z)."""
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch])
        z, log_q, _, _ = model.posterior_sample(xb, codes, generator)  # (codes, B, latent), (codes, B)
        flat = z.reshape(-1, z.shape[-1])
        log_px, c = model.likelihood.terms(model.flatten_data(xb), model.decoder_output(flat).reshape(codes, len(xb), -1))
        parts = {"log_px": log_px, "log_q": log_q, "c": c,
                 **{f"log_pz_{k}": log_prior(model, flat, k, generator).reshape(codes, len(xb)) for k in ks}}
        for key, value in parts.items():
            out.setdefault(key, []).append(value.double().numpy())
    return {key: np.concatenate(v, axis=1) for key, v in out.items()}


def decompose(terms: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """Means over codes and points: log p(z) (F with k zetas), reconstruction E_q[log p(x|z)], the prior
    part E_q[log p(z) - log q(z|x)], their sum the ELBO, and C."""
    recon = float(terms["log_px"].mean())
    prior_part = float((terms[f"log_pz_{k}"] - terms["log_q"]).mean())
    return {"log_pz": float(terms[f"log_pz_{k}"].mean()), "reconstruction": recon, "prior_part": prior_part,
            "elbo": recon + prior_part, "c": float(terms["c"].mean())}


def mean_sd(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


# ----------------------------------------------------------------------------- measuring


def run_folder(work: Path, dataset: str, label: str, seed: int) -> Path:
    return row_folder(work, dataset, label) / dataset / ROWS[label][0] / "kappa=auto" / f"seed={seed}"


def measure(folder: Path, x_train: np.ndarray, x_test: np.ndarray, codes: int, seed: int) -> dict:
    """The numbers of one trained run (see the module notes)."""
    model, _ = load_model(folder / "model" / "model.pt")
    set_precision(model, evaluation_precision(model.config.precision, "cpu"))
    trained = json.loads((folder / "model" / "metrics.json").read_text())
    evaluated = json.loads((folder / "eval" / "metrics.json").read_text())
    ks = (K_SMALL, K_LARGE) if isinstance(model.prior, HierarchicalPrior) else (K_SMALL,)
    gen = torch.Generator().manual_seed(seed)
    split = {"train": code_terms(model, x_train, codes, ks, gen), "test": code_terms(model, x_test, codes, ks, gen)}
    rec: dict = {"seed": seed, "model": model.config.model, **prior_capacity(model)}
    for name, terms in split.items():
        for k in ks:
            rec[f"{name}_K{k}"] = decompose(terms, k)
    if len(ks) == 1:  # an exact prior: the same at every K
        for name in split:
            rec[f"{name}_K{K_LARGE}"] = rec[f"{name}_K{K_SMALL}"]
    rec["prior_gap"] = rec[f"train_K{K_LARGE}"]["log_pz"] - rec[f"test_K{K_LARGE}"]["log_pz"]
    rec["prior_gap_K16"] = rec[f"train_K{K_SMALL}"]["log_pz"] - rec[f"test_K{K_SMALL}"]["log_pz"]
    rec["inner_test_log_pz"] = rec[f"test_K{K_LARGE}"]["log_pz"] - rec[f"test_K{K_SMALL}"]["log_pz"]
    sigma = trained.get("sigma") or {}
    rec["sigma"] = sigma.get("sigma", evaluated.get("ll_sigma"))
    rec["sigma_mode"] = sigma.get("mode")
    for name, key in (("train", "train_eval"), ("val", "val"), ("test", "test")):
        rec[f"C_{name}"] = (trained.get(key) or {}).get("reconstruction")
    rec["ll_K16"] = evaluated.get("test_log_likelihood")
    rec["ll_K16_stderr"] = evaluated.get("test_log_likelihood_stderr")
    rec["ll_K128"] = evaluated.get("test_log_likelihood_check", evaluated.get("test_log_likelihood"))
    rec["ll_check_diff"] = evaluated.get("ll_check_diff")
    rec["ll_check_diff_stderr"] = evaluated.get("ll_check_diff_stderr")
    rec["ll_elbo"] = evaluated.get("ll_elbo")
    # how much the S-sample importance weighting gains over the ELBO, on the same points and samples
    rec["ll_minus_elbo"] = None if None in (rec["ll_K16"], rec["ll_elbo"]) else rec["ll_K16"] - rec["ll_elbo"]
    agrees = evaluated.get("ll_check_agrees")
    rec["ll_check_agrees"] = None if agrees is None else float(agrees)
    return rec


def subset(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if n <= 0 or n >= len(x) else x[np.sort(rng.choice(len(x), n, replace=False))]


def run_dataset(name: str, work: Path, seeds: tuple[int, ...], points: int, codes: int) -> dict:
    from preprocessing.store import open_dataset

    data = open_dataset(work / "data" / f"{name}.zarr")
    rng = np.random.default_rng(0)
    x_test = subset(test_inputs(data), points, rng)
    n_train = len(data.train)
    train_rows = np.sort(rng.choice(n_train, n_train if points <= 0 else min(points, n_train), replace=False))
    x_train = np.asarray(data.train.x.get_orthogonal_selection((train_rows,)), dtype=np.float32)
    records = {}
    for label in LABELS:
        records[label] = []
        for seed in seeds:
            folder = run_folder(work, name, label, seed)
            if not (folder / "eval" / "metrics.json").exists():
                print(f"  {name} {label} seed {seed}: no evaluated run at {folder}; skipped", flush=True)
                continue
            records[label].append(measure(folder, x_train, x_test, codes, 1000 + seed))
            print(f"  {name} {label} seed {seed}: done", flush=True)
    return {"units": training_units(data), "records": records, "summary": summarise(records),
            "points": {"train": len(x_train), "test": len(x_test)}}


# ----------------------------------------------------------------------------- summary and text

FIGURES = ("prior_gap", "prior_gap_K16", "inner_test_log_pz", "sigma", "C_train", "C_val", "C_test",
           "ll_K16", "ll_K128", "ll_check_diff", "ll_check_diff_stderr", "ll_check_agrees", "ll_minus_elbo",
           "prior_parameters")
SPLIT_FIGURES = ("log_pz", "reconstruction", "prior_part", "elbo", "c")
REFERENCES = ("iwae", "iwae (warm-up)")


def _flat(rec: dict) -> dict:
    out = {k: rec.get(k) for k in FIGURES}
    for name in ("train", "test"):
        for key in SPLIT_FIGURES:
            out[f"{name}_{key}"] = rec[f"{name}_K{K_LARGE}"][key]
    return out


def summarise(records: dict[str, list[dict]]) -> dict:
    """Per row: mean and sd over seeds of every figure, and under "minus" the same-seed difference to
    each IWAE row (REFERENCES) other than itself."""
    flat = {label: {r["seed"]: _flat(r) for r in recs} for label, recs in records.items()}
    out: dict = {}
    for label, by_seed in flat.items():
        keys = list(next(iter(by_seed.values())).keys()) if by_seed else []
        out[label] = {k: mean_sd([v[k] for v in by_seed.values()]) for k in keys}
        out[label]["minus"] = {}
        for ref in REFERENCES:
            if ref == label or not flat.get(ref):
                continue
            pairs = [(v, flat[ref][s]) for s, v in by_seed.items() if s in flat[ref]]
            out[label]["minus"][ref] = {k: mean_sd([a[k] - b[k] for a, b in pairs
                                                    if a[k] is not None and b[k] is not None]) for k in keys}
    return out


def _f(stat: dict | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    sd = stat.get("sd")
    return f"{stat['mean']:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _v(summary: dict, label: str, key: str, ref: str | None = None) -> float | None:
    """Mean over seeds of a figure of a row, or of its same-seed difference to row `ref`."""
    block = summary.get(label, {})
    block = block.get("minus", {}).get(ref, {}) if ref else block
    return (block.get(key) or {}).get("mean")


def _below(gap: float) -> str:
    return f"{abs(gap):.2f} nats {'below' if gap >= 0 else 'above'}"


def sentences(run: dict) -> list[str]:
    """What the numbers say, in plain sentences computed from them."""
    s, units = run["summary"], run["units"]
    if not s.get("vhp") or not s.get("iwae"):
        return ["Not enough rows to compare."]
    out = []
    gap_v, gap_i = _v(s, "vhp", "prior_gap"), _v(s, "iwae", "prior_gap")
    out.append(f"VHP's mean log p(z) at test codes lies {_below(gap_v)} its value at training codes (F, K = "
               f"{K_LARGE}), against {_below(gap_i)} for IWAE's N(0, I): the learned prior's train − test gap minus "
               f"N(0, I)'s is {gap_v - gap_i:+.2f} nats.")
    for ref in REFERENCES:
        d_rec, d_pri = _v(s, "vhp", "test_reconstruction", ref), _v(s, "vhp", "test_prior_part", ref)
        d_elbo, d_ll = _v(s, "vhp", "test_elbo", ref), _v(s, "vhp", "ll_K16", ref)
        d_pz, d_tight = _v(s, "vhp", "test_log_pz", ref), _v(s, "vhp", "ll_minus_elbo", ref)
        if None in (d_rec, d_pri, d_elbo, d_ll, d_pz, d_tight):
            continue
        share = "reconstruction" if abs(d_rec) > abs(d_pri) else "the prior part"
        out.append(f"Against {ref}, on test points: LL {d_ll:+.2f} nats (K_eval = 16); ELBO {d_elbo:+.2f} = "
                   f"{d_rec:+.2f} in reconstruction E_q[log p(x|z)] and {d_pri:+.2f} in E_q[log p(z) − log q(z|x)] "
                   f"(the larger share in {share}; log p(z) at the codes alone {d_pz:+.2f}). LL − ELBO on the "
                   f"evaluation's points and samples differs by {d_tight:+.2f}: the part of the LL difference that "
                   f"importance weighting adds to the ELBO's.")
    moves = {label: [_v(s, label, f"test_{k}") - _v(s, label, f"train_{k}")
                     for k in ("elbo", "reconstruction", "prior_part")] for label in ("vhp", "iwae")}
    out.append("From training to test points (test − train) the ELBO moves {:+.2f} nats for VHP ({:+.2f} in "
               "reconstruction, {:+.2f} in the prior part) and {:+.2f} for IWAE ({:+.2f}, {:+.2f})."
               .format(*moves["vhp"], *moves["iwae"]))
    sig_v, sig_i = _v(s, "vhp", "sigma"), _v(s, "iwae", "sigma")
    ct_v, ct_i = _v(s, "vhp", "C_test"), _v(s, "iwae", "C_test")
    cr_v, cr_i = _v(s, "vhp", "C_train"), _v(s, "iwae", "C_train")
    if None not in (sig_v, sig_i, ct_v, ct_i, cr_v, cr_i):
        out.append(f"σ is {sig_v:.3f} for VHP and {sig_i:.3f} for IWAE; test C is {ct_v:.3f} against {ct_i:.3f} "
                   f"({ct_v / cr_v:.1f}× and {ct_i / cr_i:.1f}× the training C).")
    params = _v(s, "vhp", "prior_parameters")
    if params and units.get("train_units"):
        out.append(f"The hierarchical prior has {params:,.0f} parameters for {units['train_units']} training "
                   f"{units['unit']}s ({units['train_frames']:,} frames): {params / units['train_units']:,.0f} "
                   f"parameters a {units['unit']}, {params / units['train_frames']:.1f} a frame.")
    inner, dll = _v(s, "vhp", "inner_test_log_pz"), _v(s, "vhp", "ll_check_diff")
    dse, agree = _v(s, "vhp", "ll_check_diff_stderr"), s["vhp"].get("ll_check_agrees", {})
    if None not in (inner, dll, dse, agree.get("mean")):
        out.append(f"Inner samples: F at K = {K_LARGE} exceeds F at K = {K_SMALL} by {inner:.3f} nats at test "
                   f"codes; the test LL moves by {dll:+.3f} nats (se {dse:.3f}) from K_eval = 16 to 128, within "
                   f"2 se in {round(agree['mean'] * agree['n'])} of {agree['n']} seeds.")
    return out


def table(run: dict) -> list[str]:
    s = run["summary"]
    head = ("| row | log p(z) train | log p(z) test | gap | gap − iwae | E log p(x\\|z) test | "
            "E[log p(z) − log q] test | ELBO test | σ | C train / val / test | LL K=16 | LL K=128 |")
    lines = [head, "|" + "---|" * 12]
    for label in LABELS:
        if not s.get(label):
            continue
        b = s[label]
        diff = _f(b["minus"].get("iwae", {}).get("prior_gap")) if label != "iwae" else "–"
        c = " / ".join(_f(b[f"C_{n}"], 3).split(" ±")[0] for n in ("train", "val", "test"))
        lines.append(f"| {label} | {_f(b['train_log_pz'])} | {_f(b['test_log_pz'])} | {_f(b['prior_gap'])} | {diff} "
                     f"| {_f(b['test_reconstruction'])} | {_f(b['test_prior_part'])} | {_f(b['test_elbo'])} "
                     f"| {_f(b['sigma'], 3)} | {c} | {_f(b['ll_K16'])} | {_f(b['ll_K128'])} |")
    return lines


def markdown(results: dict) -> str:
    parts = ["## Held-out gap: where VHP's test log-likelihood goes", "",
             f"Models of the claims run (bench/claims.py), rows vhp, iwae, iwae (warm-up); mean ± sd over seeds. "
             f"log p(z) at z ~ q(z|x): F with K = {K_LARGE} zetas for the hierarchical prior, exact for N(0, I); "
             f"gap = train − test. ELBO split on the same test points and codes. σ and C from the training's "
             f"metrics.json (C: per-dimension squared error), LL from the evaluation's."]
    for name, run in results.get("runs", {}).items():
        b = run["budgets"]
        parts += ["", f"### {name}", "",
                  f"{run['points']['train']} training and {run['points']['test']} test points, {b['codes']} codes "
                  f"a point; claims budget {b['claims_steps']} steps a run; seeds {run['seeds']}; "
                  f"{run['seconds']:.0f} s on {run['machine']}, {run['threads']} thread(s), load average "
                  f"{run['load_before'][0]:.2f} before, {run['load_after'][0]:.2f} after ({run['finished']}).", "",
                  *table(run), "", *[f"- {t}" for t in sentences(run)]]
    return "\n".join(parts) + "\n"


def load(target: Path) -> dict:
    return json.loads(target.read_text()) if target.exists() else {"format": 1, "runs": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cmu09"], choices=list(BUDGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--points", type=int, default=1000, help="training and test points each (0: all)")
    parser.add_argument("--codes", type=int, default=8, help="codes z ~ q(z|x) a point")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--work", default="/tmp/vhp_bench_claims/full", help="the claims run's data and run folders")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--markdown", action="store_true", help="only render BENCHMARKS.md's section from the JSON")
    args = parser.parse_args(argv)
    target = Path(args.out)
    results = load(target)
    if not args.markdown:
        torch.set_num_threads(args.threads)
        for name in args.datasets:
            load_before, t0 = os.getloadavg(), time.perf_counter()
            run = run_dataset(name, Path(args.work), tuple(args.seeds), args.points, args.codes)
            run.update({"dataset": name, "seeds": list(args.seeds), "seconds": time.perf_counter() - t0,
                        "budgets": {"points": args.points, "codes": args.codes, "k": [K_SMALL, K_LARGE],
                                    "claims_steps": BUDGETS[name][0], "claims_ll_points": BUDGETS[name][2]},
                        "threads": torch.get_num_threads(), "load_before": load_before,
                        "load_after": os.getloadavg(), "machine": cores_line(),
                        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
            results["runs"][name] = run
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, json.dumps(results, indent=1, default=str) + "\n")
            print("\n".join(table(run) + sentences(run)), flush=True)
    if target == RESULTS:
        render_section("heldout_gap", markdown(results), note=NOTE)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
