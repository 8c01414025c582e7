"""ControlProbe: scores only the assistant's tokens of reference conversations, and sees training."""

from __future__ import annotations

import pytest
import torch

from collapsewatch.hooks.probe import ControlProbe, ProbeRow
from collapsewatch.hooks.tiny_models import chatml_tokenizer, teach, tiny_qwen2

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
CONVERSATION = [
    {"role": "user", "content": "What is 1 plus 2?"},
    {"role": "assistant", "content": CALL},
    {"role": "tool", "content": "3"},
    {"role": "assistant", "content": "The answer is 3."},
]


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


def test_only_assistant_turns_are_scored(tok):
    probe = ControlProbe.from_conversations(tok, [CONVERSATION])
    row = probe.rows[0]
    scored_text = tok.decode([i for i, s in zip(row.ids, row.scored, strict=True) if s])
    assert scored_text.replace("<|im_end|>", "").replace("\n", "") == (CALL + "The answer is 3.").replace(
        "\n", ""
    )
    assert scored_text.count("<|im_end|>") == 2  # each assistant turn's end is the assistant's token
    unscored = tok.decode([i for i, s in zip(row.ids, row.scored, strict=True) if not s])
    assert "What is 1 plus 2?" in unscored and "<tool_response>" in unscored


def test_probe_sees_a_taught_structure_and_is_deterministic(tok):
    torch.manual_seed(0)
    model = tiny_qwen2(tok)
    probe = ControlProbe.from_conversations(tok, [CONVERSATION[:2]])
    before = probe.measure(model)
    assert probe.measure(model) == before  # fixed contexts: no sampling noise
    prompt = tok.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True, tokenize=False)
    teach(model, tok, prompt, CALL + "<|im_end|>", steps=60)
    model.train()
    after = probe.measure(model)
    assert model.training  # measure restores the mode it found
    assert after["probe/logp/<tool_call>"] > -0.5 and before["probe/logp/<tool_call>"] < -3
    assert after["probe/logp_ctrl_worst"] <= after["probe/logp_ctrl"] <= 0
    assert {"probe/logp/</tool_call>", "probe/logp/<|im_end|>", "probe/logp_text"} <= set(after)


def test_rows_without_control_tokens_and_empty_probes(tok):
    model = tiny_qwen2(tok)
    ids = tok("plain words only", add_special_tokens=False)["input_ids"]
    values = ControlProbe(tok, [ProbeRow(ids, [True] * len(ids))]).measure(model)
    assert set(values) == {"probe/logp_text"}
    assert ControlProbe(tok, [ProbeRow(ids, [False] * len(ids))]).measure(model) == {}  # nothing scored
    with pytest.raises(ValueError, match="at least one"):
        ControlProbe(tok, [])


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    import copy

    odd = copy.deepcopy(tok)
    odd.chat_template = "{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="renders a conversation's turns differently"):
        ControlProbe.from_conversations(odd, [CONVERSATION])


def test_totals_of_any_split_sum_to_the_whole_probe(tok):
    """What data-parallel ranks rely on: each scores rows part::parts, the sums are all-reduced."""
    torch.manual_seed(0)
    model = tiny_qwen2(tok)
    conversations = [CONVERSATION, CONVERSATION[:2], CONVERSATION[:1] + [CONVERSATION[3]], CONVERSATION[:2]]
    plain = tok("plain words only", add_special_tokens=False)["input_ids"]
    rows = [ControlProbe.from_conversations(tok, [c]).rows[0] for c in conversations]
    rows.append(ProbeRow(plain, [True] * len(plain)))  # no control token: no worst-token entry
    probe = ControlProbe(tok, rows, chunk_size=2)
    whole = probe.measure(model)
    for parts in (2, 3, 5):
        split = probe.summarize(sum(probe.totals(model, part=p, parts=parts) for p in range(parts)))
        assert split.keys() == whole.keys()
        for name, value in whole.items():
            assert split[name] == pytest.approx(value, rel=1e-5), (parts, name)
    # the worst control token is averaged over the conversations that have one, each counted once
    single = [ControlProbe(tok, [r]).measure(model) for r in rows[:4]]
    assert whole["probe/logp_ctrl_worst"] == pytest.approx(
        sum(v["probe/logp_ctrl_worst"] for v in single) / 4, rel=1e-5
    )
    assert probe.summarize(probe.totals(model, part=4, parts=5)).keys() == {"probe/logp_text"}
