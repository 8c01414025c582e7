"""detection_eval gives the same per-run figures from feature archives as from the run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from collapsewatch.diagnostics.synthetic import write_synthetic_run

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_detection_eval_reads_archives_in_place_of_runs(tmp_path, run_benchmark):
    def _evaluate(root: Path, *extra: str, script: str = "detection_eval.py") -> dict:
        return run_benchmark(script, "--root", str(root), "--seeds", "0", "1", *extra)

    runs, archive = tmp_path / "runs", tmp_path / "archive"
    for seed in (0, 1):
        write_synthetic_run(runs, f"collapse-s{seed}", n_steps=70, collapse_at=45 + 5 * seed, seed=seed)
        write_synthetic_run(runs, f"interleaved-s{seed}", n_steps=70, collapse_at=None, seed=10 + seed)
    from_runs = _evaluate(runs, "--plots", "", "--archive", str(archive))
    sweep = _evaluate(runs, "--stable", "interleaved", script="lead_vs_false_alarms.py")
    assert sorted(p.name for p in archive.iterdir()) == [
        "collapse-s0.parquet", "collapse-s1.parquet", "interleaved-s0.parquet", "interleaved-s1.parquet",
    ]  # fmt: skip
    shutil.rmtree(runs)
    from_archive = _evaluate(archive, "--plots", "")
    sweep_again = _evaluate(archive, "--stable", "interleaved", script="lead_vs_false_alarms.py")
    sweep_again.pop("root"), sweep.pop("root")  # the folder read differs, nothing else
    assert sweep_again == sweep
    assert from_runs["collapsing_runs"] == 2 and from_runs["stable_runs"] == 2
    # the synthetic collapses break the format with the success; the stable runs never cross
    assert from_runs["onset_kinds"] == {"collapsing": {"format_break": 2}, "stable": {}}
    strip = ("root",)  # the folder read differs, nothing else
    for key in from_runs:
        if key not in (*strip, "runs"):
            assert from_archive[key] == from_runs[key], key
    for a, b in zip(from_runs["runs"], from_archive["runs"], strict=True):
        assert {k: v for k, v in a.items() if k not in strip} == {
            k: v for k, v in b.items() if k not in strip
        }


def test_detection_eval_preset_is_its_settings(run_benchmark):
    """`--preset LSF` scores round 28's archives exactly as the flags round 28 was scored with
    (docs/data/deteval28slide-heldout.json)."""
    archives = BENCHMARKS.parent / "docs" / "data" / "features" / "r28"
    by_preset = run_benchmark(
        "detection_eval.py", "--root", str(archives), "--seeds", *map(str, range(170, 178)),
        "--collapsing", "collapse", "--stable", "off-policy", "sync-sft", "interleaved", "--plots", "",
        "--preset", "lsf",
    )  # fmt: skip
    recorded = json.loads((BENCHMARKS.parent / "docs" / "data" / "deteval28slide-heldout.json").read_text())
    by_preset.pop("root"), recorded.pop("root")  # the folder read differs, nothing else
    assert by_preset == recorded
    assert by_preset["config_overrides"]["slide_success_drop"] == 0.6
