"""Token-table columns from per-token capture tensors (docs/run-format.md, `tokens`).

Logprobs and entropies are rounded to 12 mantissa bits, control-token probabilities quantised to
uint8 codes (schema.quantize_control_logprobs); top-k alternatives are sparse list columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from collapsewatch import schema

TOP_ROWS_PER_CALL = 256  # full-vocabulary rows per top-k call (256 x 152k float32 = 155 MB)
TopFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def token_columns(
    keep: torch.Tensor,
    seqs: torch.Tensor,
    ids: torch.Tensor,
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    ctrl_logp: torch.Tensor | None,
    types: torch.Tensor,
    is_control: torch.Tensor,
    policy: torch.Tensor,
    old: torch.Tensor | None,
    ref: torch.Tensor | None,
    sampling: torch.Tensor | None,
    top_fn: TopFn | None,
) -> dict[str, Any] | None:
    """Columns for the [B, T] positions where `keep` is True (None when there are none).

    `seqs` [B] is each row's rollout index; `top_fn(b, t)` returns top-k ids and logprobs for the
    given positions and is called only where the sampled token is a control token.
    """
    b_idx, t_idx = keep.nonzero(as_tuple=True)
    if b_idx.numel() == 0:
        return None
    ctrl_rows = is_control[b_idx, t_idx]
    cols: dict[str, Any] = {
        "seq": seqs[b_idx.cpu()].numpy().astype(np.int32),
        "pos": t_idx.cpu().numpy().astype(np.int32),
        "token_id": ids[b_idx, t_idx].cpu().numpy().astype(np.int32),
        "logprob": schema.round_mantissa(logprob[b_idx, t_idx].cpu().numpy()),
        "entropy": schema.round_mantissa(entropy[b_idx, t_idx].cpu().numpy()),
        "position_type": types[b_idx, t_idx].cpu().numpy().astype(np.int8),
        "is_control": ctrl_rows.cpu().numpy(),
        "is_tool_output": (~policy[b_idx, t_idx]).cpu().numpy(),
    }
    for name, values in (("old_logprob", old), ("ref_logprob", ref), ("sampling_logprob", sampling)):
        if values is not None:
            cols[name] = values.to(keep.device)[b_idx, t_idx].float().cpu().numpy()
    if ctrl_logp is not None:
        q = schema.quantize_control_logprobs(ctrl_logp[b_idx, t_idx].cpu().numpy())
        for i in range(q.shape[1]):
            cols[schema.control_column(i)] = q[:, i]
    if top_fn is not None and bool(ctrl_rows.any()):
        sel = ctrl_rows.nonzero(as_tuple=True)[0]
        parts = [top_fn(b_idx[c], t_idx[c]) for c in sel.split(TOP_ROWS_PER_CALL)]  # bounded memory
        top_ids, top_lp = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        cols["top_ids"], cols["top_logprobs"] = sparse_lists(
            ctrl_rows.cpu().numpy(), top_ids.cpu().numpy().astype(np.int32), top_lp.float().cpu().numpy()
        )
    return cols


def sparse_lists(present: np.ndarray, ids: np.ndarray, logps: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """list<int32>/list<float32> columns: the top-k rows where `present`, null elsewhere."""
    k = ids.shape[1]
    lengths = np.where(present, k, 0)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    null = pa.array(~present)
    id_arr = pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1), pa.int32()), mask=null)
    lp_arr = pa.ListArray.from_arrays(offsets, pa.array(logps.reshape(-1), pa.float32()), mask=null)
    return id_arr, lp_arr
