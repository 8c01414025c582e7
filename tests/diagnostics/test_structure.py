"""classify_turn / summarize_rollout: the four structural states, with and without special tokens."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collapsewatch.diagnostics import StructuralState, classify_turn, summarize_rollout
from collapsewatch.schema import STRUCTURAL_STATES

CALL = '{"name": "transfer", "arguments": {"src": "alice", "dst": "bob", "amount": 5}}'

CASES = [
    # healthy tool calls: tags kept, tags stripped by the decoder, python-style, reasoning before the call
    (f"<tool_call>\n{CALL}\n</tool_call><|im_end|>", "healthy_tool_call"),
    (f"<tool_call>{CALL}</tool_call>\n<tool_call>{CALL}</tool_call>", "healthy_tool_call"),
    (CALL, "healthy_tool_call"),
    ('transfer(src="alice", dst="bob", amount=5)', "healthy_tool_call"),
    ('<tool_call>transfer(src="alice", amount=5)</tool_call>', "healthy_tool_call"),
    (f"I will move the money.\n<tool_call>{CALL}</tool_call>", "healthy_tool_call"),
    ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "healthy_tool_call"),
    # healthy responses
    ("alice has 40.<|im_end|>", "healthy_response"),
    ("Bob now has 12 coins.", "healthy_response"),
    ("assistant\nThe balance is 7.", "healthy_response"),
    # text pollution: recoverable but with junk
    (f"<tool_call>{CALL}</tool_call> The transfer succeeded.", "text_pollution"),
    (f"<tool_call>{CALL}</tool_call>\n<tool_response>ok</tool_response>", "text_pollution"),
    ('fay"}}</tool_call>', "text_pollution"),
    ('<tool_call>{"name": "transferdan has.', "text_pollution"),
    (f"{CALL}\nuser\nwhat next?", "text_pollution"),
    ("user\nhow much does alice have", "text_pollution"),
    (f"<tool_call>{CALL}", "text_pollution"),
    ("alice has 40.<|im_end|><|im_end|>", "text_pollution"),
    ("the the the the " * 10, "text_pollution"),
    # full collapse: nothing recoverable
    ("", "full_collapse"),
    ("   \n ", "full_collapse"),
    ("<tool_call>", "full_collapse"),
    ("<tool_call><|im_end|>", "full_collapse"),
    ("<tool_call></tool_call>", "full_collapse"),
    ("<|im_end|><|im_end|><|im_end|>", "full_collapse"),
    ("<tool_call><tool_call><tool_call>", "full_collapse"),
    ("...", "full_collapse"),
    (None, "full_collapse"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_classify_turn_cases(text, expected):
    assert classify_turn(text) == expected
    assert classify_turn(text).value in STRUCTURAL_STATES


def test_state_is_a_str_enum_with_schema_values():
    assert [s.value for s in StructuralState] == list(STRUCTURAL_STATES)
    assert StructuralState("text_pollution") == "text_pollution"


PIECES = list("<>/{}[]()\"':,= \nab_|") + [
    "<tool_call>",
    "</tool_call>",
    "<|im_end|>",
    "user",
    CALL,
    "<tool_response>",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join) | st.text(max_size=200))
def test_classify_turn_never_raises(text):
    assert classify_turn(text).value in STRUCTURAL_STATES


def test_summarize_rollout_worst_turn_and_first_break():
    s = summarize_rollout([f"<tool_call>{CALL}</tool_call>", "<tool_call><|im_end|>", "done."])
    assert s.state == StructuralState.FULL_COLLAPSE
    assert s.first_bad_turn == 1
    assert s.counts["healthy_tool_call"] == 1 and s.num_calls == 1
    healthy = summarize_rollout([f"<tool_call>{CALL}</tool_call>", "alice has 40."])
    assert healthy.state == StructuralState.HEALTHY_RESPONSE and healthy.first_bad_turn is None
    assert summarize_rollout([]).state == StructuralState.FULL_COLLAPSE
    assert summarize_rollout(None).state == StructuralState.FULL_COLLAPSE
    assert summarize_rollout("alice has 40.").state == StructuralState.HEALTHY_RESPONSE
