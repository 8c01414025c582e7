"""The environment: tools really execute, the checker judges state and answer, splits differ."""

from __future__ import annotations

import json
import random

import pytest

from collapsewatch.errors import UserError
from collapsewatch.trainer import env
from collapsewatch.trainer.recipes import TrainConfig
from collapsewatch.trainer.tokenizer import train_tokenizer


def _play(task: env.Task, turns: list[str]) -> env.Episode:
    ep = env.Episode(task, max_turns=6)
    for t in turns:
        ep.step(t)
    return ep


def test_expert_trajectories_pass_the_checker_in_every_split():
    for split in env.SPLITS:
        for task in env.tasks(split, 60):
            calls = [m["content"] for m in env.expert_messages(task) if m["role"] == "assistant"]
            assert _play(task, calls).success(), task


def test_tasks_need_one_to_four_calls_and_splits_are_deterministic():
    counts = {t.num_calls for t in env.tasks("train", 300)}
    assert counts == {1, 2, 3, 4}
    assert env.make_task("train", 5) == env.make_task("train", 5)
    assert env.make_task("train", 5).question != env.make_task("test", 5).question or (
        env.make_task("train", 5).state != env.make_task("test", 5).state
    )


def test_wrong_answer_or_wrong_state_fails():
    task = next(t for t in env.tasks("train", 200) if t.kind == "transfer_balance")
    calls = [m["content"] for m in env.expert_messages(task) if m["role"] == "assistant"]
    assert not _play(task, calls[:-1] + ["Somebody has 3."]).success()
    skip_transfer = calls[1:]  # answer right, but the money never moved
    assert not _play(task, skip_transfer).success()


def test_tool_errors_come_back_as_messages_and_search_can_be_empty():
    task = env.make_task("train", 0)
    ep = env.Episode(task, max_turns=6)
    bad = ep.step('<tool_call>\n{"name": "get_balance", "arguments": {"account": "zed"}}\n</tool_call>')
    assert not bad.done and "unknown account zed" in bad.response and ep.tool_errors == 1
    garbled = ep.step("<tool_call>\n{name: get_balance\n</tool_call>")
    assert not garbled.done and "invalid tool call" in garbled.response and ep.parse_failures == 1
    world = env.World({"inbox": [], "balances": {}, "files": {}, "sent": [], "stock": {}})
    assert world.execute("search_messages", {"query": "hello"}) == []


def test_format_ood_declares_and_requires_another_arguments_key():
    task = env.make_task("format_ood", 1)
    assert '"parameters"' in env.initial_messages(task)[0]["content"]
    name, args = task.expert_calls[0]
    trained_syntax = json.dumps({"name": name, "arguments": args})
    tr = env.Episode(task, 6).step(f"<tool_call>\n{trained_syntax}\n</tool_call>")
    assert "invalid tool call" in tr.response


def test_content_ood_uses_unseen_tools():
    seen = {t["name"] for t in env.tools_json("train")}
    for task in env.tasks("content_ood", 20):
        assert {name for name, _ in task.expert_calls}.isdisjoint(seen)


def test_training_batches_cover_every_kind_evenly():
    batch = env.sample_train_tasks(random.Random(0), 2 * len(env.KINDS))
    kinds = [t.kind for t in batch]
    assert len(set(kinds)) == len(env.KINDS) and all(kinds.count(k) == 2 for k in kinds)
    for task in batch:
        assert _play(
            task, [m["content"] for m in env.expert_messages(task) if m["role"] == "assistant"]
        ).success()


def test_every_expert_turn_fits_the_default_turn_budget():
    # a turn cut short can never succeed: a budget below the longest call silently caps success
    tok = train_tokenizer(TrainConfig.vocab_size, TrainConfig.tokenizer_tasks)
    longest = max(
        len(tok(m["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
        for task in env.tasks("train", 400) + env.tasks("format_ood", 100) + env.tasks("content_ood", 100)
        for m in env.expert_messages(task)
        if m["role"] == "assistant"
    )
    assert longest <= TrainConfig.max_turn_tokens


def test_hints_name_the_tools_or_give_the_expert_calls_in_the_declared_syntax():
    task = next(t for t in env.tasks("format_ood", 20) if t.num_calls >= 2)
    names, calls = task.hint("names"), task.hint("calls")
    for name, args in task.expert_calls:
        assert name in names and json.dumps(args) not in names
        assert json.dumps({"name": name, "parameters": args}) in calls
    assert env.initial_messages(task, hint="calls")[0]["content"].endswith(calls)
    assert "Hint" not in env.initial_messages(task)[0]["content"]
    with pytest.raises(UserError, match="hint_style"):
        TrainConfig(hint_style="answers").validate()
