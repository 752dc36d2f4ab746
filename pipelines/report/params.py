"""``report:`` as a frozen dataclass: the report stage's params record, beside the stage.

It lives here rather than in ``pipelines.params`` (as the ``prepare_*`` records live beside
their preprocessing code) so that the report stage imports no model code: the report reads
JSON, TSV and PNG files, and an edit to ``vhp_core`` must not rerun it. Which models exist
is therefore not checked against the registry here; ``build_report`` says in one line
which ``compare`` entries have no evaluation under ``eval/`` (a typo shows there).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportParams:
    """``report:``."""

    title: str
    compare: tuple[str, ...]  # models shown side by side, left to right
    curve_smoothing: int      # moving-average window (steps) for training curves
    max_curve_points: int     # curves are thinned to at most this many rows per model

    def __post_init__(self) -> None:
        if self.curve_smoothing < 1:
            raise ValueError(f"curve_smoothing must be >= 1, got {self.curve_smoothing}")
        if self.max_curve_points < 2:
            raise ValueError(f"max_curve_points must be >= 2, got {self.max_curve_points}")
        if any(not model for model in self.compare):
            raise ValueError("compare: a model name must not be empty")
        if len(set(self.compare)) != len(self.compare):
            raise ValueError(f"compare lists a model twice: {list(self.compare)}")
