"""Which tokens count as control tokens, resolved against a tokenizer.

Defaults come from the tokenizer's vocabulary and chat template (ChatML/Qwen and Llama-3 sets).
A control string the tokenizer splits into several tokens is still tracked (by its first token's
probability, and by its whole id sequence for position types), and reported once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CHATML_CONTROL = (
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
LLAMA3_CONTROL = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>")

# Tags that open and close a tool call; they define the position types of docs/run-format.md.
OPEN_TAGS = ("<tool_call>", "<|python_tag|>")
CLOSE_TAGS = ("</tool_call>", "<|eom_id|>")


@dataclass(frozen=True)
class ControlToken:
    """One control string: its column index on disk and the ids the tokenizer gives it."""

    index: int
    text: str
    token_ids: tuple[int, ...]

    @property
    def token_id(self) -> int:
        """The id whose probability is measured (the first one for a multi-token string)."""
        return self.token_ids[0]

    @property
    def multi_token(self) -> bool:
        return len(self.token_ids) > 1

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"index": self.index, "text": self.text, "token_id": self.token_id}
        if self.multi_token:
            meta.update(token_ids=list(self.token_ids), multi_token=True)
        return meta


@dataclass
class ControlTokenSet:
    """The resolved control tokens of a run, plus the tool-call tags used for position types."""

    tokens: list[ControlToken]
    open_tags: list[tuple[int, ...]] = field(default_factory=list)
    close_tags: list[tuple[int, ...]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    @property
    def texts(self) -> list[str]:
        return [t.text for t in self.tokens]

    def to_meta(self) -> list[dict[str, Any]]:
        return [t.to_meta() for t in self.tokens]


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS, for a transformers tokenizer or a `tokenizers.Tokenizer`."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return list(getattr(ids, "ids", ids))


def vocab_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` as one vocabulary entry, or None when it is not one."""
    for lookup in ("convert_tokens_to_ids", "token_to_id"):
        fn = getattr(tokenizer, lookup, None)
        if fn is None:
            continue
        try:
            tid = fn(text)
        except Exception:
            continue
        unk = getattr(tokenizer, "unk_token_id", None)
        if (
            isinstance(tid, int)
            and tid >= 0
            and (tid != unk or text == getattr(tokenizer, "unk_token", None))
        ):
            return tid
    return None


def token_ids_of(tokenizer: Any, text: str) -> tuple[int, ...]:
    tid = vocab_id(tokenizer, text)
    if tid is not None:
        return (tid,)
    return tuple(encode_plain(tokenizer, text))


def _chat_template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(v) for v in template.values())
    return template or ""


def default_control_strings(tokenizer: Any) -> list[str]:
    """Candidates (ChatML, Llama-3) that are one vocabulary token or appear in the chat template."""
    template = _chat_template_text(tokenizer)
    chosen = []
    for text in CHATML_CONTROL + LLAMA3_CONTROL:
        if vocab_id(tokenizer, text) is not None or text in template:
            chosen.append(text)
    return chosen


def resolve_control_tokens(
    tokenizer: Any | None,
    control_tokens: Sequence[str] | Mapping[str, int | Sequence[int]] | None = None,
    *,
    warn: bool = True,
) -> ControlTokenSet:
    """Resolve control strings (or an explicit {text: id(s)} map) to ids; report multi-token ones."""
    if control_tokens is None:
        if tokenizer is None:
            raise ValueError("control_tokens are needed when no tokenizer is given (a {text: token_id} map)")
        control_tokens = default_control_strings(tokenizer)
    resolved: list[ControlToken] = []
    notes: list[str] = []
    items = (
        control_tokens.items() if isinstance(control_tokens, Mapping) else ((t, None) for t in control_tokens)
    )
    for text, given in items:
        if given is None:
            if tokenizer is None:
                raise ValueError(f"control token {text!r} has no id and no tokenizer was given")
            ids = token_ids_of(tokenizer, text)
        else:
            ids = (int(given),) if isinstance(given, int) else tuple(int(i) for i in given)
        if not ids:
            notes.append(f"control token {text!r} encodes to no tokens; skipped")
            continue
        if len(ids) > 1:
            notes.append(
                f"control token {text!r} is {len(ids)} tokens {list(ids)}; its probability is the first token's"
            )
        resolved.append(ControlToken(len(resolved), str(text), ids))
    if not resolved:
        raise ValueError("no control tokens resolved; pass control_tokens=[...] explicitly")
    by_text = {t.text: t.token_ids for t in resolved}

    def tag_ids(texts: Sequence[str]) -> list[tuple[int, ...]]:
        out = []
        for text in texts:
            if text in by_text:
                out.append(by_text[text])
            elif tokenizer is not None and (
                vocab_id(tokenizer, text) is not None or text in _chat_template_text(tokenizer)
            ):
                out.append(token_ids_of(tokenizer, text))
        return [ids for ids in out if ids]

    result = ControlTokenSet(resolved, tag_ids(OPEN_TAGS), tag_ids(CLOSE_TAGS), notes)
    if warn:
        for note in notes:
            warnings.warn(f"collapsewatch: {note}", RuntimeWarning, stacklevel=3)
    return result
