"""Structural state of an assistant turn: healthy tool call, healthy response, text pollution, full collapse.

The rule follows the seed paper's released code (a tool call is a closed `<tool_call> ... </tool_call>`
block whose body is a call with a name and arguments) and extends it to decoded text whose special
tokens were stripped, where only residue (bare JSON, an empty turn, a leaked `user` line) remains.
`classify_turn` never raises: a monitor must not die on the text it is judging.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from collapsewatch.schema import STRUCTURAL_STATES


class StructuralState(str, Enum):
    """The four states of one assistant turn (values equal collapsewatch.schema.STRUCTURAL_STATES)."""

    HEALTHY_TOOL_CALL = "healthy_tool_call"
    HEALTHY_RESPONSE = "healthy_response"
    TEXT_POLLUTION = "text_pollution"
    FULL_COLLAPSE = "full_collapse"

    def __str__(self) -> str:
        return self.value

    @property
    def healthy(self) -> bool:
        return self in (StructuralState.HEALTHY_TOOL_CALL, StructuralState.HEALTHY_RESPONSE)


assert tuple(s.value for s in StructuralState) == STRUCTURAL_STATES

# Badness order: a rollout is as broken as its worst turn (full collapse, then text pollution).
_TEXT_POLLUTION, _FULL_COLLAPSE = StructuralState.TEXT_POLLUTION, StructuralState.FULL_COLLAPSE
_STATE_VALUES = tuple((s, s.value) for s in StructuralState)

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ANY_TOOL_TAG = re.compile(r"</?tool_call>")
# End-of-turn markers a decoder may keep at the end of a turn.
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<eos>")
# Chat-template residue that must never appear inside an assistant turn.
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?tool_response>|</?tool_call>|</s>|<eos>")
_ROLE_LINE = re.compile(r"^\s*(?:<\|im_start\|>)?\s*(user|assistant|system|tool)\s*:?\s*$", re.MULTILINE)
_LEADING_ROLE = re.compile(r"^\s*(?:<\|im_start\|>\s*)?assistant\s*\n")
_INVENTED_OUTPUT = re.compile(r"</?tool_response>|<\|im_start\|>|<\|im_end\|>")
_PY_CALL = re.compile(r"^\s*\[?\s*[A-Za-z_][\w.]*\s*\(.*\)\s*\]?\s*$", re.DOTALL)
_WORD = re.compile(r"[A-Za-z0-9]{2,}")
# JSON debris outside any call (`"}}`, `{"`, `":`): a garbled call, not a natural-language reply.
_JSON_DEBRIS = re.compile(r'"\s*[}\]]|[{\[]\s*"|"\s*:')


def _is_call_object(obj: object) -> bool:
    if not isinstance(obj, dict):
        return False
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return False
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return False
    return isinstance(args, dict)


def _parse_json_call(body: str) -> bool:
    body = body.strip()
    if not body.startswith("{"):
        return False
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if isinstance(obj, list):
        return bool(obj) and all(_is_call_object(o) for o in obj)
    return _is_call_object(obj)


def _parse_python_call(body: str) -> bool:
    """`transfer(src="a", amount=5)` or `[f(x=1), g()]`: calls with literal arguments only."""
    body = body.strip()
    if len(body) > 4000 or not _PY_CALL.match(body):
        return False
    try:
        tree = ast.parse(body, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    node = tree.body
    calls = node.elts if isinstance(node, ast.List) else [node]
    if not calls:
        return False
    for call in calls:
        if not isinstance(call, ast.Call):
            return False
        if not isinstance(call.func, (ast.Name, ast.Attribute)):
            return False
        try:
            for arg in list(call.args) + [kw.value for kw in call.keywords]:
                ast.literal_eval(arg)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return False
        if any(kw.arg is None for kw in call.keywords):
            return False
    return True


def parse_call(body: str) -> bool:
    """True when `body` is one tool call (JSON with name + arguments, or a python-style call)."""
    return _parse_json_call(body) or _parse_python_call(body)


def _strip_turn(text: str) -> tuple[str, int]:
    """Remove a leading assistant header and trailing end markers; return (text, end markers removed)."""
    header = _LEADING_ROLE.match(text)
    if header:
        text = text[header.end() :]
    removed = 0
    stripped = text.rstrip()
    while stripped.endswith(_END_MARKERS):  # one C-level check for the common no-marker case
        for marker in _END_MARKERS:
            if stripped.endswith(marker):
                text = stripped[: -len(marker)]
                break
        removed += 1
        stripped = text.rstrip()
    return text, removed


def _has_words(text: str) -> bool:
    return _WORD.search(text) is not None


def _is_degenerate_repetition(text: str) -> bool:
    """A reply that is mostly one repeated 3-word phrase (a loop, not an answer)."""
    words = text.split()
    if len(words) < 24:
        return False
    grams = Counter(zip(words, words[1:], words[2:], strict=False))
    top = grams.most_common(1)[0][1]
    return top * 3 >= 0.6 * len(words)


@lru_cache(maxsize=1 << 16)
def _classify(text: str) -> StructuralState:
    body, end_markers = _strip_turn(text)
    residue = _SPECIAL.sub(" ", body) if "<" in body else body  # every special token starts with "<"
    if not body.strip() or not _has_words(residue):
        # empty turn, a bare tag, repeated control tokens, punctuation only
        return StructuralState.FULL_COLLAPSE
    if end_markers > 1:
        return StructuralState.TEXT_POLLUTION

    if "tool_call>" in body and _ANY_TOOL_TAG.search(body):
        opens, closes = body.count(_OPEN), body.count(_CLOSE)
        pieces = _BLOCK.split(body)  # text, block, text, block, ..., text: one pass for both
        blocks = pieces[1::2]
        parsed = [parse_call(b) for b in blocks]
        outside = "".join(pieces[0::2])
        after_last = body[body.rfind(_CLOSE) + len(_CLOSE) :] if closes else body
        balanced = opens == closes == len(blocks) and blocks
        if balanced and all(parsed):
            before_first = body[: body.find(_OPEN)]
            between = outside[len(before_first) :]
            junk_after = after_last.strip() or between.strip()
            leaked = _INVENTED_OUTPUT.search(outside) or _ROLE_LINE.search(outside)
            if not junk_after and not leaked:
                return StructuralState.HEALTHY_TOOL_CALL
        # some tag structure, but broken: garbled JSON, missing or extra tags, text after the call
        return StructuralState.TEXT_POLLUTION

    # No tool tags: either the tags were stripped by the decoder, or this is a reply.
    stripped = body.strip()
    if parse_call(stripped):
        return StructuralState.HEALTHY_TOOL_CALL
    if _INVENTED_OUTPUT.search(body) or _ROLE_LINE.search(body) or _SPECIAL.search(body):
        return StructuralState.TEXT_POLLUTION
    if (stripped.startswith("{") and '"name"' in stripped) or _JSON_DEBRIS.search(stripped):
        # a call followed by junk, or a truncated call
        return StructuralState.TEXT_POLLUTION
    if _is_degenerate_repetition(stripped):
        return StructuralState.TEXT_POLLUTION
    return StructuralState.HEALTHY_RESPONSE


def classify_turn(text: object) -> StructuralState:
    """Structural state of one decoded assistant turn (special tokens kept or stripped). Never raises."""
    try:
        if text is None:
            return StructuralState.FULL_COLLAPSE
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str):
            text = str(text)
        return _classify(text)
    except Exception:  # noqa: BLE001 - judging text must never take the monitor down
        return StructuralState.TEXT_POLLUTION


@dataclass
class RolloutSummary:
    """Per-rollout view: the state of each turn, the worst one, and where it first broke."""

    states: list[StructuralState]
    state: StructuralState
    counts: dict[str, int] = field(default_factory=dict)
    first_bad_turn: int | None = None
    num_calls: int = 0

    def to_dict(self) -> dict:
        return {
            "state": self.state.value,
            "states": [s.value for s in self.states],
            "counts": dict(self.counts),
            "first_bad_turn": self.first_bad_turn,
            "num_calls": self.num_calls,
        }


def summarize_rollout(turn_texts: Sequence[object] | str | None) -> RolloutSummary:
    """Classify every assistant turn of a rollout; the rollout's state is its worst turn's state
    (the last turn's healthy state when nothing broke). A rollout with no turns is full collapse."""
    if turn_texts is None or isinstance(turn_texts, (str, bytes)):
        turns: list[object] = [] if turn_texts is None else [turn_texts]
    else:
        try:
            turns = list(turn_texts)
        except TypeError:
            turns = [turn_texts]
    states = [classify_turn(t) for t in turns]
    # `list.count` and `in` compare by identity first, and `.value` (an enum property) is read once
    # here, not per turn: this runs for every sampled rollout of every live step.
    counts = {value: states.count(state) for state, value in _STATE_VALUES}
    if not states:
        return RolloutSummary([], StructuralState.FULL_COLLAPSE, counts, 0, 0)
    if _FULL_COLLAPSE in states or _TEXT_POLLUTION in states:
        state = _FULL_COLLAPSE if _FULL_COLLAPSE in states else _TEXT_POLLUTION
        first_bad = next(i for i, s in enumerate(states) if s is _TEXT_POLLUTION or s is _FULL_COLLAPSE)
    else:
        state, first_bad = states[-1], None
    return RolloutSummary(states, state, counts, first_bad, counts["healthy_tool_call"])


def state_shares(states: Iterable[StructuralState]) -> dict[str, float]:
    """Share of each structural state (0..1) among the given turns; all zeros for none."""
    counts = Counter(s.value if isinstance(s, StructuralState) else str(s) for s in states)
    total = sum(counts.values())
    return {s: (counts.get(s, 0) / total if total else 0.0) for s in STRUCTURAL_STATES}
