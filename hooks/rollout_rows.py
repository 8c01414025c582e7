"""Sequences-table rows: rollout fields given by the trainer, merged with per-sequence aggregates.

A rollout row joins token rows through `seq` within (step, rank); its `uid` defaults to
"<step>-<rank>-<seq>" (docs/run-format.md, `sequences`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray | None:
    """A numpy view of a tensor, list or array (None stays None); float tensors come back as float32+."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        x = x.float() if x.is_floating_point() and x.dtype != torch.float64 else x
        x = x.numpy()
    arr = np.asarray(x)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


def rollout_columns(
    step: int,
    rank: int,
    seq: np.ndarray,
    n: int,
    tokenizer: Any,
    *,
    completion_ids: Any,
    completion_mask: Any,
    tool_mask: Any,
    completion_lens: Any,
    texts: Sequence[str] | None,
    rewards: Any,
    advantages: Any,
    group_ids: Any,
    samples: Any,
    success: Any,
    num_tool_calls: Any,
    num_tool_errors: Any,
    prompt_lens: Any,
    num_turns: Any,
    turn_texts: Sequence[Sequence[str]] | None,
    sources: Sequence[str] | None,
    finish_reasons: Sequence[str | None] | None,
    prompts: Sequence[str] | None,
    uids: Sequence[str] | None,
    info: Sequence[Any] | None,
    reward_components: Mapping[str, Any] | Sequence[Mapping[str, float]] | None,
) -> dict[str, Any]:
    """Columns of `n` rollout rows (only the fields given; the writer fills the rest with nulls)."""
    cols: dict[str, Any] = {"seq": seq.astype(np.int32)}
    ids_list = id_lists(completion_ids, completion_mask, tool_mask)
    if completion_lens is not None:
        cols["completion_len"] = to_numpy(completion_lens, np.int32)
    elif ids_list is not None:
        cols["completion_len"] = np.array([len(policy) for _, policy in ids_list], dtype=np.int32)
    if texts is None and ids_list is not None and tokenizer is not None:
        texts = [tokenizer.decode(all_ids, skip_special_tokens=False) for all_ids, _ in ids_list]
    simple = {
        "reward": (rewards, np.float64),
        "advantage": (advantages, np.float32),
        "group": (group_ids, np.int32),
        "sample": (samples, np.int16),
        "success": (success, np.bool_),
        "num_tool_calls": (num_tool_calls, np.int16),
        "num_tool_errors": (num_tool_errors, np.int16),
        "prompt_len": (prompt_lens, np.int32),
        "num_turns": (num_turns, np.int16),
    }
    for name, (values, dtype) in simple.items():
        if values is not None:
            cols[name] = to_numpy(values, dtype)
    if group_ids is not None and samples is None:
        cols["sample"] = samples_within_groups(cols["group"])
    for name, values in (
        ("text", texts),
        ("turn_texts", turn_texts),
        ("source", sources),
        ("finish_reason", finish_reasons),
        ("prompt", prompts),
        ("uid", uids),
    ):
        if values is not None:
            cols[name] = [
                None if v is None else (list(v) if name == "turn_texts" else str(v)) for v in values
            ]
    if info is not None:
        cols["info"] = [
            None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str)) for v in info
        ]
    if reward_components is not None:
        cols["reward_components"] = components_rows(reward_components, n)
    if "uid" not in cols:
        cols["uid"] = [f"{step}-{rank}-{s}" for s in seq]
    return cols


def sequence_rows(
    step: int, rank: int, rollouts: list[dict[str, Any]], seq_aggs: dict[int, dict[str, float]]
) -> dict[str, Any] | None:
    """Merge rollout columns with per-sequence aggregates (entropy mean in nats, logprob sums)."""
    rows: dict[int, dict[str, Any]] = {}
    for cols in rollouts:
        n = len(cols["seq"])
        for i in range(n):
            rows[int(cols["seq"][i])] = {k: v[i] for k, v in cols.items()}
    for s, agg in seq_aggs.items():
        row = rows.setdefault(s, {"seq": s, "uid": f"{step}-{rank}-{s}"})
        if agg["n"] > 0:
            if agg.get("has_entropy", True):
                row.setdefault("entropy_mean", agg["ent"] / agg["n"])
            row.setdefault("logprob_sum", agg["lp"])
            if agg.get("has_old"):
                row.setdefault("old_logprob_sum", agg["old"])
            row.setdefault("completion_len", int(agg["n"]))
        if agg["umax"] >= 0:
            row.setdefault("control_unexpected_max", agg["umax"])
    if not rows:
        return None
    order = sorted(rows)
    names = sorted({k for r in rows.values() for k in r})
    out: dict[str, Any] = {}
    for name in names:
        values = [rows[s].get(name) for s in order]
        out[name] = values
    out["seq"] = np.array(order, dtype=np.int32)
    return out


def rollout_count(*candidates: Any) -> int:
    for c in candidates:
        if c is not None:
            return len(c)
    raise ValueError("log_rollout needs at least one of completion_ids, rewards, texts, uids, advantages")


def id_lists(
    completion_ids: Any, completion_mask: Any, tool_mask: Any
) -> list[tuple[list[int], list[int]]] | None:
    """Per rollout: (all completion ids, policy-generated ids)."""
    if completion_ids is None:
        return None
    if isinstance(completion_ids, (torch.Tensor, np.ndarray)):
        ids = to_numpy(completion_ids)
        m = (
            np.ones_like(ids, dtype=bool)
            if completion_mask is None
            else to_numpy(completion_mask).astype(bool)
        )
        t = np.ones_like(ids, dtype=bool) if tool_mask is None else to_numpy(tool_mask).astype(bool)
        return [(ids[i][m[i]].tolist(), ids[i][m[i] & t[i]].tolist()) for i in range(len(ids))]
    out = []
    for i, seq in enumerate(completion_ids):
        seq = list(to_numpy(seq).tolist())
        if tool_mask is not None:
            tm = list(to_numpy(tool_mask[i]).astype(bool))
            out.append((seq, [x for x, keep in zip(seq, tm, strict=False) if keep]))
        else:
            out.append((seq, seq))
    return out


def samples_within_groups(groups: np.ndarray) -> np.ndarray:
    out = np.zeros(len(groups), dtype=np.int16)
    seen: dict[int, int] = {}
    for i, g in enumerate(groups.tolist()):
        out[i] = seen.get(g, 0)
        seen[g] = out[i] + 1
    return out


def components_rows(
    components: Mapping[str, Any] | Sequence[Mapping[str, float]], n: int
) -> list[dict[str, float]]:
    if isinstance(components, Mapping):
        arrays = {k: to_numpy(v, np.float64) for k, v in components.items()}
        return [{k: float(a[i]) for k, a in arrays.items()} for i in range(n)]
    return [{k: float(v) for k, v in row.items()} for row in components]
