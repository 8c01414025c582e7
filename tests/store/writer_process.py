"""A real writer process for the store tests: writes deterministic steps for one rank."""

from __future__ import annotations

import argparse
import time

import numpy as np

from collapsewatch.store.writer import RunWriter

CONTROL = [
    {"index": 0, "text": "<tool_call>", "token_id": 3},
    {"index": 1, "text": "<|im_end|>", "token_id": 4},
]


def step_data(step: int, rank: int) -> dict[str, dict]:
    """Deterministic rows for (step, rank), so a reader can check every column."""
    rng = np.random.default_rng(1000 * rank + step)
    n_seq, n_tok = 3, 40
    return {
        "steps": {
            "name": ["reward/mean", "loss"],
            "value": rng.normal(size=2),
            "time": np.full(2, 1.7e9 + step),
        },
        "sequences": {
            "seq": np.arange(n_seq, dtype=np.int32),
            "uid": [f"{step}-{rank}-{i}" for i in range(n_seq)],
            "group": np.zeros(n_seq, np.int32),
            "reward": rng.normal(size=n_seq),
            "advantage": rng.normal(size=n_seq).astype(np.float32),
            "text": [f"turn ✓ {i}" for i in range(n_seq)],
            "turn_texts": [[f"t{i}", ""] for i in range(n_seq)],
        },
        "tokens": {
            "seq": np.repeat(np.arange(n_seq, dtype=np.int32), n_tok // n_seq + 1)[:n_tok],
            "pos": np.arange(n_tok, dtype=np.int32),
            "token_id": rng.integers(0, 500, n_tok).astype(np.int32),
            "logprob": -rng.random(n_tok).astype(np.float32),
            "entropy": rng.random(n_tok).astype(np.float32),
            "cq_0": rng.integers(0, 256, n_tok).astype(np.uint8),
            "cq_1": rng.integers(0, 256, n_tok).astype(np.uint8),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--run", default="run")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--no-close", action="store_true", help="hang after the last step (to be killed)")
    args = parser.parse_args()
    writer = RunWriter(
        args.root,
        args.run,
        rank=args.rank,
        world_size=args.world_size,
        control_tokens=CONTROL,
        heartbeat_interval_s=0.2,
    )
    for step in range(args.steps):
        for table, columns in step_data(step, args.rank).items():
            writer.write(table, step, columns)
        writer.flush_step(step)
        print(f"step {step}", flush=True)
        time.sleep(args.sleep)
    if args.no_close:
        time.sleep(3600)
    writer.close()


if __name__ == "__main__":
    main()
