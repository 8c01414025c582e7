"""warm_start_quality scores the warm start `collapsewatch train` uses, without changing it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import warm_start_quality  # noqa: E402

from collapsewatch.trainer import model as model_lib  # noqa: E402
from collapsewatch.trainer.recipes import TrainConfig  # noqa: E402
from collapsewatch.trainer.train import load_policy  # noqa: E402

TINY = [
    "model_size=tiny", "vocab_size=512", "tokenizer_tasks=200", "sft_steps=6", "sft_batch=4",
    "max_turns=3", "max_turn_tokens=12", "max_context=256",
]  # fmt: skip


def test_curve_scores_the_same_weights_the_trainer_builds(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    scored, plain = tmp_path / "scored", tmp_path / "plain"
    argv = ["--seeds", "3", "--every", "2", "--eval-tasks", "2", "--set", f"cache_dir={scored}"]
    assert warm_start_quality.main(argv + [f"--set={kv}" for kv in TINY]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (seed,) = report["seeds"]
    assert seed["built_here"] and [row[0] for row in seed["curve"]] == [2, 4, 6]
    assert all(0.0 <= row[2] <= 1.0 and row[1] > 0 for row in seed["curve"])
    assert report["in_dist"]["min"] == seed["in_dist"] == seed["curve"][-1][2]
    # the probe's expert-text cost: a loss in nats, the same on the curve's last check and at the end
    assert seed["probe_text_cost"] > 0 and seed["curve"][-1][3] == seed["probe_text_cost"]

    # the greedy rollouts between SFT steps leave the training untouched: the same weights as a
    # warm start built by the trainer's own path, with no one watching
    cfg = TrainConfig().override_from_strings(TINY + ["sft_seed=3", f"cache_dir={plain}"])
    _, _, origin = load_policy(cfg, torch.device("cpu"), 0, 1, lambda msg: None)
    assert model_lib.weights_digest(origin["warm_start"]) == seed["weights_sha256"]

    # a cached warm start is only scored, to the same result
    assert warm_start_quality.main(argv + [f"--set={kv}" for kv in TINY]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seeds"][0]
    assert not again["built_here"] and again["curve"] == []
    assert again["in_dist"] == seed["in_dist"] and again["weights_sha256"] == seed["weights_sha256"]
