"""success_slide_plot replays the success slide itself: the step it reports is the detector's, the
ratios are those its condition reads, and SFT runs are drawn but never fire."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHIVES = REPO / "docs" / "data" / "features" / "r26"


def test_reports_the_detectors_step_and_draws_every_run(tmp_path: Path, run_benchmark) -> None:
    png = tmp_path / "slide.png"
    result = run_benchmark(
        "success_slide_plot.py", "--root", str(ARCHIVES), "--seeds", "150", "151", "--stable", "sync-sft",
        "--plot", str(png),
    )  # fmt: skip
    runs = {r["run"]: r for r in result["runs"]}
    assert set(runs) == {"r26/collapse-s150", "r26/collapse-s151", "r26/sync-sft-s150", "r26/sync-sft-s151"}
    # collapse s150 lost success first: the slide held at its onset, where LSF paged it (docs/detection.md)
    assert runs["r26/collapse-s150"]["slide_step"] == runs["r26/collapse-s150"]["onset"] == 33
    sft = runs["r26/sync-sft-s151"]
    assert sft["sft"] is True and sft["slide_step"] is None
    assert sft["max_entropy_ratio_below_drop"] is not None  # its ratios are still drawn
    assert png.stat().st_size > 10_000
