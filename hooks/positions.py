"""Position types of completion tokens, derived from token ids alone (docs/run-format.md).

The type of position t describes the context the token was *predicted* in, so it depends only on
tokens before t: the first token of an assistant turn is `turn_start`; the token right after an
opening tool tag is `after_open_tag`; later tokens until (and including) the closing tag are
`in_call`; the token right after a closing tag is `after_close_tag`; the rest is `other`.
A turn starts at position 0 and at the first policy token after a run of tool-output tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from collapsewatch.schema import POSITION_TYPE_CODE

OTHER = POSITION_TYPE_CODE["other"]
TURN_START = POSITION_TYPE_CODE["turn_start"]
AFTER_OPEN_TAG = POSITION_TYPE_CODE["after_open_tag"]
IN_CALL = POSITION_TYPE_CODE["in_call"]
AFTER_CLOSE_TAG = POSITION_TYPE_CODE["after_close_tag"]


def ends_with_any(ids: torch.Tensor, patterns: Sequence[Sequence[int]]) -> torch.Tensor:
    """Bool [B, T]: True at t when ids[..., t-L+1 : t+1] equals one of the id sequences."""
    hit = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    for pattern in patterns:
        length = len(pattern)
        if length == 0 or length > ids.shape[-1]:
            continue
        match = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        for back, token in enumerate(reversed(list(pattern))):
            shifted = torch.zeros_like(match)
            shifted[:, back:] = ids[:, : ids.shape[-1] - back] == token
            match &= shifted
        hit |= match
    return hit


def _shift_right(x: torch.Tensor, fill: bool | int) -> torch.Tensor:
    out = torch.full_like(x, fill)
    out[:, 1:] = x[:, :-1]
    return out


@torch.no_grad()
def position_types(
    completion_ids: torch.Tensor,
    open_tags: Sequence[Sequence[int]],
    close_tags: Sequence[Sequence[int]],
    tool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """int8 [B, T] position-type codes (schema.POSITION_TYPE_CODE). tool_mask: 1 = policy token."""
    ids = completion_ids.long()
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    batch, length = ids.shape
    steps = torch.arange(length, device=ids.device).expand(batch, length)
    is_open = ends_with_any(ids, open_tags)
    is_close = ends_with_any(ids, close_tags)
    # Index of the last opening / closing tag strictly before t (-1 when none).
    last_open = _shift_right(torch.where(is_open, steps, -1).cummax(dim=1).values, -1)
    last_close = _shift_right(torch.where(is_close, steps, -1).cummax(dim=1).values, -1)
    types = torch.full((batch, length), OTHER, dtype=torch.int8, device=ids.device)
    types[last_open > last_close] = IN_CALL
    types[_shift_right(is_close, False)] = AFTER_CLOSE_TAG
    types[_shift_right(is_open, False)] = AFTER_OPEN_TAG
    start = steps == 0
    if tool_mask is not None:
        policy = tool_mask.to(ids.device).bool().reshape(batch, length)
        start |= policy & ~_shift_right(policy, True)
    types[start] = TURN_START
    return types if completion_ids.dim() > 1 else types[0]
