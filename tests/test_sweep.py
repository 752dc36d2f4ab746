"""The sweep: strict params, the grid, the results table and figure, reuse keyed on dvc.lock, and a Dask
run that a rerun skips."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest

import yaml

from builders import ROOT, synthetic_group, tiny_params, write_params
from conftest import stage_params
from pipelines.cli import main
from pipelines.errors import SweepError
from pipelines.params import BaseParams, EvaluateParams, ParamsError, SweepParams, from_dict, read_yaml
from pipelines.sweep.run import GridPoint, grid, point_train_params, run_sweep, train_code_key
from pipelines.sweep.results import aggregate, results_markdown, write_results

TINY_EVALUATE = stage_params(
    EvaluateParams, "evaluate",
    batch_size=64, ll_samples=8, ll_inner_samples=4, ll_inner_samples_check=8, ll_points=16, max_train_points=96,
    grid_size=6,
    mf_chunk=64, mf_points=16, knn_k=3, graph_nodes=24, graph_k=4, interp_pairs=2, line_steps=8,
    segment_steps=2, n_frames=3, n_reconstructions=3, n_samples=4, max_plot_points=64,
)
BASE = BaseParams(seed=0, threads=1, device="cpu")


def sweep_params(**kw) -> SweepParams:
    return stage_params(SweepParams, "sweep", **kw)


def write_lock(path, code_md5: str = "c0de.dir", data_md5: str = "da7a.dir"):
    """A dvc.lock as `dvc repro` writes it for one entry of the train stage."""
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train@toy-vhp": {
        "cmd": "vhp train --dataset toy --model vhp",
        "deps": [{"path": "data/processed/toy.zarr", "hash": "md5", "md5": data_md5, "size": 10, "nfiles": 3},
                 {"path": "vhp_core", "hash": "md5", "md5": code_md5, "size": 99, "nfiles": 9}],
        "params": {"params.yaml": {"train.epochs": 3}},
        "outs": [{"path": "models/toy/vhp", "hash": "md5", "md5": "0u7.dir"}]}}}))
    return path


def test_params_are_strict_and_checked():
    good = {**read_yaml(ROOT / "params.yaml")["sweep"], "datasets": ["mocap"], "kappa": [0.2, 0.3],
            "models": ["vhp"], "seeds": [0, 1], "task_runner": "local"}
    sweep = from_dict(SweepParams, good, "params.yaml", "sweep")
    assert sweep.kappa == (0.2, 0.3) and sweep.task_runner == "local"
    assert from_dict(SweepParams, {**good, "kappa": ["auto", 0.3]}, "params.yaml", "sweep").kappa == ("auto", 0.3)
    with pytest.raises(ParamsError, match="sweep.worker"):
        from_dict(SweepParams, {**good, "worker": 3}, "params.yaml", "sweep")
    with pytest.raises(ParamsError, match="task_runner"):
        from_dict(SweepParams, {**good, "task_runner": "slurm"}, "params.yaml", "sweep")
    with pytest.raises(ParamsError, match="kappa"):
        from_dict(SweepParams, {**good, "kappa": [0.2, -1.0]}, "params.yaml", "sweep")
    with pytest.raises(ParamsError, match="missing"):
        from_dict(SweepParams, {k: v for k, v in good.items() if k != "seeds"}, "params.yaml", "sweep")


def test_grid_is_the_full_product_with_one_folder_a_point():
    sweep = sweep_params(datasets=("a", "b"), kappa=(0.1, 0.2, 0.3), models=("vhp", "iwae"), seeds=(0, 1))
    points = grid(sweep)
    assert len(points) == 2 * 3 * 2 * 2
    assert len({p.folder for p in points}) == len(points)
    assert points[0].folder.as_posix() == "a/vhp/kappa=0.1/seed=0"


def test_table_aggregates_mean_and_sd_over_seeds(tmp_path):
    rows = [
        {"dataset": "d", "model": m, "kappa": k, "seed": s, "test_log_likelihood": ll + s,
         "knn_accuracy": 0.5 + 0.1 * s, "final_lambda": 1.0, "final_c_hat": 0.01, "constraint_met": s == 0}
        for m, ll in (("vhp", -10.0), ("iwae", -12.0)) for k in (0.1, 0.2) for s in (0, 1)
    ]
    summary = aggregate(rows)
    assert len(summary) == 4
    cell = next(s for s in summary if s["model"] == "vhp" and s["kappa"] == 0.1)
    assert cell["test_log_likelihood_mean"] == pytest.approx(-9.5)
    assert cell["test_log_likelihood_sd"] == pytest.approx(math.sqrt(0.5))
    assert cell["constraint_met"] == 1 and cell["n_seeds"] == 2
    assert "| d | vhp | 0.1 | 2 | -9.50 ± 0.71 |" in results_markdown(summary)
    paths = write_results(rows, tmp_path)
    assert paths["figure"].stat().st_size > 0
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)


@pytest.mark.slow
def test_dask_sweep_writes_table_and_figure_and_a_rerun_comes_from_prefects_cache(tmp_path, harness):
    pytest.importorskip("prefect_dask")
    data = {"toy": synthetic_group(tmp_path / "toy.zarr", n_train=64, n_test=32)}
    train = tiny_params(epochs=1, batch_size=32)
    sweep = sweep_params(datasets=("toy",), kappa=(0.2, "auto"), models=("vhp", "vae"), seeds=(0, 1),
                         task_runner="dask", n_workers=2, out=str(tmp_path / "sweep"), epochs=1)
    lock = write_lock(tmp_path / "dvc.lock")
    rows = run_sweep(sweep, train, TINY_EVALUATE, BASE, data, lock=lock)

    out = tmp_path / "sweep"
    assert len(rows) == 8
    assert {(r["model"], r["kappa"], r["seed"]) for r in rows} == {
        (m, k, s) for m in ("vhp", "vae") for k in (0.2, "auto") for s in (0, 1)}
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    assert all(math.isfinite(r["test_log_likelihood"]) and 0 <= r["knn_accuracy"] <= 1 for r in rows)
    point = out / "toy" / "vhp" / "kappa=0.2" / "seed=1"
    assert {"model", "eval"} <= {p.name for p in point.iterdir()}
    assert not (point / "checkpoint.pt").exists()

    # Rerun on the local runner: every row comes from Prefect's cache (the point folders are not
    # touched: their files keep their modification times) and equals the Dask worker's row.
    stamp = (point / "model" / "model.pt").stat().st_mtime_ns
    again = run_sweep(dataclasses.replace(sweep, task_runner="local"), train, TINY_EVALUATE, BASE, data, lock=lock)
    assert again == rows
    assert (point / "model" / "model.pt").stat().st_mtime_ns == stamp

    # Changed inputs (other epochs) are a cache miss: the points train again.
    more = run_sweep(dataclasses.replace(sweep, task_runner="local", epochs=2, models=("vae",), seeds=(0,),
                                         kappa=(0.2,)), train, TINY_EVALUATE, BASE, data, lock=lock)
    assert more[0]["steps"] == 2 * 2 and (point.parents[2] / "vae" / "kappa=0.2" / "seed=0").is_dir()


def test_grid_point_folder_names_kappa_compactly():
    assert GridPoint("mocap", "vhp", 0.25, 3).folder.as_posix() == "mocap/vhp/kappa=0.25/seed=3"


def test_a_failed_point_does_not_hide_the_others(tmp_path, harness, monkeypatch):
    import pipelines.sweep.run as sweep_module

    def fake_run_point(point, data_path, point_dir, train, evaluate, device, threads, progress=False):
        if point.seed == 1:
            raise RuntimeError("diverged")
        return {"dataset": point.dataset, "model": point.model, "kappa": point.kappa, "seed": point.seed,
                "test_log_likelihood": -1.0, "knn_accuracy": 0.5, "seconds": 0.0}

    monkeypatch.setattr(sweep_module, "run_point", fake_run_point)
    data = {"toy": synthetic_group(tmp_path / "toy.zarr", n_train=32, n_test=16)}
    sweep = sweep_params(datasets=("toy",), kappa=(0.2,), models=("vhp",), seeds=(0, 1), out=str(tmp_path / "s"),
                         task_runner="local")
    with pytest.raises(SweepError, match="1 of 2 points failed"):
        run_sweep(sweep, tiny_params(), TINY_EVALUATE, BASE, data)
    with open(tmp_path / "s" / "results.csv") as f:
        assert [row["seed"] for row in csv.DictReader(f)] == ["0"]


def test_reuse_is_keyed_on_what_dvc_lock_records_of_the_train_stages_code(tmp_path, harness, monkeypatch,
                                                                          capsys):
    import pipelines.sweep.run as sweep_module

    runs = []

    def fake_run_point(point, data_path, point_dir, train, evaluate, device, threads, progress=False):
        runs.append(point.seed)
        return {"dataset": point.dataset, "model": point.model, "kappa": point.kappa, "seed": point.seed,
                "test_log_likelihood": -1.0, "knn_accuracy": 0.5, "seconds": 0.0}

    monkeypatch.setattr(sweep_module, "run_point", fake_run_point)
    data = {"toy": synthetic_group(tmp_path / "toy.zarr", n_train=32, n_test=16)}
    sweep = sweep_params(datasets=("toy",), kappa=(0.2,), models=("vhp",), seeds=(0,), out=str(tmp_path / "s"),
                         task_runner="local")
    lock = write_lock(tmp_path / "dvc.lock")

    def run():
        run_sweep(sweep, tiny_params(), TINY_EVALUATE, BASE, data, lock=lock)
        return len(runs)

    assert run() == 1
    assert run() == 1  # nothing changed: the row comes from Prefect's cache
    write_lock(lock, code_md5="ed17ed.dir")
    assert run() == 2  # DVC records other code for the train stage: trained again
    assert "none reused" not in capsys.readouterr().err

    lock.unlink()  # no dvc.lock: nothing to key on, every run trains
    assert run() == 3 and run() == 4
    err = capsys.readouterr().err
    assert f"{lock} records no 'train' stage" in err and "every point is trained, none reused" in err


def test_train_code_key_reads_the_train_stages_code_deps_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    assert train_code_key(lock) is None  # absent
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare_faces": {"deps": [
        {"path": "preprocessing", "md5": "1.dir"}]}}}))
    assert train_code_key(lock) is None  # no train stage
    key = train_code_key(write_lock(lock))
    assert key is not None and key == train_code_key(write_lock(lock, data_md5="other"))
    assert key != train_code_key(write_lock(lock, code_md5="other.dir"))


def test_sweep_refuses_a_data_set_without_its_own_train_entries_naming_the_key(tmp_path, capsys):
    train = {"datasets": ["mocap"], "gaussian_std": {"mocap": "calibrated"}, "network": {"mocap": "mlp"}}
    for missing in ("gaussian_std", "network"):  # `train` has entries for mocap only
        other = "network" if missing == "gaussian_std" else "gaussian_std"
        tables = {**train, other: {**train[other], "faces": train[other]["mocap"]}}
        params = write_params(tmp_path / "params.yaml", train=tables, sweep={"datasets": ["mocap", "faces"]})
        code = main(["sweep", "--params", str(params), "--dry-run"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"train.{missing}.faces: missing key" in err[0] and "sweep.datasets" in err[0]
    # with an entry of its own (kappa comes from the sweep's points) the dry run lists the points
    tables = {**train, "gaussian_std": {"mocap": "calibrated", "faces": 1.0},
              "network": {"mocap": "mlp", "faces": "mlp"}}
    params = write_params(tmp_path / "params.yaml", train=tables, sweep={"datasets": ["mocap", "faces"]})
    assert main(["sweep", "--params", str(params), "--dry-run", "--out", str(tmp_path / "s")]) == 0
    assert "faces/" in capsys.readouterr().out


def test_sweep_epochs_null_means_train_epochs():
    raw = read_yaml(ROOT / "params.yaml")["sweep"]
    assert from_dict(SweepParams, {**raw, "epochs": None}, "params.yaml", "sweep").epochs is None
    point = GridPoint("toy", "vhp", 0.2, 0)
    train = tiny_params(epochs=7)
    assert point_train_params(train, sweep_params(epochs=None), point).epochs == 7
    assert point_train_params(train, sweep_params(epochs=2), point).epochs == 2
    with pytest.raises(ParamsError, match="epochs must be >= 1 or null"):
        sweep_params(epochs=0)
