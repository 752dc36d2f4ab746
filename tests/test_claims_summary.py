"""bench/_claims_summary: paired differences over seeds and what a win of vhp over iwae is owed to."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _claims_summary import attribution, markdown, paired, summarise  # noqa: E402


def _records(values: dict[str, list[float]], key: str = "test_log_likelihood") -> list[dict]:
    return [{"dataset": "d", "model": model, "seed": s, key: v}
            for model, vs in values.items() for s, v in enumerate(vs)]


def test_paired_difference_pairs_seeds_and_counts_seeds_in_vhp_favour() -> None:
    recs = _records({"vhp": [1.0, 2.0, 3.0], "iwae": [0.0, 2.5, 1.0, 9.0]})  # iwae seed 3 has no partner
    d = paired(recs, "d", "test_log_likelihood", "vhp", "iwae")
    assert d["pairs"] == 3 and d["mean"] == pytest.approx((1.0 - 0.5 + 2.0) / 3)
    assert d["favour"] == 2
    lower = paired(_records({"vhp": [1.0, 2.0], "iwae": [2.0, 3.0]}, "mf_fraction"), "d", "mf_fraction", "vhp", "iwae")
    assert lower["favour"] == 2  # lower is better for the MF fraction


@pytest.mark.parametrize(("warm", "expected"), [
    ([0.0, 0.1, -0.1], "the prior"),     # vhp beats iwae with the warm-up held equal
    ([4.9, 5.1, 5.0], "the warm-up"),    # the warm-up alone lifts iwae to vhp
    ([0.0, 6.0, 2.0], "neither"),         # vhp no longer clearly ahead, the warm-up alone not clearly either
])
def test_a_win_over_iwae_is_attributed(warm: list[float], expected: str) -> None:
    recs = _records({"vhp": [5.0, 5.2, 4.9], "iwae": [0.0, 0.2, -0.1], "iwae (warm-up)": warm})
    assert attribution(recs, "d", "test_log_likelihood") == expected


def test_no_win_without_a_clear_difference() -> None:
    recs = _records({"vhp": [1.0, -1.0, 0.5], "iwae": [0.0, 0.0, 0.0], "iwae (warm-up)": [0.0, 0.0, 0.0]})
    assert attribution(recs, "d", "test_log_likelihood") == "no win"


def test_markdown_of_a_run() -> None:
    recs = _records({"vhp": [5.0, 5.2, 4.9], "iwae": [0.0, 0.2, -0.1], "iwae (warm-up)": [0.0, 0.1, -0.1]})
    run = {"description": "data", "quick": False, "seeds": [0, 1, 2], "steps": 10, "train_rows": 0,
           "evaluate": {"ll_points": 5, "ll_samples": 7, "ll_inner_samples": 16, "ll_inner_samples_check": 128},
           "seconds": 60.0, "load_before": [0.1, 0, 0], "load_after": [0.2, 0, 0], "machine": "m"}
    text = markdown({"format": 2, "runs": {"d": run}, "records": recs, "summary": summarise(recs)})
    assert "S = 7" in text and "5 test points" in text and "K_eval = 16" in text
    assert "**win**" in text and "the prior" in text


def _params_file(tmp_path: Path, edit) -> Path:
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    edit(raw["train"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("table", ["kappa", "gaussian_std", "network"])
def test_claims_refuses_a_data_set_whose_kind_has_no_entry(tmp_path: Path, table: str) -> None:
    """cmu takes the mocap entries; without one the run refuses in one line naming the key, never takes the first."""
    from _claims_setting import train_params

    path = _params_file(tmp_path, lambda t: t[table].pop("mocap"))
    with pytest.raises(SystemExit, match=rf"params.yaml: train\.{table}\.mocap: missing key"):
        train_params("cmu", 500, 100, 0, {}, path)


def test_claims_gives_a_new_data_set_its_kinds_entries(tmp_path: Path) -> None:
    from _claims_setting import train_params

    def edit(t: dict) -> None:
        t["kappa"] = {"faces": 0.5, "mocap": 0.7, "fashion_mnist": "auto"}  # mocap is not the first entry
        t["gaussian_std"] = {"faces": 0.3, "mocap": "learned", "fashion_mnist": "calibrated"}

    params = train_params("cmu09", 640, 100, 0, {"variant": "warmup"}, _params_file(tmp_path, edit))
    assert params.datasets == ("cmu09",) and params.kappa["cmu09"] == 0.7 and params.gaussian_std["cmu09"] == "learned"
    assert params.constraint.variant == "warmup" and params.epochs == 10  # 100 steps at 10 batches of 64 an epoch
