"""pooled_eval.py: one setting replayed over archived rounds, pooled as docs/detection.md reports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pooled_figures_of_the_groups_of_16_rounds(run_benchmark):
    # docs/detection.md, round 32: "over the 8 collapses at G=16, 6 of 8, median lead 3.5" (A)
    out = run_benchmark("pooled_eval.py", "--preset", "A", "--rounds", "r31", "r32")
    assert out["rounds"] == ["r31", "r32"]
    assert (out["collapsing_runs"], out["detected_by_onset"], out["median_lead_steps"]) == (8, 6, 3.5)
    # round 31's stable runs: two off-policy (supervised) and two low-lr (the unsupervised control)
    assert out["supervised_runs"] == 2 and out["unsupervised_stable_runs"] == 2
    # the success slide (LSF) pages round 32's two success-first collapses in time
    assert run_benchmark("pooled_eval.py", "--preset", "LSF", "--rounds", "r32")["detected_by_onset"] == 4


def test_an_unknown_round_is_a_one_line_error():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pooled_eval.py"), "--rounds", "r99"],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode != 0 and "no held-out JSON for round r99" in out.stderr
    assert "Traceback" not in out.stderr
