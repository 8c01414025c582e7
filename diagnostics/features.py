"""Per-step inputs of the detectors: the steps-table scalars plus statistics derived from the step's
rollouts (structural-state shares, tool-call rate, zero-advantage groups, lengths, lazy likelihood).

Names derived here live under `seq/`, `state/`, `groups/`, `lazy/`, `mismatch/` so they never clash with
the canonical scalars of collapsewatch.schema.SCALARS, which win when both exist.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from collapsewatch.diagnostics.structure import StructuralState, summarize_rollout
from collapsewatch.schema import STRUCTURAL_STATES

CTRL_NAME = re.compile(r"^ctrl/(.+)/([a-z_]+)/([a-z_0-9]+)$")
TRUNCATED_REASONS = ("length", "max_turns")
_BROKEN = (StructuralState.TEXT_POLLUTION, StructuralState.FULL_COLLAPSE)


def parse_control_stat(name: str) -> tuple[str, str, str] | None:
    """`ctrl/<token>/<position_type>/<stat>` -> (token, position_type, stat); None for other names."""
    m = CTRL_NAME.match(name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def repeated_ngram_coverage(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier n-gram (0 = no loop, near 1 = one phrase looping)."""
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n)), strict=False))
    return 1.0 - len(set(grams)) / len(grams)


@dataclass
class StepFeatures:
    """Everything the detectors look at for one step."""

    step: int
    scalars: dict[str, float]
    derived: dict[str, float] = field(default_factory=dict)
    rows: pd.DataFrame | Mapping[str, Any] | None = None  # the step's sequences rows, as given
    rollout_states: list[StructuralState | None] | None = None

    @cached_property
    def sequences(self) -> pd.DataFrame | None:
        """The sequences rows as a DataFrame, built on first use: only an alert's evidence reads it,
        and a hook hands over plain columns (building a frame of 256 rollouts costs ~1.5 ms)."""
        rows = self.rows
        if rows is None or isinstance(rows, pd.DataFrame):
            return rows
        return pd.DataFrame(dict(rows))

    @cached_property
    def logs_sft_loss(self) -> bool:
        """The step logs a supervised loss on expert data (`sft/...loss`): the run is SFT-supervised.
        Computed once per step, for the structural shift and the verdict alike."""
        return any(name.startswith("sft/") and name.endswith("loss") for name in self.scalars)

    def get(self, name: str, default: float = math.nan) -> float:
        v = self.scalars.get(name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = self.derived.get(name, default)
        return _finite(v)

    def first(self, *names: str) -> float:
        """First of `names` that has a finite-or-infinite (not NaN) value."""
        for n in names:
            v = self.get(n)
            if not math.isnan(v):
                return v
        return math.nan

    def uids(
        self, mask: np.ndarray | pd.Series | None = None, order: np.ndarray | None = None, n: int = 3
    ) -> list:
        """Up to n rollout ids (uid, else seq) of this step selected by `mask`, optionally sorted by `order` (desc)."""
        df = self.sequences
        if df is None or len(df) == 0:
            return []
        idx = np.arange(len(df))
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            idx = idx[m]
        if order is not None and len(idx):
            o = np.asarray(order, dtype=float)[idx]
            idx = idx[np.argsort(-np.nan_to_num(o, nan=-np.inf), kind="stable")]
        col = "uid" if "uid" in df.columns else ("seq" if "seq" in df.columns else None)
        if col is None:
            return [int(i) for i in idx[:n]]
        vals = df[col].to_numpy()[idx[:n]]
        return [v.item() if hasattr(v, "item") else v for v in vals]


FLOAT_COLUMNS = (
    "reward", "success", "num_tool_calls", "num_tool_errors", "group", "rank", "completion_len", "advantage",
    "logprob_sum", "logprob_sum_after", "old_logprob_sum", "control_unexpected_max",
)  # fmt: skip
OBJECT_COLUMNS = ("turn_texts", "text", "finish_reason", "source")
# Rollouts not sampled by the policy from the prompt it is trained on: teacher-forced expert
# trajectories, and hinted rollouts (sampled from a prompt with a hint). Structural statistics leave
# them out; they describe the supervision, not the policy.
NOT_POLICY_SAMPLES = ("expert", "hint")
# Groups smaller than this say nothing about the policy's mode: at 25% broken rollouts, 2 of 2 are
# broken by chance 6% of the time, 4 of 4 only 0.4%.
MIN_GROUP_FOR_MODE = 4


def _to_float(col: pd.Series | Any) -> np.ndarray:
    if not isinstance(col, pd.Series):  # a list or array from a hook: None becomes NaN in the cast
        try:
            return np.asarray(col, dtype=float)
        except (TypeError, ValueError):
            col = pd.Series(col, dtype=object)
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "fiub":  # no pd.NA possible: a plain cast
        return col.to_numpy(dtype=float)  # (na_value costs ~35 us per int column, a step has several)
    try:
        return col.to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError):
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _to_objects(col: pd.Series | Any) -> np.ndarray:
    if isinstance(col, pd.Series):
        return col.to_numpy(dtype=object)
    # fromiter keeps each element whole: equal-length lists (turn texts) stay a 1-D array of lists
    return np.fromiter(col, dtype=object, count=len(col))


