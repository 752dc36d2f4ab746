"""bench/gpu.py's CPU-side logic: --phases, --merge, the adoption rule of a lever, the graphed
step's body (run uncaptured on the CPU) against vhp_core.train_step, and the rendered rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from _gpu_render import section  # noqa: E402
from _gpu_setup import PHASES, merge_base, parse_phases  # noqa: E402


def test_parse_phases_orders_and_rejects_unknown_names():
    assert parse_phases("profiles, training") == ["training", "profiles"]
    assert parse_phases(",".join(reversed(PHASES))) == list(PHASES)
    with pytest.raises(SystemExit, match="trainig"):
        parse_phases("trainig")
    with pytest.raises(SystemExit, match="unknown"):
        parse_phases(" , ")


def test_merge_keeps_phases_not_run_and_drops_goals(tmp_path):
    old = {"tests": {"summary": "7 passed"}, "training": {"ours/vae/fp32": {"samples_per_s": 1.0}},
           "log_likelihood": {"vae": {"full_s": 1.3}}, "goals": {"ll_vae": {"met": True}},
           "phases_s": {"tests": 24.8, "training": 99.4, "log_likelihood": 11.6}, "started": "then", "total_s": 148.5,
           "machine": {"device_name": "GPU"}}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(old))
    base = merge_base(path, ["training", "profiles"])
    assert "training" not in base and "goals" not in base
    assert base["tests"] == old["tests"] and base["log_likelihood"] == old["log_likelihood"]
    assert base["phases_s"] == {"tests": 24.8, "log_likelihood": 11.6}
    assert base["merged_from"]["phases_kept"] == ["tests", "log_likelihood"]
    assert base["merged_from"]["started"] == "then" and base["merged_from"]["machine"] == {"device_name": "GPU"}
    assert merge_base(None, ["training"]) == {}


def test_merge_of_a_bad_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "gpu.json"
    bad.write_text("[1, 2")
    with pytest.raises(SystemExit, match="gpu.json: --merge"):
        merge_base(bad, ["training"])
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a JSON object"):
        merge_base(bad, ["training"])


def test_adopt_needs_speed_same_loglik_and_curve():
    from _gpu_graph import adopt

    good = {"samples_per_s": 9.0, "speedup_vs_eager": 3.0, "ll_same": True, "same_curve_as_eager": True,
            "nonfinite_steps": 0}
    assert adopt(good)
    for change in ({"speedup_vs_eager": 0.9}, {"ll_same": False}, {"same_curve_as_eager": False},
                   {"nonfinite_steps": 2}, {"samples_per_s": None}):
        assert not adopt({**good, **change}), change
    assert not adopt({k: v for k, v in good.items() if k != "ll_same"})  # no log-likelihood check: not adopted


def test_goals_use_an_adopted_graphed_row_only():
    from _gpu_goals import goals

    train = {"pythae-trainer/vae/fp32": {"samples_per_s": 10.0}, "ours/vae/fp32": {"samples_per_s": 9.0},
             "ours/vae/graphed": {"samples_per_s": 40.0, "adopt": True}}
    g = goals({"training": train})["train_vae"]
    assert g["row"] == "ours/vae/graphed" and g["speedup"] == pytest.approx(4.0) and g["met"]
    train["ours/vae/graphed"]["adopt"] = False
    g = goals({"training": train})["train_vae"]
    assert g["row"] == "ours/vae/fp32" and not g["met"]


def _setting():
    from _compare_setting import resolve

    return resolve(1, 600)  # params.yaml with compare_pythae's overrides, one epoch over 600 images


def test_graphed_body_uncaptured_trains_like_train_step():
    """On the CPU the graphed runner runs its body uncaptured: the same weights as vhp_core.train_step."""
    from _gpu_graph import Graphed
    from _gpu_runs import Ours

    s = _setting()
    x = torch.bernoulli(torch.full((6, 100, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(3))
    eager, graphed = Ours("vae", "fp32", s, torch.device("cpu")), Graphed("vae", s, torch.device("cpu"))
    losses = [(float(eager.step(batch)), float(graphed.step(batch))) for batch in x]
    for a, g in losses:
        assert g == pytest.approx(a, rel=1e-6, abs=1e-5)
    for p, q in zip(eager.model.parameters(), graphed.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert graphed.report()["nonfinite_steps"] == 0 and not graphed.report()["captured"]
    with pytest.raises(ValueError, match="captured for"):
        graphed.step(x[0, :50])


def test_graphed_refuses_a_moving_lambda():
    from _gpu_graph import Graphed

    with pytest.raises(ValueError, match="lambda moves"):
        Graphed("vhp", _setting(), torch.device("cpu"))


def test_section_shows_graphed_rows_with_speedup():
    r = {"training": {"pythae-trainer/vae/fp32": {"samples_per_s": 20000.0},
                      "ours/vae/graphed": {"samples_per_s": 80000.0, "speedup_vs_eager": 4.0, "adopt": True,
                                           "ll_lever": -250.0, "ll_eager": -250.01, "ll_tolerance": 0.05,
                                           "captured": True, "rng": "registered", "optimiser": "Adam(fused)",
                                           "same_curve_as_eager": True, "nonfinite_steps": 0}},
         "merged_from": {"phases_kept": ["tests"], "started": "then", "total_s": 1.0}}
    text = section(r)
    assert "| ours/vae (one CUDA graph per step) | fp32 | 80,000 | 4.00 |" in text
    assert "adopted" in text and "phases tests from an earlier run" in text


def _params_file(tmp_path: Path, edit) -> Path:
    import yaml

    raw = yaml.safe_load((BENCH.parent / "params.yaml").read_text())
    edit(raw["train"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_setting_is_params_yaml_with_the_stated_overrides(tmp_path):
    """The model and constraint follow the params file wherever the comparison does not override them."""
    from _compare_setting import OVERRIDES, resolve

    def edit(t: dict) -> None:
        t["model"].update(activation="relu", k_iw=7, n_pseudo=50, prior_hidden=[64], latent_dim=3)
        t["constraint"].update(alpha=0.9, auto_max_fraction=0.5)
        t["lr"] = 0.002

    s = resolve(2, 1000, path=_params_file(tmp_path, edit))
    c = s.model_config("vhp", "bf16")
    assert (c.latent_dim, c.hidden, c.zeta_dim, c.k_inner, c.precision) == (40, (300, 300), 40, 10, "bf16")
    assert (c.activation, c.k_iw, c.n_pseudo, c.prior_hidden) == ("relu", 7, 50, (64,))
    k = s.constraint_config()
    assert k.alpha == 0.9 and k.kappa is None and k.auto_max_steps == 10  # 0.5 x 2 epochs x 10 batches of 100
    assert s.lr == 0.002 and s.batch_size == 100 and s.overrides == {**OVERRIDES, "epochs": 2}
    assert s.record()["activation"] == "relu" and s.record()["latent_dim"] == 40


def test_an_override_of_a_key_the_params_file_lacks_is_refused():
    from _params import train_params

    from pipelines.params import ParamsError

    with pytest.raises(ParamsError, match=r"train\.model\.latent_size: missing key"):
        train_params({"model.latent_size": 40})
    assert train_params({"kappa.cmu09": 0.5}).kappa["cmu09"] == 0.5  # a per-data-set table takes a new data set


def test_the_carried_setting_replaces_the_pipeline_where_it_is_missing(tmp_path, monkeypatch):
    """Without the pipeline the setting comes from the carried file, the same configs, for the same run only."""
    import _compare_setting
    from _gpu_setup import gpu_setting

    here = _compare_setting.resolve(1, 600)
    carried = tmp_path / "setting.json"
    carried.write_text(here.to_json())

    def no_pipeline(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'prefect'", name="prefect")

    monkeypatch.setattr(_compare_setting, "resolve", no_pipeline)
    there, source = gpu_setting(1, 600, carried)
    assert str(carried) in source
    for model in ("vae", "iwae", "vhp"):
        assert there.model_config(model, "bf16") == here.model_config(model, "bf16")
    assert there.constraint_config() == here.constraint_config()
    with pytest.raises(SystemExit, match="over 600 images, this run trains 2 over 600"):
        gpu_setting(2, 600, carried)
    with pytest.raises(SystemExit, match="no prefect"):
        gpu_setting(1, 600, tmp_path / "absent.json")
