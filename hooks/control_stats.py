"""Per-step statistics of control-token probabilities, by control token and position type.

Accumulated on the capture device across micro-batches (no host sync until the step ends).
The p99 comes from a histogram of -log2(p) in 1/32-bit bins (relative error <= 1.1%), so memory
stays fixed whatever the number of tokens; mean and max are exact. Values are probabilities.
"""

from __future__ import annotations

import math

import torch

from collapsewatch.schema import POSITION_TYPES, control_stat_name

BINS_PER_BIT = 32
NUM_BINS = 1024  # down to p = 2**-32; lower values land in the last bin
QUANTILE = 0.99


class ControlStepStats:
    """Running mean/p99/max and unexpected mean/max of each control token per position type."""

    def __init__(self, control_ids: list[int], device: torch.device | str = "cpu") -> None:
        self.control_ids = list(control_ids)
        self.device = torch.device(device)
        self._ids = torch.tensor(self.control_ids, dtype=torch.long, device=self.device)
        k, n_types = len(self.control_ids), len(POSITION_TYPES)
        zeros = torch.zeros((n_types, k), dtype=torch.float64, device=self.device)
        self.count = torch.zeros(n_types, dtype=torch.float64, device=self.device)
        self.sum_p = zeros.clone()
        self.max_p = zeros.clone()
        self.sum_unexpected = zeros.clone()
        self.count_unexpected = zeros.clone()
        self.max_unexpected = zeros.clone()
        self.hist = torch.zeros(n_types * k * NUM_BINS, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def add(self, control_logprobs: torch.Tensor, sampled_ids: torch.Tensor, types: torch.Tensor) -> None:
        """control_logprobs [N, k] (nats), sampled_ids [N], types [N]: only generated positions."""
        if control_logprobs.numel() == 0:
            return
        if control_logprobs.device != self.device:
            self._move(control_logprobs.device)
        p = control_logprobs.double().exp()
        t = types.long().to(self.device)
        k = p.shape[1]
        t_k = t.unsqueeze(1).expand(-1, k)
        self.count.index_add_(0, t, torch.ones_like(t, dtype=torch.float64))
        self.sum_p.index_add_(0, t, p)
        self.max_p.scatter_reduce_(0, t_k, p, reduce="amax")
        unexpected = sampled_ids.to(self.device).long().unsqueeze(1) != self._ids
        p_unexpected = p * unexpected
        self.sum_unexpected.index_add_(0, t, p_unexpected)
        self.count_unexpected.index_add_(0, t, unexpected.double())
        self.max_unexpected.scatter_reduce_(0, t_k, p_unexpected, reduce="amax")
        bits = -control_logprobs.float() / math.log(2.0) * BINS_PER_BIT
        nan = bits.isnan()
        q = bits.masked_fill(nan, 0.0).round().clamp(0, NUM_BINS - 1).long()
        cols = torch.arange(k, device=self.device).unsqueeze(0)
        # index_add_, not bincount or a boolean mask: both wait for the GPU (bincount sizes its output
        # from the largest index). NaN log p (diverged logits) adds 0: the histogram skips it, the means
        # and maxima turn NaN.
        bins = ((t_k * k + cols) * NUM_BINS + q).reshape(-1)
        self.hist.index_add_(0, bins, (~nan).reshape(-1).long())

    def _move(self, device: torch.device) -> None:
        for name in (
            "_ids",
            "count",
            "sum_p",
            "max_p",
            "sum_unexpected",
            "count_unexpected",
            "max_unexpected",
            "hist",
        ):
            setattr(self, name, getattr(self, name).to(device))
        self.device = device

    def scalars(self, texts: list[str]) -> dict[str, float]:
        """Steps-table scalars `ctrl/<token>/<position_type>/<stat>` (probabilities; count = positions)."""
        count = self.count.cpu().numpy()
        sum_p, max_p = self.sum_p.cpu().numpy(), self.max_p.cpu().numpy()
        sum_u, cnt_u, max_u = (
            x.cpu().numpy() for x in (self.sum_unexpected, self.count_unexpected, self.max_unexpected)
        )
        k = len(texts)
        hist = self.hist.view(len(POSITION_TYPES), k, NUM_BINS).cpu().numpy()
        out: dict[str, float] = {}
        for ti, type_name in enumerate(POSITION_TYPES):
            for ci, text in enumerate(texts):
                out[control_stat_name(text, type_name, "count")] = float(count[ti])
                if count[ti] == 0:
                    continue
                out[control_stat_name(text, type_name, "mean")] = float(sum_p[ti, ci] / count[ti])
                out[control_stat_name(text, type_name, "max")] = float(max_p[ti, ci])
                out[control_stat_name(text, type_name, "p99")] = _hist_quantile(hist[ti, ci], QUANTILE)
                if cnt_u[ti, ci] > 0:
                    out[control_stat_name(text, type_name, "unexpected_mean")] = float(
                        sum_u[ti, ci] / cnt_u[ti, ci]
                    )
                    out[control_stat_name(text, type_name, "unexpected_max")] = float(max_u[ti, ci])
        return out


def _hist_quantile(hist, quantile: float) -> float:  # type: ignore[no-untyped-def]
    """Quantile of p from counts over q = -log2(p) * BINS_PER_BIT (bin 0 = highest probability)."""
    total = hist.sum()
    if total == 0:
        return math.nan
    # Ascending p is descending q: walk from the lowest-probability bin up.
    cumulative = hist[::-1].cumsum()
    rank = math.ceil(quantile * total)
    q = NUM_BINS - 1 - int((cumulative >= rank).argmax())
    return 0.0 if q == NUM_BINS - 1 else float(2.0 ** (-q / BINS_PER_BIT))
