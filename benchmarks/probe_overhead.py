"""Cost of the reference probe: the bundled trainer's GRPO step with the probe scored vs without.

The `collapse` recipe's settings (8 tasks x G=8, up to 5 turns) from the cached SFT warm start, fp32
on one CPU thread. Steps alternate probe on / probe off on one training run, so both see the same
policy drift; the figure is the ratio of the median step times. Prints JSON last.

    python benchmarks/probe_overhead.py [--pairs 6] [--probe-tasks 32]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch

from collapsewatch.trainer.grpo import GRPOState, control_probe, grpo_step
from collapsewatch.trainer.recipes import recipe
from collapsewatch.trainer.rollout import ChatFormat
from collapsewatch.trainer.train import load_policy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pairs", type=int, default=6, help="timed (probe, no probe) step pairs after one warm-up"
    )
    ap.add_argument("--probe-tasks", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = recipe("collapse", probe_tasks=args.probe_tasks, device="cpu")
    device = torch.device("cpu")
    model, tok, _ = load_policy(cfg, device, 0, 1, lambda msg: print(msg, file=sys.stderr))
    fmt = ChatFormat(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    s = GRPOState(cfg, model, model, None, opt, fmt, device, None,
                  task_rng=random.Random(0), sample_gen=torch.Generator().manual_seed(0))  # fmt: skip
    probe = control_probe(fmt, cfg.probe_tasks)
    times: dict[bool, list[float]] = {True: [], False: []}
    probe_s = []
    for step in range(1, 2 * args.pairs + 2):
        with_probe = step % 2 == 0
        s.probe = probe if with_probe else None
        t0 = time.perf_counter()
        metrics = grpo_step(s, step)
        if step > 1:  # the first step warms up allocator and caches
            times[with_probe].append(time.perf_counter() - t0)
            if with_probe:
                probe_s.append(metrics["time/probe_s"])
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(json.dumps({
        "benchmark": "probe_overhead", "device": "cpu", "threads": 1, "probe_tasks": args.probe_tasks,
        "pairs": args.pairs, "step_s_with_probe": round(on, 3), "step_s_without_probe": round(off, 3),
        "probe_s_median": round(statistics.median(probe_s), 3),
        "probe_share_of_step": round(statistics.median(probe_s) / on, 3),
        "overhead_ratio": round(on / off, 3),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
