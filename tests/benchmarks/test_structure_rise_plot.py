"""structure_rise_plot replays the structure detector and the verdict: the pages it reports are the
verdict's under each minimum rise, and the rise it draws is the one the detector compares with it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHIVES = REPO / "docs" / "data" / "features" / "r30"


def test_reports_the_pages_under_each_minimum_rise(tmp_path: Path, run_benchmark) -> None:
    png = tmp_path / "rise.png"
    result = run_benchmark(
        "structure_rise_plot.py", "--root", str(ARCHIVES), "--seeds", "200", "201",
        "--stable", "interleaved", "low-lr", "--control", "low-lr", "--plot", str(png),
    )  # fmt: skip
    runs = {r["run"]: r for r in result["runs"]}
    assert {r["group"] for r in runs.values()} == {"collapsing", "supervised", "control"}
    # round 30 (docs/detection.md): at 0.2 the page on interleaved s200 goes, as its rise stays below 0.2
    interleaved = runs["r30/interleaved-s200"]
    assert interleaved["pages"] == {"0.15": 25, "0.2": None} and 0.15 <= interleaved["max_rise"] < 0.2
    assert runs["r30/low-lr-s201"]["pages"] == {"0.15": 46, "0.2": 57}  # a larger excursion: later, not gone
    assert runs["r30/collapse-s200"]["pages"] == {"0.15": 24, "0.2": 24}
    assert png.stat().st_size > 10_000
