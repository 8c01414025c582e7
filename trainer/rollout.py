"""Multi-turn episodes with the environment in the loop: batched, KV-cached sampling.

Each assistant turn is generated for every live episode at once (left-padded prefill, then one token
per forward with the KV cache); the environment then executes the calls and its response tokens are
appended and marked `tool_mask=True`, so the loss never trains on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from collapsewatch.trainer import env, hf_cache

TOOL_RESPONSE_TEMPLATE = (
    "\n<|im_start|>user\n<tool_response>\n{response}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
)


class ChatFormat:
    """Turns messages and tool responses into token ids with the tokenizer's own chat template."""

    def __init__(self, tokenizer, hint_style: str = "names"):
        self.tok = tokenizer
        self.hint_style = hint_style  # what a hinted prompt says (env.Task.hint)
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.pad_token_id

    def prompt_ids(self, task: env.Task, hint: bool = False) -> list[int]:
        text = self.tok.apply_chat_template(
            env.initial_messages(task, hint=self.hint_style if hint else None),
            tools=env.tools_json(task.split),
            add_generation_prompt=True,
            tokenize=False,
        )
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def tool_response_ids(self, response: str) -> list[int]:
        """Tokens after an assistant turn's `<|im_end|>`: the tool turn and the next assistant header."""
        return self.encode(TOOL_RESPONSE_TEMPLATE.format(response=response))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


@dataclass
class Rollout:
    """One episode, as the trainer and the recorder need it."""

    task: env.Task
    group: int
    sample: int
    source: str  # "policy", "hint" or "expert"
    prompt_ids: list[int]  # the hint-free prompt the gradient conditions on
    completion_ids: list[int] = field(default_factory=list)
    tool_mask: list[bool] = field(default_factory=list)  # True: token came from the environment
    sample_logprobs: list[float] = field(default_factory=list)  # sampler log p, nats (nan: not sampled)
    turn_texts: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    success: bool = False
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def reward(self) -> float:
        return 1.0 if self.success else 0.0

    @property
    def num_generated(self) -> int:
        return sum(1 for m in self.tool_mask if not m)

    @property
    def num_tool_calls(self) -> int:
        return len(self.truth.get("calls", []))

    @property
    def num_tool_errors(self) -> int:
        return int(self.truth.get("tool_errors", 0))


def expert_rollout(
    fmt: ChatFormat, task: env.Task, group: int = -1, sample: int = -1, hint: bool = False
) -> Rollout:
    """The expert trajectory laid out exactly as a sampled rollout would be (teacher forcing); `hint`
    puts the hint line in its prompt (for SFT only: an expert row in a group keeps the plain prompt)."""
    ro = Rollout(task, group, sample, "expert", fmt.prompt_ids(task, hint=hint))
    episode = env.Episode(task, max_turns=len(task.expert_calls) + 1)
    for message in env.expert_messages(task):
        if message["role"] == "assistant":
            ids = fmt.encode(message["content"]) + [fmt.eos_id]
            ro.turn_texts.append(fmt.decode(ids))
            episode.step(message["content"])
            ro.completion_ids += ids
            ro.tool_mask += [False] * len(ids)
        else:
            ids = fmt.tool_response_ids(message["content"])
            ro.completion_ids += ids
            ro.tool_mask += [True] * len(ids)
    ro.sample_logprobs = [math.nan] * len(ro.completion_ids)
    ro.success = episode.success()
    ro.truth = episode.truth()
    return ro


@dataclass
class RolloutSpec:
    task: env.Task
    group: int
    sample: int
    hint: bool = False


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    fmt: ChatFormat,
    specs: list[RolloutSpec],
    *,
    max_turns: int,
    max_turn_tokens: int,
    max_context: int,
    temperature: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> list[Rollout]:
    """Play every spec's episode to the end; returns rollouts in spec order."""
    model.eval()
    rollouts, episodes, contexts = [], [], []
    for s in specs:
        prompt = fmt.prompt_ids(s.task)
        rollouts.append(Rollout(s.task, s.group, s.sample, "hint" if s.hint else "policy", prompt))
        episodes.append(env.Episode(s.task, max_turns))
        contexts.append(fmt.prompt_ids(s.task, hint=True) if s.hint else list(prompt))
    live = list(range(len(specs)))
    while live:
        turn_ids, turn_logps = _generate_turn(
            model, [contexts[i] for i in live], fmt, max_turn_tokens, temperature, generator, device
        )
        still_live = []
        for i, ids, logps in zip(live, turn_ids, turn_logps, strict=True):
            ro, ep = rollouts[i], episodes[i]
            ro.completion_ids += ids
            ro.tool_mask += [False] * len(ids)
            ro.sample_logprobs += logps
            contexts[i] += ids
            ro.turn_texts.append(fmt.decode(ids))
            ended = ids[-1] == fmt.eos_id
            text = fmt.decode(ids[:-1] if ended else ids)
            if not ended:
                ep.turns += 1
                ro.finish_reason = "length"
                continue
            tr = ep.step(text)
            if tr.done:
                ro.finish_reason = "stop" if ep.answer is not None else "max_turns"
                continue
            resp = fmt.tool_response_ids(tr.response or "")
            if len(contexts[i]) + len(resp) + max_turn_tokens > max_context:
                ro.finish_reason = "length"
                continue
            ro.completion_ids += resp
            ro.tool_mask += [True] * len(resp)
            ro.sample_logprobs += [math.nan] * len(resp)
            contexts[i] += resp
            still_live.append(i)
        live = still_live
    for ro, ep in zip(rollouts, episodes, strict=True):
        ro.success = ro.finish_reason == "stop" and ep.success()
        ro.truth = ep.truth() | {"finish_reason": ro.finish_reason, "turns": ep.turns}
    return rollouts


def _generate_turn(model, contexts, fmt, max_new, temperature, generator, device):
    """One assistant turn for each context, stopping each row at `<|im_end|>`."""
    ids, mask = _left_pad(contexts, fmt.pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    past, logits = hf_cache.returned(out), out.logits[:, -1]
    pos = positions[:, -1]
    n = len(contexts)
    steps_ids, steps_logps = [], []
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_new):
        logp = torch.log_softmax(logits.float(), dim=-1)
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            token = logp.argmax(-1)
        steps_ids.append(token)
        steps_logps.append(logp.gather(1, token[:, None]).squeeze(1))
        finished |= token == fmt.eos_id
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=pos[:, None],
            use_cache=True,
            **hf_cache.passed(past),
        )
        past, logits = hf_cache.returned(out), out.logits[:, -1]
    all_ids = torch.stack(steps_ids, 1).tolist()
    all_logps = torch.stack(steps_logps, 1).tolist()
    new_ids, new_logps = [], []
    for row_ids, row_logps in zip(all_ids, all_logps, strict=True):
        end = row_ids.index(fmt.eos_id) + 1 if fmt.eos_id in row_ids else len(row_ids)
        new_ids.append(row_ids[:end])
        new_logps.append(row_logps[:end])
    return new_ids, new_logps