def row_count(seqs: pd.DataFrame | Mapping[str, Any] | None) -> int:
    """Rows of a DataFrame, or of a mapping of equal-length columns (0 for None or no columns)."""
    if seqs is None:
        return 0
    if isinstance(seqs, pd.DataFrame):
        return len(seqs)
    return len(next(iter(seqs.values()))) if len(seqs) else 0


def sequence_arrays(seqs: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The columns the statistics need, converted once: numbers as float64 (NaN when missing),
    text columns as object arrays. Takes a DataFrame, or the mapping of columns a hook builds (no
    frame needed). `scan` converts the whole table once and slices it per step."""
    names = seqs.columns if isinstance(seqs, pd.DataFrame) else seqs.keys()
    out: dict[str, np.ndarray] = {}
    for name in FLOAT_COLUMNS:
        if name in names:
            out[name] = _to_float(seqs[name])
    for name in OBJECT_COLUMNS:
        if name in names:
            out[name] = _to_objects(seqs[name])
    return out


def group_keys(group: np.ndarray, rank: np.ndarray | None) -> np.ndarray:
    """One id per (rank, group): group 0 of rank 1 is another prompt than group 0 of rank 0.
    -1 where the group is unknown; ranks are ignored unless every row has one."""
    known = np.isfinite(group) & (group >= 0)
    key = np.where(known, group, 0).astype(np.int64)
    if rank is not None and np.isfinite(rank).all():
        key = key + rank.astype(np.int64) * (1 << 32)
    return np.where(known, key, -1)


def policy_samples(source: np.ndarray | None, n: int) -> np.ndarray:
    """Mask of the rows the policy sampled from its own prompt (all rows when no source is given)."""
    if source is None:
        return np.ones(n, dtype=bool)
    return np.array([x not in NOT_POLICY_SAMPLES for x in source], dtype=bool)


def _group_stats(keys: np.ndarray, reward: np.ndarray, success: np.ndarray | None) -> dict[str, float]:
    """Share of GRPO groups (size > 1) whose rewards are all equal, split into all-correct and
    all-wrong (by the success flag when known, else by the step's reward range, else by sign)."""
    ok = (keys >= 0) & np.isfinite(reward)
    if not ok.any():
        return {}
    key = keys[ok]
    r = reward[ok]
    order = np.argsort(key, kind="stable")
    _, start, counts = np.unique(key[order], return_index=True, return_counts=True)
    rmax = np.maximum.reduceat(r[order], start)
    rmin = np.minimum.reduceat(r[order], start)
    real = counts > 1
    if not real.any():
        return {}
    zero = (rmax - rmin <= 1e-9)[real]
    if success is not None and np.isfinite(success[ok]).all():
        smean = np.add.reduceat(success[ok][order], start)[real] / counts[real]
        correct, wrong = smean >= 1.0, smean <= 0.0
    else:
        top, bottom = float(r.max()), float(r.min())
        level = rmax[real]
        if top > bottom:
            correct, wrong = level >= top, level <= bottom
        else:
            correct, wrong = level > 0, level <= 0
    return {
        "groups/zero_adv_frac": float(zero.mean()),
        "groups/zero_adv_all_correct": float((zero & correct).mean()),
        "groups/zero_adv_all_wrong": float((zero & wrong).mean()),
    }


def sample_index(n: int, limit: int | None, keys: np.ndarray | None = None) -> np.ndarray:
    """Evenly spaced rows (deterministic, so live and scan see the same sample). With group keys
    (`group_keys`), whole groups are taken (evenly spaced groups), so per-group statistics still see
    every member."""
    if limit is None or n <= limit:
        return np.arange(n)
    if keys is not None and (keys >= 0).all():
        ids, inverse = np.unique(keys, return_inverse=True)
        per_group = n / len(ids)
        keep_groups = max(1, int(limit // max(per_group, 1.0)))
        if keep_groups < len(ids):
            chosen = np.unique(np.linspace(0, len(ids) - 1, keep_groups).round().astype(int))
            return np.flatnonzero(np.isin(inverse, chosen))
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def broken_mode_groups(
    keys: np.ndarray, own: np.ndarray, states: list[StructuralState | None]
) -> tuple[dict[str, float], np.ndarray]:
    """Groups in which every rollout the policy sampled is broken (expert and hinted rows left out):
    their share and count, and the mask of the rows in them (the evidence an alert points to).

    One broken rollout is a tail sample; a whole group of them means the broken format is the
    policy's mode for that prompt. Such a group also fails as one, so GRPO gives it zero advantage
    and nothing in the RL loss pushes back.
    """
    rows = np.zeros(len(states), dtype=bool)
    keep = np.array([s is not None for s in states], dtype=bool) & (keys >= 0) & own
    if not keep.any():
        return {}, rows
    key = keys[keep]
    broken = np.array([s in _BROKEN for s, k in zip(states, keep, strict=True) if k], dtype=float)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    big = counts >= MIN_GROUP_FOR_MODE
    if not big.any():
        return {}, rows
    full = (np.bincount(inverse, weights=broken) == counts) & big
    rows[np.flatnonzero(keep)[full[inverse]]] = True
    stats = {
        "groups/broken_mode_frac": float(full[big].mean()),
        "groups/broken_mode_count": float(full.sum()),
        "groups/count": float(big.sum()),
    }
    return stats, rows


def derive_sequence_stats(
    seqs: pd.DataFrame | Mapping[str, np.ndarray], max_classified: int | None = None
) -> tuple[dict[str, float], list[StructuralState | None] | None]:
    """Step statistics from the sequences rows of one step (all ranks), given as a DataFrame or as
    `sequence_arrays`. Text statistics (structural states, repetition) use at most `max_classified`
    evenly spaced rollouts; `None` marks the rest."""
    n = row_count(seqs)
    if isinstance(seqs, pd.DataFrame):
        seqs = sequence_arrays(seqs)
    out: dict[str, float] = {}
    states: list[StructuralState] | None = None
    if n == 0:
        return out, None
    out["seq/count"] = float(n)

    reward = seqs.get("reward")
    if reward is not None and np.isfinite(reward).any():
        out["seq/reward_mean"] = float(np.nanmean(reward))
    success = seqs.get("success")
    if success is not None and np.isfinite(success).any():
        out["seq/success_rate"] = float(np.nanmean(success))

    calls = seqs.get("num_tool_calls")
    if calls is not None and np.isfinite(calls).any():
        out["seq/tool_calls_mean"] = float(np.nanmean(calls))
        out["seq/no_tool_frac"] = float(np.mean(calls <= 0))
        errors = seqs.get("num_tool_errors")
        if errors is not None and np.nansum(calls) > 0:
            out["seq/tool_error_rate"] = float(np.nansum(errors) / max(np.nansum(calls), 1.0))

    group = seqs.get("group")
    keys = None if group is None else group_keys(group, seqs.get("rank"))
    own = policy_samples(seqs.get("source"), n)
    picked = sample_index(n, max_classified, keys)
    turns = seqs.get("turn_texts")
    if turns is None and "text" in seqs:
        turns = [[t] for t in seqs["text"]]
    if turns is not None:
        summaries = [summarize_rollout(turns[i]) for i in picked]
        states = [None] * n
        for i, summary in zip(picked, summaries, strict=True):
            states[i] = summary.state
        if own[picked].any():  # a step of only expert/hinted rows keeps shares, of those rows
            summaries = [x for x, keep in zip(summaries, own[picked], strict=True) if keep]
        counts = dict.fromkeys(STRUCTURAL_STATES, 0)
        for summary in summaries:
            for k, v in summary.counts.items():
                counts[k] += v
        total = sum(counts.values())
        for k in STRUCTURAL_STATES:
            out[f"state/{k}"] = counts[k] / total if total else 0.0
        out["state/broken_turns"] = (
            (counts["text_pollution"] + counts["full_collapse"]) / total if total else 0.0
        )
        out["state/broken_rollouts"] = sum(x.state in _BROKEN for x in summaries) / max(len(summaries), 1)

    if reward is not None and keys is not None:
        out.update(_group_stats(keys, reward, success))
    if states is not None and keys is not None:
        out.update(broken_mode_groups(keys, own, states)[0])

    length = seqs.get("completion_len")
    if length is not None and np.isfinite(length).any():
        out["seq/length_mean"] = float(np.nanmean(length))
    finish = seqs.get("finish_reason")
    if finish is not None:
        out["seq/truncated_frac"] = float(np.mean([f in TRUNCATED_REASONS for f in finish]))
    if "text" in seqs:
        texts = seqs["text"][picked]
        cover = [repeated_ngram_coverage(t) if isinstance(t, str) else 0.0 for t in texts]
        out["seq/repetition_frac"] = float(np.mean(np.asarray(cover) >= 0.5))

    adv = seqs.get("advantage")
    before = seqs.get("logprob_sum")
    after = seqs.get("logprob_sum_after")
    if adv is not None and before is not None and after is not None:
        pos = (adv > 0) & np.isfinite(before) & np.isfinite(after)
        if pos.any():
            delta = after[pos] - before[pos]
            out["lazy/decrease_frac"] = float(np.mean(delta < 0))
            lens = length[pos] if length is not None else np.ones(pos.sum())
            out["lazy/delta_per_token"] = float(np.nanmean(delta / np.maximum(lens, 1.0)))
    old = seqs.get("old_logprob_sum")
    if old is not None and before is not None:
        ok = np.isfinite(old) & np.isfinite(before)
        if ok.any():
            lens = length[ok] if length is not None else np.ones(ok.sum())
            out["mismatch/abs_per_token"] = float(
                np.nanmean(np.abs(before[ok] - old[ok]) / np.maximum(lens, 1.0))
            )
    cmax = seqs.get("control_unexpected_max")
    if cmax is not None and np.isfinite(cmax).any():
        out["seq/control_unexpected_frac"] = float(np.nanmean(cmax >= 0.1))
    return out, states


def step_features(
    step: int,
    scalars: Mapping[str, Any],
    sequences: pd.DataFrame | Mapping[str, Any] | None,
    max_classified: int | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> StepFeatures:
    """Build the detectors' view of one step from its scalars and its sequences rows (a DataFrame, or
    a mapping of equal-length columns). Bad cells become NaN; nothing here raises on odd input."""
    clean: dict[str, float] = {}
    for k, v in (scalars or {}).items():
        if k == "step":
            continue
        clean[str(k)] = _finite(v)
    derived: dict[str, float] = {}
    states = None
    if row_count(sequences):
        if arrays is None and not isinstance(sequences, pd.DataFrame):
            arrays = sequence_arrays(sequences)  # plain columns from a hook: no DataFrame on this path
        derived, states = derive_sequence_stats(arrays if arrays is not None else sequences, max_classified)
    return StepFeatures(int(step), clean, derived, sequences, states)
