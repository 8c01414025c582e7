"""How good is the SFT warm start, seed by seed, and when does it get there?

Builds the trainer's warm start for each `--seeds` value exactly as `collapsewatch train` does (same
code, same cache: a warm start built here is the one a run with that `sft_seed` starts from, and
one already cached is only scored), and scores it with greedy rollouts on held-out tasks every
`--every` SFT steps and at the end. Why: the warm start's greedy success is a draw over SFT seeds
and machines (0.11-0.58 for the same recipe, docs/reproduction.md), and it decides whether runs
collapse; a change to the SFT recipe should be judged over seeds, on the curve, not one number.

Prints a line per checkpoint and, last, one JSON object: per seed the curve (step, mean loss of the
last `--every` steps, in-distribution greedy success, the probe's expert-text cost), the final
in-distribution / format-OOD / content-OOD success and probe text cost, the weights digest and
seconds; and the spread of the final in-distribution success over seeds. The probe text cost is the
teacher-forced loss, nats per token, of the expert's ordinary tokens on the trainer's reference
conversations (held-out tasks): the start cost `ProbeTextDrift` measures drift against, and a
cheap proxy of the greedy score (over the 8 warm starts of docs/reproduction.md, 0.06 nats went
with 0.30-0.34 greedy success, 0.10-0.13 with 0.125).

Usage: .venv/bin/python benchmarks/warm_start_quality.py --seeds 1 2 3 [--set sft_lr=6e-3 ...]
       [--every 250] [--eval-tasks 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from collapsewatch.schema import PROBE_TEXT
from collapsewatch.trainer import model as model_lib
from collapsewatch.trainer import tokenizer as tokenizer_lib
from collapsewatch.trainer.grpo import control_probe
from collapsewatch.trainer.recipes import TrainConfig
from collapsewatch.trainer.rollout import ChatFormat
from collapsewatch.trainer.train import evaluate, load_policy, pick_device


def score_seed(cfg: TrainConfig, every: int, console: Console) -> dict:
    """Build (or load) the warm start of `cfg.sft_seed`; its greedy curve and final scores."""
    device = pick_device(cfg.device)
    # the tokenizer load_policy will use (cached after the first seed): the curve's rollouts need it
    fmt = ChatFormat(tokenizer_lib.load_or_train(Path(cfg.cache_dir), cfg.vocab_size, cfg.tokenizer_tasks))
    probe = control_probe(fmt, cfg.probe_tasks)

    def text_cost(model: torch.nn.Module) -> float | None:
        return None if probe is None else round(-probe.measure(model)[PROBE_TEXT], 4)

    curve: list[list[float]] = []
    window: list[float] = []
    started = time.perf_counter()

    def on_step(step: int, loss: float, model: torch.nn.Module) -> None:
        window.append(loss)
        if step % every and step != cfg.sft_steps:
            return
        success = evaluate(model, fmt, cfg, device, splits=("in_dist",))["eval/in_dist_success"]
        model.train()  # evaluate() leaves the model in eval mode; the SFT goes on after it
        curve.append([step, round(float(np.mean(window)), 4), success, text_cost(model)])
        window.clear()
        console.print(
            f"seed {cfg.sft_seed} step {step}: loss {curve[-1][1]:.3f}, greedy in-dist {success:.3f}, "
            f"probe text cost {curve[-1][3]}"
        )

    model, tok, origin = load_policy(cfg, device, 0, 1, console.print, sft_progress=on_step)
    final = evaluate(model, ChatFormat(tok), cfg, device)
    return {
        "sft_seed": cfg.sft_seed,
        "built_here": bool(curve),
        "curve": curve,
        "in_dist": final["eval/in_dist_success"],
        "format_ood": final["eval/format_ood_success"],
        "content_ood": final["eval/content_ood_success"],
        "probe_text_cost": text_cost(model),
        "final_loss": origin.get("sft_final_loss"),
        "weights_sha256": model_lib.weights_digest(origin["warm_start"]),
        "warm_start": origin["warm_start"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="SFT seeds (sft_seed)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    ap.add_argument("--every", type=int, default=250, help="SFT steps between greedy scores")
    ap.add_argument("--eval-tasks", type=int, default=64, help="held-out tasks per split")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("COLLAPSEWATCH_THREADS", "1")))
    console = Console(stderr=True)
    base = TrainConfig().override_from_strings(args.set).override(eval_tasks=args.eval_tasks)
    if base.model_path:
        raise SystemExit(
            "warm_start_quality scores the SFT warm start; a --set model_path checkpoint is not one"
        )
    seeds = [score_seed(base.override(sft_seed=s), args.every, console) for s in args.seeds]
    finals = [s["in_dist"] for s in seeds]
    print(
        json.dumps(
            {
                "benchmark": "warm_start_quality",
                "sft": {k: getattr(base, k) for k in ("model_size", "sft_steps", "sft_lr", "sft_batch")},
                "eval_tasks": args.eval_tasks,
                "seeds": seeds,
                "in_dist": {"min": min(finals), "median": float(np.median(finals)), "max": max(finals)},
                "torch": torch.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
