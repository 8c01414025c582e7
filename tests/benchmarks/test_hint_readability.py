"""hint_readability scores the start a hinted run would use, with and without the hint line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import hint_readability  # noqa: E402

from collapsewatch.trainer.recipes import TrainConfig  # noqa: E402
from collapsewatch.trainer.train import load_policy  # noqa: E402

TINY = [
    "model_size=tiny", "vocab_size=512", "tokenizer_tasks=200", "sft_steps=6", "sft_batch=4",
    "max_turns=3", "max_turn_tokens=12", "max_context=256", "eval_tasks=3", "hint_sft_steps=4",
]  # fmt: skip


def test_scores_the_adapted_start_plain_and_hinted(tmp_path, capsys) -> None:
    settings = [*TINY, f"cache_dir={tmp_path}"]
    assert hint_readability.main([f"--set={kv}" for kv in settings] + ["--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the start a `hint_sft_steps` run uses: the adapted warm start, not the plain one
    _, _, origin = load_policy(
        TrainConfig().override_from_strings(settings), torch.device("cpu"), 0, 1, print
    )
    assert report["start"]["warm_start"] == origin["warm_start"]
    base = TrainConfig().override_from_strings([kv for kv in settings if not kv.startswith("hint_sft_steps")])
    assert load_policy(base, torch.device("cpu"), 0, 1, print)[2]["warm_start"] != origin["warm_start"]
    for split in hint_readability.SPLITS:
        assert set(report[split]) == {"greedy", "sampled_x2"}
        for cell in report[split].values():
            assert set(cell) == {"plain", "hinted"} and all(0.0 <= v <= 1.0 for v in cell.values())
