"""A fixed probe: teacher-forced log p of control tokens in known-good conversations, after each step.

Sampled rollouts move with the policy and carry sampling noise, so the control-token statistics the
hooks take from them see a structural token go wrong only once the model samples it wrong. A fixed
set of reference conversations (a few SFT examples) has neither problem: their log p changes only when
the weights do. In the bundled trainer's collapsing runs the expert `<tool_call>`/`</tool_call>`
error rate grew several-fold long before the success rate fell (docs/detection.md, round 7).

Scores only assistant tokens (what the policy writes); returns scalars named `probe/...` for the
steps table, which the `probe_drift` (control tokens) and `probe_text_drift` (the other tokens)
detectors read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from collapsewatch.hooks.control_tokens import CHATML_CONTROL, LLAMA3_CONTROL, vocab_id
from collapsewatch.schema import PROBE_CTRL, PROBE_CTRL_WORST, PROBE_TEXT, probe_token_name


@dataclass
class ProbeRow:
    """One reference conversation as token ids; `scored[t]` is True where token t is the assistant's."""

    ids: list[int]
    scored: list[bool]


class ControlProbe:
    """Scores reference conversations with a model; `measure(model)` -> `probe/...` scalars."""

    def __init__(
        self,
        tokenizer: Any,
        rows: Sequence[ProbeRow],
        control_tokens: Sequence[str] = CHATML_CONTROL + LLAMA3_CONTROL,
        chunk_size: int = 4,
    ) -> None:
        if not rows:
            raise ValueError("a probe needs at least one reference conversation")
        self.rows = list(rows)
        self.chunk_size = max(1, chunk_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = {t: vocab_id(tokenizer, t) for t in control_tokens}
        self.control = {token: i for token, i in ids.items() if i is not None}

    @classmethod
    def from_conversations(
        cls,
        tokenizer: Any,
        conversations: Sequence[Sequence[dict[str, Any]]],
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> ControlProbe:
        """Chat-format conversations (as in SFT data); the tokenizer's chat template lays them out."""
        return cls(tokenizer, [_row_from_messages(tokenizer, c, tools) for c in conversations], **kwargs)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """probe/logp_ctrl, probe/logp_ctrl_worst (mean over conversations of the least likely control
        token), probe/logp_text and probe/logp/<token>: mean teacher-forced log p, nats."""
        return self.summarize(self.totals(model))

    @torch.no_grad()
    def totals(self, model: torch.nn.Module, part: int = 0, parts: int = 1) -> torch.Tensor:
        """Sums and counts behind `measure`, over conversations part, part + parts, ... only.

        They add up across parts, so data-parallel ranks can each score a share and all-reduce the
        sums (float64, `len(self.totals_names())` pairs) before `summarize`: the result is the
        single-process one, whatever the split.
        """
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            scored = [
                pair
                for chunk in _chunks(self.rows[part::parts], self.chunk_size)
                for pair in self._score(model, chunk, device)
            ]
        finally:
            model.train(was_training)
        out = torch.zeros(len(self.totals_names()), 2, dtype=torch.float64)
        if not scored:
            return out
        control_ids = torch.tensor(list(self.control.values()), dtype=torch.long)
        targets = torch.cat([t for t, _ in scored])
        logp = torch.cat([lp for _, lp in scored]).double()
        is_control = torch.isin(targets, control_ids)
        # per conversation, its least likely control token (conversations without one are skipped)
        row_control = torch.split(is_control, [len(t) for t, _ in scored])
        worst = [lp[m].min() for (_, lp), m in zip(scored, row_control, strict=True) if m.any()]
        masks = [~is_control, is_control] + [targets == token_id for token_id in self.control.values()]
        for i, m in enumerate(masks):
            out[i] = torch.stack([logp[m].sum(), m.sum().double()])
        if worst:
            out[-1] = torch.tensor([float(torch.stack(worst).sum()), len(worst)], dtype=torch.float64)
        return out

    def totals_names(self) -> list[str]:
        """The metric of each row of `totals`, in order."""
        return [PROBE_TEXT, PROBE_CTRL, *(probe_token_name(t) for t in self.control), PROBE_CTRL_WORST]

    def summarize(self, totals: torch.Tensor) -> dict[str, float]:
        """Means from (summed) `totals`; a metric with nothing to average over is left out."""
        return {
            name: float(total / count)
            for name, (total, count) in zip(self.totals_names(), totals.tolist(), strict=True)
            if count > 0
        }

    def _score(self, model: torch.nn.Module, rows: list[ProbeRow], device: torch.device):  # type: ignore[no-untyped-def]
        """[(target ids, log p)] per row, at the scored positions only (right-padded batch)."""
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r.ids)] = torch.tensor(r.ids)
            attention[i, : len(r.ids)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        out = []
        for i, r in enumerate(rows):
            positions = torch.tensor([t for t in range(1, len(r.ids)) if r.scored[t]], dtype=torch.long)
            if not len(positions):
                continue
            rows_logits = logits[i, (positions - 1).to(device)].float()  # position t-1 predicts token t
            target = ids[i, positions]
            logp = torch.log_softmax(rows_logits, -1).gather(-1, target.to(device).unsqueeze(-1)).squeeze(-1)
            out.append((target, logp.cpu()))
        return out


def _chunks(items: list, size: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _row_from_messages(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Any) -> ProbeRow:
    """Token ids of the rendered conversation, scored where a character belongs to an assistant turn
    (the span between the rendering of the turns before it, plus the generation prompt, and the
    rendering that includes it)."""

    def render(msgs: Sequence[dict[str, Any]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            list(msgs), tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )

    text = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            before, through = render(messages[:i], True), render(messages[: i + 1], False)
            if not (text.startswith(before) and text.startswith(through)):
                raise ValueError(
                    "the chat template renders a conversation's turns differently once later turns follow "
                    "(e.g. it drops earlier reasoning): pass ProbeRow token ids with the assistant tokens marked"
                )
            spans.append((len(before), len(through)))
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow (Python) tokenizers have no offsets
        raise ValueError("ControlProbe.from_conversations needs a fast tokenizer (offsets)") from exc
    scored = [any(s <= a < e for s, e in spans) for a, _ in encoded["offset_mapping"]]
    return ProbeRow(list(encoded["input_ids"]), scored)
