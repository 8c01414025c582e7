"""A tiny Qwen2 model and ChatML tokenizer built locally (no hub), for trying the hooks on a CPU.

The tokenizer is a byte-level BPE trained with `tokenizers` on a few tool-use lines, with Qwen2.5's
control tokens and TRL's own Qwen2.5 chat template, so TRL recognises it and parses tool calls.
`teach` runs a few SFT steps so the random model emits a given text (e.g. a tool call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

_CORPUS = [
    "You are a helpful assistant. Use the tools to answer the question.",
    '{"name": "add", "arguments": {"a": 1, "b": 2}}',
    '{"name": "get_balance", "arguments": {"account": "alice"}}',
    "The answer is 3. Alice has 12 dollars. What is 1 plus 2? Add the numbers please.",
    "user assistant system tool function arguments name result error # Tools <tools></tools> XML tags",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 plus minus times equals",
]


def chatml_tokenizer(extra_corpus: Sequence[str] = (), vocab_size: int = 400) -> Any:
    """A `PreTrainedTokenizerFast` with Qwen2.5 control tokens and chat template (tools supported)."""
    from tokenizers import AddedToken as RawAddedToken
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(_CORPUS) + list(extra_corpus), trainer=trainer)
    # Like Qwen2.5: tool tags are added tokens that decoding keeps (not "special").
    raw.add_tokens([RawAddedToken(t, special=False, normalized=False) for t in TOOL_TAGS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    tok.chat_template = qwen2_5_chat_template
    tok.name_or_path = "collapsewatch-tiny-chatml"
    return tok


def tiny_qwen2(tokenizer: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised Qwen2ForCausalLM sized for CPU tests (fp32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def teach(
    model: Any, tokenizer: Any, prompt: str, completion: str, steps: int = 60, lr: float = 3e-3
) -> None:
    """A few SFT steps so the model continues `prompt` with `completion` (loss on the completion only)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    labels = ids.clone()
    labels[:, : len(prompt_ids)] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
