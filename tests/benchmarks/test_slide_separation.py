"""slide_separation finds the slide's step with the detector itself, groups runs as the question
needs (collapses whose slide came before their onset, unsupervised runs that held, the rest that
held), and scores each statistic by the AUC of collapses against each group."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from slide_separation import auc, shifts_at  # noqa: E402


def test_auc_counts_ties_half_and_ignores_missing_values() -> None:
    assert auc([2.0, 3.0], [1.0]) == 1.0
    assert auc([1.0], [2.0, 3.0]) == 0.0
    assert auc([1.0, float("nan")], [1.0]) == 0.5
    assert auc([float("nan")], [1.0]) is None


def test_groups_runs_and_scores_statistics_on_round_30(run_benchmark) -> None:
    result = run_benchmark(
        "slide_separation.py", "--root", str(REPO / "docs" / "data" / "features" / "r30"), "--lag", "2"
    )
    runs = {r["run"]: r for r in result["runs"]}
    # every collapse of round 30 slid to 0.75 of its peak before its onset (docs/detection.md)
    assert all(r["group"] == "collapse" and r["step"] < r["onset"]
               for name, r in runs.items() if "/collapse-" in name)  # fmt: skip
    assert runs["r30/low-lr-s204"]["group"] == "control" and runs["r30/low-lr-s204"]["step"] == 22
    assert runs["r30/off-policy-s201"]["group"] is None  # crossed the onset line: in no group
    assert runs["r30/sync-sft-s200"]["step"] is None  # logs an SFT loss: the slide is off
    assert result["runs_scored"] == {"collapse": 8, "control": 6, "supervised": 1}
    names = {s["statistic"] for s in result["statistics"]}
    assert {"entropy/mean", "state/broken_turns", "tool_calls/per_rollout"} <= names
    assert all(0.0 <= s["auc_vs_control"] <= 1.0 for s in result["statistics"])


def test_scores_each_runs_first_page_when_asked(run_benchmark) -> None:
    result = run_benchmark(
        "slide_separation.py", "--root", str(REPO / "docs" / "data" / "features" / "r30"),
        "--at", "page", "--preset", "A", "--scale", "fold",
    )  # fmt: skip
    runs = {r["run"]: r for r in result["runs"]}
    # round 30 under A: every collapse paged by its onset, 3 of the 6 low-LR runs paged (docs/detection.md)
    assert result["runs_scored"]["collapse"] == 8 and result["runs_scored"]["control"] == 3
    assert runs["r30/low-lr-s200"]["step"] == 52 and runs["r30/low-lr-s202"]["step"] is None
    when = next(s for s in result["statistics"] if s["statistic"] == "when/step")
    assert when["median_shift"]["control"] > when["median_shift"]["collapse"]  # the low-LR pages came late
    assert result["at"] == "page" and result["setting"] == {"preset": "A"} and result["scale"] == "fold"


def test_recent_scale_is_the_five_step_mean_against_itself_a_window_before() -> None:
    table = pd.DataFrame(
        {"step": range(1, 41), "state/broken_turns": [0.0] * 20 + [0.01 * i for i in range(20)]}
    )
    moved = shifts_at(table, 40, "recent", window=12)
    # 5-step means at step 40 (0.17 .. 0.19) and at step 28 (0.05 .. 0.07): 0.17 - 0.05 = 0.12
    assert abs(moved["state/broken_turns"] - 0.12) < 1e-9
    assert moved["when/step"] == 40.0


def test_compares_low_lr_runs_that_collapsed_with_those_that_held(run_benchmark) -> None:
    result = run_benchmark(
        "slide_separation.py", "--root", str(REPO / "docs" / "data" / "features" / "r34"),
        "--collapsing", "collapse", "low-lr", "--control", "low-lr", "--max-lr", "2e-4",
        "--at", "page", "--preset", "LS", "--scale", "recent",
    )  # fmt: skip
    runs = {r["run"]: r for r in result["runs"]}
    assert all("/low-lr-" in name for name in runs)  # the full-LR collapses are left out
    # round 34: s344 and s346 crossed the onset line and were paged by it; s342, s345, s347 held, paged
    assert runs["r34/low-lr-s344"]["group"] == runs["r34/low-lr-s346"]["group"] == "collapse"
    assert {runs[f"r34/low-lr-s34{i}"]["group"] for i in (2, 5, 7)} == {"control"}
    assert result["scale"] == "recent" and result["window"] == 12 and result["max_lr"] == 2e-4
