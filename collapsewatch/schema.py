"""The run-directory schema, written down once: table columns, dtypes, units and encodings.

docs/run-format.md explains every column; this module is what the writer enforces and the reader trusts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

TABLES = ("steps", "sequences", "tokens", "alerts")

# Position types of a completion token, relative to the tool-call grammar (int8 on disk).
POSITION_TYPES = ("other", "turn_start", "after_open_tag", "in_call", "after_close_tag")
POSITION_TYPE_CODE = {name: code for code, name in enumerate(POSITION_TYPES)}

SEVERITIES = ("info", "warning", "critical")

# Structural states of one assistant turn (diagnostics.classify_turn returns these).
STRUCTURAL_STATES = ("healthy_tool_call", "healthy_response", "text_pollution", "full_collapse")

# --- control-token probability quantisation -------------------------------------------------
# p(control) is stored as uint8 q = round(-log2(p) * 8): steps of 1/8 bit (±4.4% relative),
# range down to 2**-31.875 ≈ 2.5e-10; q = 255 means "below that floor" and decodes to 0.
# Eight control tokens then cost ~1-4 bytes per token row on disk instead of 32.
CONTROL_Q_SCALE = 8.0
CONTROL_Q_FLOOR = 255


def quantize_control_logprobs(logp: np.ndarray) -> np.ndarray:
    """Natural-log probabilities -> uint8 codes (see CONTROL_Q_SCALE)."""
    logp = np.asarray(logp, dtype=np.float64)
    q = np.rint(-logp / np.log(2.0) * CONTROL_Q_SCALE)
    q = np.nan_to_num(q, nan=CONTROL_Q_FLOOR, posinf=CONTROL_Q_FLOOR, neginf=0)
    return np.clip(q, 0, CONTROL_Q_FLOOR).astype(np.uint8)


def dequantize_control_probs(q: np.ndarray) -> np.ndarray:
    """uint8 codes -> probabilities (float32); the floor code decodes to 0."""
    q = np.asarray(q)
    p = np.exp2(-q.astype(np.float32) / CONTROL_Q_SCALE)
    return np.where(q >= CONTROL_Q_FLOOR, np.float32(0.0), p).astype(np.float32)


def round_mantissa(x: np.ndarray, keep_bits: int = 12) -> np.ndarray:
    """Round float32 values to `keep_bits` mantissa bits (relative error <= 2**-(keep_bits+1)).

    Logprobs and entropies are stored this way: 12 bits keep them within 1.2e-4 relative, and the
    zeroed low bits let zstd shrink the column to about half.
    """
    a = np.ascontiguousarray(x, dtype=np.float32)
    u = a.view(np.uint32)
    drop = 23 - keep_bits
    half = np.uint32(1 << (drop - 1))
    mask = np.uint32((0xFFFFFFFF >> drop) << drop)
    finite = np.isfinite(a)
    with np.errstate(over="ignore"):
        rounded = ((u + half) & mask).view(np.float32)
    truncated = (u & mask).view(np.float32)  # near float32's max, rounding up would overflow
    return np.where(finite, np.where(np.isfinite(rounded), rounded, truncated), a)


def control_column(index: int) -> str:
    """On-disk column of the index-th control token (its text lives in run.json)."""
    return f"cq_{index}"


def control_prob_column(token: str) -> str:
    """Decoded probability column the reader exposes for a control token."""
    return f"p({token})"


# --- table schemas -------------------------------------------------------------------------
STEPS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("name", pa.string()),
        ("value", pa.float64()),
        ("time", pa.float64()),
    ]
)

SEQUENCES_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("seq", pa.int32()),
        ("uid", pa.string()),
        ("group", pa.int32()),
        ("sample", pa.int16()),
        ("source", pa.string()),
        ("prompt_len", pa.int32()),
        ("completion_len", pa.int32()),
        ("num_turns", pa.int16()),
        ("num_tool_calls", pa.int16()),
        ("num_tool_errors", pa.int16()),
        ("reward", pa.float64()),
        ("advantage", pa.float32()),
        ("reward_components", pa.map_(pa.string(), pa.float64())),
        ("success", pa.bool_()),
        ("finish_reason", pa.string()),
        ("entropy_mean", pa.float32()),
        ("logprob_sum", pa.float32()),
        ("old_logprob_sum", pa.float32()),
        ("logprob_sum_after", pa.float32()),
        ("control_unexpected_max", pa.float32()),
        ("prompt", pa.string()),
        ("text", pa.string()),
        ("turn_texts", pa.list_(pa.string())),
        ("info", pa.string()),
    ]
)

# Control-token columns cq_0..cq_{k-1} (uint8) are appended per run; see control_column().
TOKENS_BASE_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("seq", pa.int32()),
        ("pos", pa.int32()),
        ("token_id", pa.int32()),
        ("logprob", pa.float32()),
        ("entropy", pa.float32()),
        ("position_type", pa.int8()),
        ("is_control", pa.bool_()),
        ("is_tool_output", pa.bool_()),
        ("old_logprob", pa.float32()),
        ("ref_logprob", pa.float32()),
        ("sampling_logprob", pa.float32()),
        ("top_ids", pa.list_(pa.int32())),
        ("top_logprobs", pa.list_(pa.float32())),
    ]
)

ALERTS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("detector", pa.string()),
        ("severity", pa.string()),
        ("message", pa.string()),
        ("value", pa.float64()),
        ("baseline", pa.float64()),
        ("evidence", pa.string()),
        ("time", pa.float64()),
        ("source", pa.string()),
    ]
)


def tokens_schema(num_control_tokens: int) -> pa.Schema:
    """Token table schema for a run with `num_control_tokens` control tokens."""
    fields = list(TOKENS_BASE_SCHEMA)
    fields += [pa.field(control_column(i), pa.uint8()) for i in range(num_control_tokens)]
    return pa.schema(fields)


def table_schema(table: str, num_control_tokens: int = 0) -> pa.Schema:
    if table == "steps":
        return STEPS_SCHEMA
    if table == "sequences":
        return SEQUENCES_SCHEMA
    if table == "tokens":
        return tokens_schema(num_control_tokens)
    if table == "alerts":
        return ALERTS_SCHEMA
    raise ValueError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")


# Canonical scalar names in the steps table. Trainers and adapters write these (plus anything
# else, namespaced) so detectors and the dashboard find the same series whatever produced a run.
SCALARS = {
    "reward/mean": "mean total reward per rollout",
    "success/rate": "share of rollouts whose task checker passed, in [0, 1]",
    "entropy/mean": "token-mean entropy of generated tokens, nats",
    "kl/mean": "token-mean KL to the reference policy, nats",
    "loss": "training loss",
    "grad_norm": "global gradient norm before clipping",
    "updates/skipped_nonfinite": "optimizer steps skipped this step because the gradient was NaN or infinite",
    "lr": "learning rate",
    "clip/frac": "share of tokens whose ratio was clipped (low or high)",
    "clip/frac_low": "share clipped at 1 - eps",
    "clip/frac_high": "share clipped at 1 + eps_high",
    "ratio/std": "std of pi/pi_old over generated tokens",
    "length/mean": "mean generated tokens per rollout",
    "length/truncated_frac": "share of rollouts that hit the length or turn limit",
    "tool_calls/per_rollout": "mean tool calls per rollout",
    "tokens/entropy_mean": "mean entropy over captured-from token rows (computed by the hook), nats",
    "tokens/logprob_mean": "mean sampled-token logprob (computed by the hook), nats",
    "tokens/count": "generated tokens seen by the hook this step",
    # ctrl/<token>/<position_type>/{mean,p99,max,unexpected_mean,unexpected_max,count}:
    # probability statistics of each control token per position type, written by the hook.
    "probe/logp_ctrl": "reference probe (hooks/probe.py): mean teacher-forced log p of the control tokens, nats",
    "probe/logp_ctrl_worst": "reference probe: per conversation the least likely control token's log p, averaged",
    "probe/logp_text": "reference probe: mean log p of the other assistant tokens, nats",
    # probe/logp/<token>: the reference probe's mean log p of one control token (probe_token_name).
}
PROBE_TOKEN_PREFIX = "probe/logp/"
PROBE_CTRL = "probe/logp_ctrl"
PROBE_CTRL_WORST = "probe/logp_ctrl_worst"
PROBE_TEXT = "probe/logp_text"


def control_stat_name(token: str, position_type: str, stat: str) -> str:
    """Steps-table name of a control-token statistic (probabilities, not logs)."""
    return f"ctrl/{token}/{position_type}/{stat}"


def probe_token_name(token: str) -> str:
    """Steps-table name of the reference probe's log p of one control token."""
    return PROBE_TOKEN_PREFIX + token


def parse_probe_token(name: str) -> str | None:
    """The control token of a `probe_token_name`, else None."""
    return name.removeprefix(PROBE_TOKEN_PREFIX) if name.startswith(PROBE_TOKEN_PREFIX) else None
