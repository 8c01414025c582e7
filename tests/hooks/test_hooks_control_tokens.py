"""Control tokens from the tokenizer and chat template; multi-token strings are handled and reported."""

from __future__ import annotations

import pytest

from collapsewatch.hooks.control_tokens import default_control_strings, resolve_control_tokens
from collapsewatch.hooks.tiny_models import chatml_tokenizer


@pytest.fixture(scope="module")
def chatml():
    return chatml_tokenizer()


def llama3_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = [
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|python_tag|>",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(["assistant user system hello tool call"], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")
    tok.chat_template = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}"
    return tok


def test_chatml_defaults(chatml):
    names = default_control_strings(chatml)
    for expected in [
        "<|im_start|>",
        "<|im_end|>",
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
    ]:
        assert expected in names
    assert "<|eot_id|>" not in names
    controls = resolve_control_tokens(chatml)
    assert not controls.warnings
    assert controls.ids == [chatml.convert_tokens_to_ids(t) for t in controls.texts]
    assert controls.open_tags == [(chatml.convert_tokens_to_ids("<tool_call>"),)]
    assert controls.close_tags == [(chatml.convert_tokens_to_ids("</tool_call>"),)]


def test_llama3_defaults():
    tok = llama3_tokenizer()
    controls = resolve_control_tokens(tok)
    assert {"<|eot_id|>", "<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"} <= set(
        controls.texts
    )
    assert "<tool_call>" not in controls.texts
    assert controls.open_tags == [(tok.convert_tokens_to_ids("<|python_tag|>"),)]


def test_multi_token_control_string_is_tracked_and_reported():
    tok = llama3_tokenizer()
    with pytest.warns(RuntimeWarning, match="<tool_call>"):
        controls = resolve_control_tokens(tok, ["<|eot_id|>", "<tool_call>"])
    multi = controls.tokens[1]
    assert multi.multi_token and len(multi.token_ids) > 1
    assert multi.token_id == multi.token_ids[0]
    assert multi.to_meta()["token_ids"] == list(multi.token_ids)
    assert any("<tool_call>" in w for w in controls.warnings)


def test_explicit_map_without_tokenizer():
    controls = resolve_control_tokens(None, {"<tool_call>": 5, "</tool_call>": [6]})
    assert controls.ids == [5, 6]
    with pytest.raises(ValueError):
        resolve_control_tokens(None, ["<tool_call>"])
