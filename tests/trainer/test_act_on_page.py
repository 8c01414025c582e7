"""act_on_page.py forks a real trainer run: the fork reproduces the original's steps, and each arm
continues from the fork with its own settings and nothing else changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import collapsewatch as cw

REPO = Path(__file__).resolve().parents[2]


def _tiny(cache_dir: Path) -> list[str]:
    settings = {
        "cache_dir": cache_dir, "vocab_size": 512, "tokenizer_tasks": 200, "model_size": "tiny",
        "sft_steps": 15, "sft_batch": 8, "tasks_per_step": 2, "group_size": 4, "max_turns": 3,
        "max_turn_tokens": 12, "max_context": 256, "warmup_steps": 1, "eval_tasks": 2, "probe_tasks": 2,
        "checkpoint_every": 0,
    }  # fmt: skip
    return [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, check=False)


def test_forks_a_run_and_continues_each_arm_with_its_own_settings(tmp_path, cache_dir) -> None:
    tiny = _tiny(cache_dir)
    original = _run("-m", "collapsewatch", "train", "--seed", "3", "--steps", "4", "--out", str(tmp_path / "orig"),
                    "--threads", "1", "--no-progress", *tiny)  # fmt: skip
    assert original.returncode == 0, original.stdout[-2000:]
    done = _run(
        str(REPO / "benchmarks" / "act_on_page.py"), "--out", str(tmp_path / "act"), "--seed", "3", "--steps", "4",
        "--arm", "none@2", "--arm", "sft@2:err_sft_every=1", "--original", str(tmp_path / "orig" / "collapse-s3"),
        *tiny,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"none", "sft"} and all(a["steps"] == 4 and a["fork"] == 2 for a in arms.values())
    steps = {name: cw.open_run(a["run"]).steps() for name, a in arms.items()}
    sft_steps = steps["sft"].loc[steps["sft"]["sft/erroneous_loss"].notna(), "step"].tolist()
    assert sft_steps and min(sft_steps) > 2  # the remedy starts after the fork
    assert "sft/erroneous_loss" not in steps["none"] or steps["none"]["sft/erroneous_loss"].isna().all()
    resumes = {
        name: [(r["from_step"], r["changed"]) for r in cw.open_run(a["run"]).meta["resumes"]]
        for name, a in arms.items()
    }
    assert resumes == {
        "none": [(2, {"steps": [2, 4]})],
        "sft": [(2, {"steps": [2, 4], "err_sft_every": [0, 1]})],
    }
    # both arms carry the original's first two steps, and continue from the same state
    first = [s.sort_values("step")["success/rate"].to_numpy()[:2].tolist() for s in steps.values()]
    assert first[0] == first[1]
    # the pooled summary reads the same result: counts per arm, the paired difference, a plot
    (tmp_path / "s3.json").write_text(json.dumps(result))
    pooled = _run(str(REPO / "benchmarks" / "act_on_page_summary.py"), str(tmp_path / "s3.json"),
                  "--pair", "sft", "none", "--plot", str(tmp_path / "pooled.png"))  # fmt: skip
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    summary = json.loads(pooled.stdout)
    for name, arm in arms.items():
        assert summary["arms"][name]["below_line_at_end"] == int(arm["below_line_at_end"])
        assert summary["arms"][name]["with_onset"] == int(arm["onset"] is not None)
        assert len(summary["arms"][name]["steps_below_after_fork"]) == 1
    d = arms["sft"]["success_last10"] - arms["none"]["success_last10"]
    assert summary["pairs"][0]["d"] == {"3": pytest.approx(d, abs=1e-4)}
    assert (tmp_path / "pooled.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a seed's arms may come from two files (a later item adds an arm); the same arm twice is refused
    # (tails set apart here, since the tiny arms tie at 0: d must be A minus B, from both files)
    for name, tail in (("sft", 0.75), ("none", 0.25)):
        arm = {**arms[name], "success_last10": tail}
        (tmp_path / f"{name}.json").write_text(json.dumps({**result, "arms": [arm]}))
    split = _run(str(REPO / "benchmarks" / "act_on_page_summary.py"), str(tmp_path / "sft.json"),
                 str(tmp_path / "none.json"), "--pair", "sft", "none", "--pair", "none", "sft")  # fmt: skip
    assert split.returncode == 0, split.stderr[-2000:]
    assert [p["d"] for p in json.loads(split.stdout)["pairs"]] == [{"3": 0.5}, {"3": -0.5}]
    assert json.loads(split.stdout)["seeds"] == [3]
    twice = _run(str(REPO / "benchmarks" / "act_on_page_summary.py"), str(tmp_path / "s3.json"),
                 str(tmp_path / "sft.json"))  # fmt: skip
    assert twice.returncode != 0 and "arm 'sft' twice" in twice.stderr
    typo = _run(str(REPO / "benchmarks" / "act_on_page_summary.py"), str(tmp_path / "s3.json"),
                "--pair", "sft", "non")  # fmt: skip
    assert typo.returncode != 0 and "names no arm of these results: non" in typo.stderr
    # a second call reuses every finished run
    again = _run(str(REPO / "benchmarks" / "act_on_page.py"), "--out", str(tmp_path / "act"), "--seed", "3",
                 "--steps", "4", "--arm", "none@2", "--plot", str(tmp_path / "arms.png"), *tiny)  # fmt: skip
    assert again.returncode == 0 and "training" not in again.stderr and "arm none" not in again.stderr
    assert (tmp_path / "arms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a fork that does not reproduce the original (another seed) is refused, not compared
    other = _run(str(REPO / "benchmarks" / "act_on_page.py"), "--out", str(tmp_path / "other"), "--seed", "4",
                 "--steps", "4", "--arm", "none@2", "--original", str(tmp_path / "orig" / "collapse-s3"), *tiny)  # fmt: skip
    assert other.returncode != 0 and "does not reproduce" in other.stderr
