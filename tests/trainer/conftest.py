"""Shared tiny setup: a small tokenizer and a briefly warm-started model, built once per session."""

from __future__ import annotations

import pytest
import torch

from collapsewatch.trainer import tokenizer as tokenizer_lib
from collapsewatch.trainer.recipes import TrainConfig


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cw-cache")


@pytest.fixture(scope="session")
def tok(cache_dir):
    return tokenizer_lib.load_or_train(cache_dir, vocab_size=512, num_tasks=200)


@pytest.fixture
def tiny_cfg(cache_dir) -> TrainConfig:
    """A config that trains in seconds: 2 tasks x G=4, short turns, a 15-step warm start."""
    return TrainConfig(
        cache_dir=str(cache_dir),
        vocab_size=512,
        tokenizer_tasks=200,
        model_size="tiny",
        sft_steps=15,
        sft_batch=8,
        tasks_per_step=2,
        group_size=4,
        max_turns=3,
        max_turn_tokens=12,
        max_context=256,
        steps=2,
        warmup_steps=1,
        eval_tasks=4,
        checkpoint_every=0,
    )
