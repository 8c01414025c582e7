"""Run-store throughput: how fast token rows reach disk, how small they are, how fast they scan.

Prints one JSON object as its last line:
  write_token_rows_per_s   token rows per second from first write() to last file on disk
  bytes_per_token          bytes on disk per captured token, all tables and files of the run
  caller_block_ms_per_step time the training loop spends inside write()/flush_step() per step (median; p99 too)
  scan_10m_rows_s          per-step GROUP BY over all token rows (>= 10M) after compaction
The token data is synthetic but shaped like a policy's: entropies and sampled logprobs from
skewed distributions, control-token log-probabilities mostly far below 1e-6 with spikes at
control positions. `--run DIR` also reports bytes per token of a real run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import track

import collapsewatch as cw
from collapsewatch import schema
from collapsewatch.store.writer import RunWriter

CONTROL = [
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]


def synthetic_step(rng: np.random.Generator, n_seq: int, seq_len: int, vocab: int) -> dict[str, dict]:
    n = n_seq * seq_len
    entropy = rng.gamma(0.6, 0.8, n).astype(np.float32)
    logprob = (-rng.exponential(0.25 + 0.6 * entropy)).astype(np.float32)
    token_id = np.minimum(rng.zipf(1.3, n), vocab - 1).astype(np.int32)
    is_control = rng.random(n) < 0.03
    tokens = {
        "seq": np.repeat(np.arange(n_seq, dtype=np.int32), seq_len),
        "pos": np.tile(np.arange(seq_len, dtype=np.int32), n_seq),
        "token_id": token_id,
        "logprob": logprob,
        "entropy": entropy,
        "position_type": rng.choice(5, n, p=[0.8, 0.05, 0.05, 0.08, 0.02]).astype(np.int8),
        "is_control": is_control,
        "is_tool_output": np.zeros(n, bool),
    }
    for i in range(len(CONTROL)):
        logp = rng.normal(-22.0, 4.0, n)
        logp[is_control] = rng.normal(-1.0, 1.0, int(is_control.sum()))
        tokens[schema.control_column(i)] = schema.quantize_control_logprobs(np.minimum(logp, 0.0))
    sequences = {
        "seq": np.arange(n_seq, dtype=np.int32),
        "group": np.arange(n_seq, dtype=np.int32) // 8,
        "reward": rng.random(n_seq),
        "advantage": rng.normal(size=n_seq).astype(np.float32),
        "completion_len": np.full(n_seq, seq_len, np.int32),
        "text": ['<tool_call>{"name": "get_balance", "arguments": {"account": "alice"}}</tool_call>'] * n_seq,
    }
    return {"tokens": tokens, "sequences": sequences}


def run_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--run", type=Path, help="also measure bytes per token of this real run")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pool = [synthetic_step(rng, args.seqs, args.seq_len, args.vocab) for _ in range(8)]
    control = [{"index": i, "text": t, "token_id": args.vocab - 1 - i} for i, t in enumerate(CONTROL)]
    root = Path(tempfile.mkdtemp(prefix="cw-store-bench-"))
    try:
        writer = RunWriter(root, "bench", control_tokens=control, capture="all", max_pending_bytes=4 << 30)
        block_ms = []
        t0 = time.perf_counter()
        for step in track(range(args.steps), description="writing steps"):
            data = pool[step % len(pool)]
            scalars = {
                "name": ["reward/mean", "loss"],
                "value": [float(step), 1.0],
                "time": [time.time()] * 2,
            }
            c0 = time.perf_counter()
            writer.write("steps", step, scalars)
            writer.write("sequences", step, data["sequences"])
            writer.write("tokens", step, data["tokens"])
            writer.flush_step(step)
            block_ms.append((time.perf_counter() - c0) * 1e3)
        # wait until every step is on disk, without compaction, to time writing alone
        while writer.stats["rows_written"] < args.steps * (args.seqs * args.seq_len + args.seqs + 2):
            time.sleep(0.005)
        write_s = time.perf_counter() - t0
        c0 = time.perf_counter()
        writer.close()
        compact_s = time.perf_counter() - c0
        total_tokens = args.steps * args.seqs * args.seq_len
        run = cw.open_run(root / "bench")
        s0 = time.perf_counter()
        agg = run.sql(
            "SELECT step, count(*) AS n, avg(entropy) AS entropy, avg(logprob) AS logprob, max(cq_2) AS q, "
            "quantile_cont(entropy, 0.99) AS p99 FROM tokens GROUP BY step ORDER BY step"
        )
        scan_s = time.perf_counter() - s0
        assert int(agg["n"].sum()) == total_tokens
        result = {
            "token_rows": total_tokens,
            "write_token_rows_per_s": round(total_tokens / write_s),
            "bytes_per_token": round(run_bytes(root / "bench") / total_tokens, 2),
            "caller_block_ms_per_step": round(float(np.median(block_ms)), 4),
            "caller_block_ms_per_step_p99": round(float(np.percentile(block_ms, 99)), 4),
            "compaction_s": round(compact_s, 2),
            "scan_10m_rows_s": round(scan_s, 3),
            "control_tokens": len(CONTROL),
            "cpu_count": os.cpu_count(),
        }
        if args.run:
            real = cw.open_run(args.run)
            n = real.row_counts()["tokens"]
            result["real_run_bytes_per_token"] = round(run_bytes(args.run) / max(n, 1), 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
