"""Capture math against a float64 log_softmax reference; position types; control-token statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsewatch.hooks.capture import (
    control_logprobs_from_sampled,
    head_logits,
    token_stats_from_logits,
    top_alternatives,
)
from collapsewatch.hooks.control_stats import ControlStepStats
from collapsewatch.hooks.positions import position_types
from collapsewatch.schema import POSITION_TYPE_CODE, control_stat_name

CTRL = [3, 7, 11]


def reference(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0):
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    p = logp.exp()
    entropy = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), entropy, logp[..., CTRL]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 97])  # one chunk / many ragged chunks
def test_token_stats_match_float64_reference(dtype, chunk_elements):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 17, 501, generator=g) * 4 + 20).to(dtype)  # large offset: cancellation risk
    logits[0, 0, :] = -30.0
    logits[0, 0, 5] = 30.0  # a near-deterministic position (entropy ~ 0)
    ids = torch.randint(0, 501, (3, 17), generator=g)
    got = token_stats_from_logits(logits, ids, CTRL, chunk_elements=chunk_elements)
    ref_lp, ref_h, ref_ctrl = reference(logits, ids)
    assert got.logprob.dtype == torch.float32
    torch.testing.assert_close(got.logprob.double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.entropy.double(), ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.control_logprobs.double(), ref_ctrl, rtol=1e-5, atol=1e-5)


def test_masked_vocabulary_and_temperature():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 64, generator=g)
    logits[..., 40:] = -math.inf  # e.g. padded vocabulary
    ids = torch.randint(0, 40, (2, 5), generator=g)
    got = token_stats_from_logits(logits, ids, CTRL, temperature=0.7)
    ref_lp, ref_h, ref_ctrl = reference(logits, ids, temperature=0.7)
    assert torch.isfinite(got.entropy).all()
    torch.testing.assert_close(got.logprob.double(), ref_lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.entropy.double(), ref_h, rtol=1e-5, atol=1e-6)


def test_lse_trick_equals_softmax_from_head_gather():
    """log p(c) = logit[c] - (logit[sampled] - logp[sampled]), with k rows of the LM head."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 9, 16, generator=g)
    weight = torch.randn(300, 16, generator=g)
    ids = torch.randint(0, 300, (2, 9), generator=g)
    full = hidden @ weight.T / 0.9
    ref_lp, _, ref_ctrl = reference(full, ids)
    ctrl = head_logits(hidden, weight, None, torch.tensor(CTRL), temperature=0.9)
    sampled = head_logits(hidden, weight, None, ids.unsqueeze(-1), temperature=0.9).squeeze(-1)
    got = control_logprobs_from_sampled(ctrl, sampled, ref_lp.float())
    torch.testing.assert_close(got.double(), ref_ctrl, rtol=1e-4, atol=1e-4)
    rows = head_logits(hidden[0, :3], weight, None, None, temperature=0.9)
    top_ids, top_lp = top_alternatives(rows, sampled[0, :3] - ref_lp[0, :3].float(), k=5)
    ref_top = torch.log_softmax(full[0, :3].double(), -1).topk(5, dim=-1)
    assert torch.equal(top_ids.long(), ref_top.indices)
    torch.testing.assert_close(top_lp.double(), ref_top.values, rtol=1e-4, atol=1e-4)


def test_position_types_follow_the_tool_call_grammar():
    open_tag, close_tag = 50, 51
    #        0  1         2  3  4          5  6  7  8         9   10
    ids = [[9, open_tag, 8, 8, close_tag, 7, 6, 6, open_tag, 8, 8]]
    tool = [[1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1]]
    types = position_types(torch.tensor(ids), [(open_tag,)], [(close_tag,)], torch.tensor(tool))
    c = POSITION_TYPE_CODE
    expected = [
        c["turn_start"], c["other"], c["after_open_tag"], c["in_call"], c["in_call"], c["after_close_tag"],
        c["other"], c["other"], c["turn_start"], c["after_open_tag"], c["in_call"],
    ]  # fmt: skip
    assert types.tolist() == [expected]


def test_position_types_with_multi_token_tags():
    # "<tool_call>" split into [60, 61] by a tokenizer without it as one token
    ids = torch.tensor([[5, 60, 61, 8, 62, 63, 9]])
    types = position_types(ids, [(60, 61)], [(62, 63)])
    c = POSITION_TYPE_CODE
    assert types[0].tolist() == [
        c["turn_start"], c["other"], c["other"], c["after_open_tag"], c["in_call"], c["in_call"], c["after_close_tag"],
    ]  # fmt: skip


def test_control_stats_against_numpy():
    g = torch.Generator().manual_seed(3)
    n = 4000
    logp = torch.log_softmax(torch.randn(n, 20, generator=g) * 3, -1)[:, :3]
    sampled = torch.randint(0, 20, (n,), generator=g)
    sampled[:50] = 7  # CTRL[1] sampled at some positions
    types = torch.randint(0, 5, (n,), generator=g)
    stats = ControlStepStats(CTRL)
    stats.add(logp[: n // 2], sampled[: n // 2], types[: n // 2])  # two micro-batches
    stats.add(logp[n // 2 :], sampled[n // 2 :], types[n // 2 :])
    out = stats.scalars(["a", "b", "c"])
    p = logp.double().exp().numpy()
    for ti, tname in enumerate(["other", "turn_start", "after_open_tag", "in_call", "after_close_tag"]):
        sel = types.numpy() == ti
        for ci, tok in enumerate("abc"):
            v = p[sel, ci]
            assert out[control_stat_name(tok, tname, "count")] == sel.sum()
            assert out[control_stat_name(tok, tname, "mean")] == pytest.approx(v.mean(), rel=1e-9)
            assert out[control_stat_name(tok, tname, "max")] == pytest.approx(v.max(), rel=1e-9)
            assert out[control_stat_name(tok, tname, "p99")] == pytest.approx(
                np.quantile(v, 0.99, method="inverted_cdf"), rel=0.011
            )
            unexpected = v[sampled.numpy()[sel] != CTRL[ci]]
            assert out[control_stat_name(tok, tname, "unexpected_mean")] == pytest.approx(
                unexpected.mean(), rel=1e-9
            )
            assert out[control_stat_name(tok, tname, "unexpected_max")] == pytest.approx(
                unexpected.max(), rel=1e-9
            )
    # sampling the control token hides it from the unexpected statistics
    assert (
        out[control_stat_name("b", "other", "unexpected_mean")]
        != out[control_stat_name("b", "other", "mean")]
    )


def test_control_stats_take_nan_logprobs_without_failing():
    """Diverged logits (NaN, as a bf16 update produced on an H200) must not fail the step's capture:
    the histogram skips them and the mean turns NaN, which the detectors read as non-finite."""
    logp = torch.log_softmax(torch.randn(6, 10), -1)[:, :3]
    logp[2, 1] = math.nan
    logp[4, 0] = -math.inf  # p = 0 is a value, not a failure
    stats = ControlStepStats(CTRL)
    stats.add(logp, torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long))
    out = stats.scalars(["a", "b", "c"])
    assert math.isnan(out[control_stat_name("b", "other", "mean")])
    assert math.isfinite(out[control_stat_name("a", "other", "mean")])
    assert int(stats.hist.sum()) == 6 * 3 - 1
