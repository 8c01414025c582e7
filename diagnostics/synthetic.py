"""Constructed runs with a known collapse, for tests, the scan-speed benchmark and demos.

Not a model of real training: a stable phase, then (optionally) a control-token precursor that
starts `precursor` steps before `collapse_at`, a format break and a success collapse after it.
The real-run evaluation is benchmarks/detection_eval.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from collapsewatch.schema import POSITION_TYPES, control_stat_name

CONTROL_TOKENS = ("<tool_call>", "</tool_call>", "<|im_end|>")
HEALTHY_CALL = (
    '<tool_call>\n{"name": "get_balance", "arguments": {"account": "alice"}}\n</tool_call><|im_end|>'
)
HEALTHY_ANSWER = "alice has 40.<|im_end|>"
POLLUTED = 'fay"}}</tool_call> alice has<|im_end|>'
COLLAPSED = "<tool_call><|im_end|>"


@dataclass
class SyntheticStep:
    step: int
    scalars: dict[str, float]
    sequences: pd.DataFrame


def _broken_share(step: int, collapse_at: int | None, precursor: int) -> float:
    if collapse_at is None or step < collapse_at - precursor // 2:
        return 0.02
    return float(min(0.9, 0.02 + 0.12 * (step - (collapse_at - precursor // 2) + 1)))


def synthetic_run(
    n_steps: int = 100,
    collapse_at: int | None = 60,
    precursor: int = 8,
    rollouts: int = 32,
    group_size: int = 4,
    seed: int = 0,
) -> Iterator[SyntheticStep]:
    """Yield one SyntheticStep per step (scalars named as in collapsewatch.schema.SCALARS)."""
    rng = np.random.default_rng(seed)
    for step in range(n_steps):
        to_collapse = None if collapse_at is None else step - collapse_at
        ramp = 0.0 if to_collapse is None else float(np.clip((to_collapse + precursor) / precursor, 0.0, 3.0))
        broken_share = _broken_share(step, collapse_at, precursor)
        p_success = (
            0.8 if to_collapse is None or to_collapse < 0 else max(0.05, 0.8 - 0.25 * (to_collapse + 1))
        )
        scalars: dict[str, float] = {}
        for token in CONTROL_TOKENS:
            for pos in POSITION_TYPES:
                base = 1e-5 * float(np.exp(0.2 * rng.normal()))
                spike = 10.0 ** (2.0 * ramp) if (token, pos) == ("<|im_end|>", "after_open_tag") else 1.0
                p = min(base * spike, 0.9)
                scalars[control_stat_name(token, pos, "mean")] = p
                scalars[control_stat_name(token, pos, "p99")] = min(p * 20, 0.99)
                scalars[control_stat_name(token, pos, "max")] = min(p * 100, 0.999)
                scalars[control_stat_name(token, pos, "unexpected_mean")] = p
                scalars[control_stat_name(token, pos, "count")] = 200.0
        success = rng.random(rollouts) < p_success
        broken = rng.random(rollouts) < broken_share
        turn_texts = []
        for b in broken:
            if b:
                turn_texts.append([COLLAPSED if rng.random() < 0.5 else POLLUTED])
            else:
                turn_texts.append([HEALTHY_CALL, HEALTHY_ANSWER])
        reward = success.astype(float)
        groups = np.arange(rollouts) // group_size
        adv = np.zeros(rollouts)
        for g in np.unique(groups):
            m = groups == g
            adv[m] = reward[m] - reward[m].mean()
        lengths = np.where(broken, 4, 40) + rng.integers(0, 5, rollouts)
        seqs = pd.DataFrame(
            {
                "seq": np.arange(rollouts, dtype=np.int32),
                "uid": [f"{step}-0-{i}" for i in range(rollouts)],
                "group": groups.astype(np.int32),
                "sample": (np.arange(rollouts) % group_size).astype(np.int16),
                "completion_len": lengths.astype(np.int32),
                "num_turns": np.array([len(t) for t in turn_texts], dtype=np.int16),
                "num_tool_calls": np.where(broken, 0, 1).astype(np.int16),
                "num_tool_errors": np.where(broken, 1, 0).astype(np.int16),
                "reward": reward,
                "advantage": adv.astype(np.float32),
                "success": success,
                "finish_reason": ["stop"] * rollouts,
                "entropy_mean": np.full(rollouts, 0.5, dtype=np.float32),
                "control_unexpected_max": np.where(broken, 0.5, 1e-4).astype(np.float32),
                "text": ["".join(t) for t in turn_texts],
                "turn_texts": turn_texts,
                "info": [json.dumps({"calls": int(not b)}) for b in broken],
            }
        )
        entropy = 0.5 * float(np.exp(0.05 * rng.normal())) * (1.0 + 0.5 * max(ramp - 1.0, 0.0))
        scalars.update(
            {
                "reward/mean": float(reward.mean()),
                "success/rate": float(success.mean()),
                "entropy/mean": entropy,
                "kl/mean": 0.01 * float(np.exp(0.2 * rng.normal())),
                "loss": 0.01 * float(rng.normal()),
                "grad_norm": 0.5 * float(np.exp(0.2 * rng.normal())),
                "clip/frac": 0.01 * float(np.exp(0.2 * rng.normal())),
                "length/mean": float(lengths.mean()),
                "length/truncated_frac": 0.0,
                "tool_calls/per_rollout": float((~broken).mean()),
            }
        )
        yield SyntheticStep(step, scalars, seqs)


def write_synthetic_run(
    root,
    name: str,
    n_steps: int = 100,
    collapse_at: int | None = 60,
    tokens_per_step: int = 0,
    seed: int = 0,
    write_ctrl_scalars: bool = True,
    **kwargs,
):
    """Write a constructed run with the real RunWriter; returns the run directory.

    `tokens_per_step` token rows per step (capture="all"-like) let benchmarks reach 10M rows.
    """
    import time

    from collapsewatch.schema import POSITION_TYPE_CODE, quantize_control_logprobs
    from collapsewatch.store.writer import RunWriter

    rng = np.random.default_rng(seed + 1)
    control = [{"index": i, "text": t, "token_id": 500 + i} for i, t in enumerate(CONTROL_TOKENS)]
    writer = RunWriter(
        root,
        name,
        rank=0,
        world_size=1,
        config={"recipe": "synthetic", "collapse_at": collapse_at, "seed": seed},
        tokenizer=None,
        control_tokens=control,
        capture="all" if tokens_per_step else "control",
    )
    try:
        for s in synthetic_run(n_steps, collapse_at=collapse_at, seed=seed, **kwargs):
            scalars = (
                s.scalars
                if write_ctrl_scalars
                else {k: v for k, v in s.scalars.items() if not k.startswith("ctrl/")}
            )
            names = list(scalars)
            writer.write(
                "steps",
                s.step,
                {
                    "name": names,
                    "value": np.array([scalars[n] for n in names]),
                    "time": np.full(len(names), time.time()),
                },
            )
            seqs = s.sequences
            writer.write(
                "sequences",
                s.step,
                {
                    c: seqs[c].tolist() if seqs[c].dtype == object else seqs[c].to_numpy()
                    for c in seqs.columns
                },
            )
            if tokens_per_step:
                n = tokens_per_step
                n_seq = len(seqs)
                pos_type = rng.integers(0, len(POSITION_TYPE_CODE), n).astype(np.int8)
                cols = {
                    "seq": (np.arange(n) * n_seq // n).astype(np.int32),
                    "pos": (np.arange(n) % max(n // n_seq, 1)).astype(np.int32),
                    "token_id": rng.integers(0, 529, n).astype(np.int32),
                    "logprob": (-rng.exponential(0.5, n)).astype(np.float32),
                    "entropy": rng.exponential(0.5, n).astype(np.float32),
                    "position_type": pos_type,
                    "is_control": np.zeros(n, dtype=bool),
                    "is_tool_output": np.zeros(n, dtype=bool),
                }
                for c in control:
                    by_type = np.array(
                        [s.scalars.get(f"ctrl/{c['text']}/{t}/mean", 1e-5) for t in POSITION_TYPES],
                        dtype=float,
                    )
                    p = by_type[pos_type]
                    logp = np.log(np.clip(p * np.exp(rng.normal(0, 0.3, n)), 1e-12, 1.0))
                    cols[f"cq_{c['index']}"] = quantize_control_logprobs(logp)
                writer.write("tokens", s.step, cols)
            writer.flush_step(s.step)
    finally:
        writer.close()
    return writer.run_dir
