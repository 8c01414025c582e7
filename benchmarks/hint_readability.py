"""Can the policy read a hint? Success with and without the hint line, greedy and sampled.

A hint supervises only if hinted rollouts succeed more often than plain ones (docs/reproduction.md,
round 25). Loads the start a run with the given settings would use (`--set hint_sft_steps=200` for
the `hint` recipe's adapted warm start, built and cached if missing, `--set hint_style=calls` for
hints that carry the expert's calls, `--set model_path=DIR` for a checkpoint) and scores it on
`eval_tasks` held-out tasks per split: greedy, and sampled at temperature 1 with `--repeats`
rollouts per task.

Prints one JSON object: per split and decoding, the success with the plain and the hinted prompt.
Usage: .venv/bin/python benchmarks/hint_readability.py [--set hint_sft_steps=200 ...] [--repeats 4]
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console

from collapsewatch.trainer.recipes import TrainConfig
from collapsewatch.trainer.rollout import ChatFormat
from collapsewatch.trainer.train import evaluate, load_policy, pick_device

SPLITS = ("in_dist", "format_ood")  # content-OOD success is 0 with or without a hint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig overrides"
    )
    parser.add_argument("--repeats", type=int, default=4, help="sampled rollouts per task")
    args = parser.parse_args(argv)
    cfg = TrainConfig().override_from_strings(args.set)
    cfg.validate()
    torch.set_num_threads(1)
    device = pick_device(cfg.device)
    console = Console(stderr=True)
    model, tok, origin = load_policy(cfg, device, 0, 1, console.print)
    fmt = ChatFormat(tok, cfg.hint_style)
    result: dict = {
        "benchmark": "hint_readability",
        "settings": args.set,
        "start": origin,
        "tasks": cfg.eval_tasks,
    }
    for decoding, temperature, repeats in (
        ("greedy", 0.0, 1),
        (f"sampled_x{args.repeats}", 1.0, args.repeats),
    ):
        for hint in (False, True):
            scores = evaluate(model, fmt, cfg, device, temperature, SPLITS, hint=hint, repeats=repeats)
            for split in SPLITS:
                cell = result.setdefault(split, {}).setdefault(decoding, {})
                cell["hinted" if hint else "plain"] = round(scores[f"eval/{split}_success"], 3)
            console.print(f"{decoding}, {'hinted' if hint else 'plain'}: {scores}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
