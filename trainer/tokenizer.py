"""A byte-level BPE tokenizer trained on the environment's own corpus, with ChatML control tokens.

The chat template follows Qwen2.5's layout (`<|im_start|>role ... <|im_end|>`, a `# Tools` block,
tool responses inside a user turn wrapped in `<tool_response>`), so tools written for Qwen work here.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from collapsewatch.trainer import env

PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CONTROL_TOKENS = [IM_START, IM_END, "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
SPECIAL_TOKENS = [PAD, *CONTROL_TOKENS]
# GPT-2-style word splitting: a name is one token wherever it appears, though `" bob"` (prose) and
# `"bob"` (inside JSON quotes) are two tokens. Splitting words off every space and quote instead made
# copies identical tokens but did not help the warm start learn to copy (docs/reproduction.md).
MAX_TOKEN_CHARS = 10

# Qwen2.5's template, trimmed: tools are listed as one `name(arg, ...)` line each (a CPU-sized policy
# pays for every prompt token), and the call-syntax line lives in the environment's system prompt so
# the format-OOD split can declare another one.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set rest = messages[1:] %}{%- else %}{%- set system = 'You are a helpful assistant.' %}"
    "{%- set rest = messages %}{%- endif %}"
    "{{- '<|im_start|>system\\n' + system }}"
    "{%- if tools %}{{- '\\n# Tools\\n<tools>' }}{%- for tool in tools %}"
    "{{- '\\n' + tool['name'] + '(' + (tool['arguments'] | join(', ')) + ')' }}"
    "{%- endfor %}{{- '\\n</tools>' }}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- for message in rest %}"
    "{%- if message['role'] == 'tool' %}"
    "{%- if loop.first or rest[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or rest[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus(num_tasks: int = 1500) -> list[str]:
    """Rendered expert conversations of the training split (the only text the tokenizer sees)."""
    texts = []
    for task in env.tasks("train", num_tasks):
        messages = env.initial_messages(task) + env.expert_messages(task)
        texts.append(render(messages, env.tools_json(task.split)))
    return texts


def render(
    messages: list[dict[str, str]], tools: list[dict] | None, add_generation_prompt: bool = False
) -> str:
    """Render with the template without needing a tokenizer (used to build the training corpus)."""
    from jinja2 import Environment

    jenv = Environment()
    jenv.filters["tojson"] = lambda x: __import__("json").dumps(x)
    return jenv.from_string(CHAT_TEMPLATE).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
    )


def train_tokenizer(vocab_size: int = 1024, num_tasks: int = 1500) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on the environment corpus; control tokens are single special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS,
        show_progress=False,
    )
    # The trainer does not split on special tokens by itself: feed it the text between them, so no
    # merge ever swallows a control token.
    splitter = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    pieces = [p for text in corpus(num_tasks) for p in splitter.split(text) if p]
    tok.train_from_iterator(pieces, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=CONTROL_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def load_or_train(cache_dir: Path, vocab_size: int = 1024, num_tasks: int = 1500) -> PreTrainedTokenizerFast:
    """The cached tokenizer for this vocabulary size and corpus, trained once (seconds)."""
    path = Path(cache_dir) / f"tokenizer-v6-{vocab_size}-{num_tasks}"
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    tok = train_tokenizer(vocab_size, num_tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    if not path.exists():
        tmp.replace(path)
    else:  # another process cached the same tokenizer meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(path))
