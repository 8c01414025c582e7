"""Qwen2-architecture policies built from config (no hub), or any local HF causal LM by path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from collapsewatch.errors import UserError

# cpu: ~1M parameters, a GRPO step in seconds on one core (the calibrated size, also on a GPU).
# gpu: 25M parameters, not calibrated (its warm start scored 0.06 on an H200). tiny: for tests.
SIZES = {
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
    ),
    "cpu": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=384,
    ),
    "gpu": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1536,
    ),
}


def build_model(size: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Qwen2ForCausalLM:
    """A fresh Qwen2 with tied embeddings sized for this tokenizer."""
    if size not in SIZES:
        raise UserError(f"unknown model size {size!r}; sizes are {', '.join(SIZES)}")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **SIZES[size],
    )
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config)


def load_pretrained(
    path: str | Path, device: torch.device
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Any local HF causal LM and its tokenizer; it must speak ChatML (`<|im_start|>`, `<|im_end|>`)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        # tokenizer.json is the tokenizer's truth; AutoTokenizer may rebuild it from the model type
        # (transformers 5 swaps in Qwen2's pre-tokenizer for any qwen2 config).
        if (path / "tokenizer.json").exists():
            tok = PreTrainedTokenizerFast.from_pretrained(str(path))
        else:
            tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from exc
    vocab = tok.get_vocab()
    missing = [t for t in ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>") if t not in vocab]
    if missing:
        raise UserError(f"{path}: tokenizer lacks the ChatML/tool tokens {', '.join(missing)}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.to(device), tok


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_digest(path: str | Path) -> str | None:
    """SHA-256 (16 hex digits) of a checkpoint's weight files: the same cache key can hold different
    weights on another machine (CPU kernels differ; docs/reproduction.md), and runs should say which."""
    files = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
