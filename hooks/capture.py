"""Per-token capture math: sampled logprob, full-vocabulary entropy and control-token probabilities.

Everything runs under `no_grad` on the logits' own device, in token chunks whose float32 copy stays
below `chunk_elements` (64 MB each by default), so a 150k vocabulary times 8k tokens never
materialises a second full-size tensor. Units: natural logs (nats) throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # float32 elements per chunk (64 MB; about 4 temporaries live)
TOP_K = 5


@dataclass
class TokenStats:
    """Per-token results, float32, shaped like the token ids (control_logprobs adds a last dim k)."""

    logprob: torch.Tensor
    entropy: torch.Tensor
    control_logprobs: torch.Tensor
    logsumexp: torch.Tensor


@torch.no_grad()
def token_stats_from_logits(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    control_ids: list[int] | torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> TokenStats:
    """Logprob of the sampled token, entropy and control-token logprobs from raw logits [..., T, V].

    `logits[..., t, :]` must be the distribution that produced `token_ids[..., t]` (already shifted).
    """
    lead_shape = token_ids.shape
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    ids = token_ids.reshape(-1).to(flat.device, torch.long)
    ctrl = torch.as_tensor(control_ids, dtype=torch.long, device=flat.device)
    n = flat.shape[0]
    logprob = torch.empty(n, dtype=torch.float32, device=flat.device)
    entropy = torch.empty_like(logprob)
    lse_out = torch.empty_like(logprob)
    ctrl_out = torch.empty((n, ctrl.numel()), dtype=torch.float32, device=flat.device)
    rows = max(1, chunk_elements // vocab)
    lowest = torch.finfo(torch.float32).min
    for start in range(0, n, rows):
        end = min(n, start + rows)
        x = flat[start:end].float()
        if temperature != 1.0:
            x = x / temperature
        # Shift by the row max so the entropy's lse - E[x] does not cancel catastrophically.
        peak = x.amax(dim=-1, keepdim=True).clamp_min(lowest)
        x = (x - peak).clamp_min_(lowest)  # a new tensor; -inf logits (masked vocab) -> finite, p = 0
        # One exp over the vocabulary: with x <= 0 and its max at 0, sum(e^x) >= 1, so
        # lse = log sum(e^x) and E_p[x] = sum(e^x * x) / sum(e^x) need no normalised p (on a CPU,
        # 2.55 -> 1.03 s per 1k fp32 tokens of a 151,936 vocabulary against logsumexp and a second
        # exp, docs/hooks.md; the same to 2e-6 nats)
        e = torch.exp(x)
        total = e.sum(dim=-1)
        lse = total.log()
        entropy[start:end] = lse - e.mul_(x).sum(dim=-1) / total
        logprob[start:end] = x.gather(1, ids[start:end, None]).squeeze(1) - lse
        ctrl_out[start:end] = x[:, ctrl] - lse.unsqueeze(-1)
        lse_out[start:end] = lse + peak.squeeze(-1)
    return TokenStats(
        logprob.view(lead_shape),
        entropy.view(lead_shape),
        ctrl_out.view(*lead_shape, ctrl.numel()),
        lse_out.view(lead_shape),
    )


@torch.no_grad()
def control_logprobs_from_sampled(
    control_logits: torch.Tensor, sampled_logit: torch.Tensor, sampled_logprob: torch.Tensor
) -> torch.Tensor:
    """log p(c) = logit[c] - logsumexp, with logsumexp = logit[sampled] - logp(sampled).

    The trainer already has logp(sampled); a gather of k logit columns then gives every control
    token's probability without a second softmax. Shapes: [..., k], [...], [...].
    """
    lse = sampled_logit.float() - sampled_logprob.float()
    return control_logits.float() - lse.unsqueeze(-1)


@torch.no_grad()
def head_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor | None,
    *,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Selected columns of the LM head output: hidden [..., H] x weight[token_ids] -> [..., k].

    `token_ids` is [k] (the same columns everywhere), [..., k] (per position, e.g. the sampled id) or
    None (every column: only for a few rows, e.g. top-k at control positions).
    Computed in float32 as the trainer's head would give them after scale, softcap and temperature.
    """
    h = hidden.float()
    if token_ids is None:
        logits = h @ weight.float().T
        if bias is not None:
            logits = logits + bias.float()
    elif token_ids.dim() == 1:
        logits = h @ weight[token_ids].float().T
        if bias is not None:
            logits = logits + bias[token_ids].float()
    else:
        rows = weight[token_ids].float()  # [..., k, H]
        logits = (rows @ h.unsqueeze(-1)).squeeze(-1)
        if bias is not None:
            logits = logits + bias[token_ids].float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits * logit_scale
    return logits / temperature


@torch.no_grad()
def top_alternatives(
    logits_rows: torch.Tensor, logsumexp: torch.Tensor, k: int = TOP_K
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k token ids and their logprobs for a few rows of logits [n, V] (control positions only)."""
    values, ids = torch.topk(logits_rows.float(), k=min(k, logits_rows.shape[-1]), dim=-1)
    return ids.to(torch.int32), values - logsumexp.float().unsqueeze(-1)
