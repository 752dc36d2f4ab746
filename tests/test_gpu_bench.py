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
