"""OpenRLHF adapter (experimental): record the `Experience` batches of a PPO/GRPO run.

`attach_openrlhf` wraps `make_experience_batch` on the experience maker instance; each returned
`Experience` carries `sequences` (prompt + response ids), `action_mask`, `action_log_probs`,
`rollout_log_probs`, `base_action_log_probs`, `advantages` and per-sample `rewards`. OpenRLHF
computes no entropy there and keeps logits in its workers, so entropy and the `ctrl/*` statistics
are left empty. Written against OpenRLHF 0.11.2 (`openrlhf/trainer/ppo_utils/experience*.py`);
tested on a faithful stand-in because OpenRLHF (Ray, vLLM, DeepSpeed) does not install here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from collapsewatch.hooks.recorder import Recorder


def record_experience(recorder: Recorder, step: int, experience: Any, seq_offset: int = 0) -> int:
    """Record one `Experience` (micro rollout batch) at `step`; returns the number of rollouts."""
    action_mask = experience.action_mask
    length = action_mask.shape[1]
    completion_ids = experience.sequences[:, -length:]
    batch = completion_ids.shape[0]
    seqs = list(range(seq_offset, seq_offset + batch))
    logprobs = experience.rollout_log_probs
    if logprobs is None:
        logprobs = experience.action_log_probs
    if logprobs is not None:
        recorder.log_logprobs(
            step,
            logprobs,
            None,
            completion_ids,
            mask=action_mask,
            seq_index=seqs,
            old_logprobs=experience.action_log_probs,
            ref_logprobs=getattr(experience, "base_action_log_probs", None),
            sampling_logprobs=experience.rollout_log_probs,
        )
    advantages = experience.advantages
    first = action_mask.float().argmax(1, keepdim=True)
    rewards = getattr(experience, "rewards", None)
    prompts = getattr(experience, "prompts", None) or None
    recorder.log_rollout(
        step,
        completion_ids=completion_ids,
        completion_mask=action_mask,
        seq_index=seqs,
        rewards=None if rewards is None else torch.as_tensor(rewards).reshape(batch, -1).sum(-1),
        advantages=None if advantages is None else advantages.gather(1, first).squeeze(1),
        prompts=prompts,
    )
    return batch


def attach_openrlhf(
    experience_maker: Any,
    root: str = "runs",
    run_name: str | None = None,
    *,
    step_fn: Callable[[], int] | None = None,
    **recorder_kwargs: Any,
) -> Recorder:
    """Wrap `experience_maker.make_experience_batch`; each call is one step (or `step_fn()`)."""
    tokenizer = recorder_kwargs.pop("tokenizer", getattr(experience_maker, "tokenizer", None))
    recorder = Recorder(root, run_name, tokenizer=tokenizer, **recorder_kwargs)
    original = experience_maker.make_experience_batch
    counter = {"step": 0}

    @functools.wraps(original)
    def make_experience_batch(*args: Any, **kwargs: Any) -> Any:
        experiences = original(*args, **kwargs)
        counter["step"] += 1
        if recorder.enabled:
            try:
                step = int(step_fn()) if step_fn is not None else counter["step"]
                offset = 0
                for experience in experiences:
                    offset += record_experience(recorder, step, experience, offset)
                recorder.end_step(step)
            except Exception as exc:
                recorder.record_failure("openrlhf_batch", exc)
        return experiences

    experience_maker.make_experience_batch = make_experience_batch
    return recorder
