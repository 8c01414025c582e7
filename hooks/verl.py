"""verl adapter (experimental): record a `RayPPOTrainer` run from the driver.

verl has no callback API. `attach_verl` wraps two methods on the trainer instance:
`_compute_old_log_prob` (its output carries `entropys`, which `fit` pops right after) and
`_update_actor` (the batch then holds responses, response_mask, old/rollout/ref logprobs,
advantages and token-level rewards; the actor's metrics come back in `meta_info["metrics"]`).
Control-token probabilities need the logits, which live in the workers: this driver-side adapter
records logprobs, entropy, rollouts and scalars, and leaves the `ctrl/*` statistics empty.
Written against verl 0.9.1's `verl/trainer/ppo/ray_trainer.py`; tested on a faithful stand-in
because verl itself (Ray, vLLM) does not install here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from collapsewatch.hooks.recorder import Recorder

# verl metric name -> canonical steps-table name
CANONICAL = {
    "actor/entropy": "entropy/mean",
    "actor/kl_loss": "kl/mean",
    "actor/pg_loss": "loss",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "lr",
    "actor/pg_clipfrac": "clip/frac",
    "actor/pg_clipfrac_lower": "clip/frac_low",
}


def verl_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (list, tuple)) and value:
            value = float(np.mean([float(v) for v in value]))
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
            out[f"verl/{key}"] = float(value)
            if key in CANONICAL:
                out[CANONICAL[key]] = float(value)
    return out


def _get(batch: Any, key: str) -> torch.Tensor | None:
    try:
        return batch[key] if key in batch.keys() else None  # noqa: SIM118 - TensorDict has no `in`
    except Exception:
        return None


def record_verl_batch(recorder: Recorder, step: int, data: Any, entropys: torch.Tensor | None = None) -> None:
    """Record one verl `DataProto` (after advantages) as token rows and rollouts for `step`."""
    batch, extra = data.batch, getattr(data, "non_tensor_batch", {}) or {}
    responses = batch["responses"]
    length = responses.shape[1]
    attention = _get(batch, "attention_mask")
    in_completion = attention[:, -length:] if attention is not None else torch.ones_like(responses)
    response_mask = _get(batch, "response_mask")  # multi-turn: tool observations are 0 here
    logprobs = _get(batch, "old_log_probs")
    if logprobs is None:
        logprobs = _get(batch, "rollout_log_probs")
    if logprobs is not None:
        recorder.log_logprobs(
            step,
            logprobs,
            entropys,
            responses,
            mask=in_completion,
            tool_mask=response_mask,
            old_logprobs=_get(batch, "old_log_probs"),
            ref_logprobs=_get(batch, "ref_log_prob"),
            sampling_logprobs=_get(batch, "rollout_log_probs"),
        )
    rewards = _get(batch, "token_level_rewards")
    if rewards is None:
        rewards = _get(batch, "token_level_scores")
    advantages = _get(batch, "advantages")
    policy = (
        (in_completion.bool() & response_mask.bool()) if response_mask is not None else in_completion.bool()
    )
    first = policy.float().argmax(1, keepdim=True)
    uids = extra.get("uid")
    groups = samples = None
    if uids is not None:
        _, groups = np.unique(np.asarray(uids).astype(str), return_inverse=True)
        seen: dict[int, int] = {}
        samples = []
        for g in groups.tolist():
            samples.append(seen.get(g, 0))
            seen[g] = samples[-1] + 1
    recorder.log_rollout(
        step,
        completion_ids=responses,
        completion_mask=in_completion,
        tool_mask=response_mask,
        rewards=None if rewards is None else rewards.sum(-1),
        advantages=None if advantages is None else advantages.gather(1, first).squeeze(1),
        group_ids=groups,
        samples=samples,
        uids=None
        if uids is None
        else [f"{u}-{s}" for u, s in zip(np.asarray(uids).astype(str), samples, strict=True)],
    )


def attach_verl(
    trainer: Any, root: str = "runs", run_name: str | None = None, **recorder_kwargs: Any
) -> Recorder:
    """Wrap a verl RayPPOTrainer instance (before `fit()`); returns the Recorder (close it after fit)."""
    tokenizer = recorder_kwargs.pop("tokenizer", getattr(trainer, "tokenizer", None))
    recorder = Recorder(root, run_name, tokenizer=tokenizer, rank=0, world_size=1, **recorder_kwargs)
    stash: dict[str, Any] = {}
    compute_old, update_actor = trainer._compute_old_log_prob, trainer._update_actor

    @functools.wraps(compute_old)
    def compute_old_log_prob(batch: Any, *args: Any, **kwargs: Any) -> Any:
        out = compute_old(batch, *args, **kwargs)
        try:
            proto = out[0] if isinstance(out, tuple) else out
            stash["entropys"] = _get(proto.batch, "entropys")
        except Exception as exc:
            recorder.record_failure("verl_entropy", exc)
        return out

    @functools.wraps(update_actor)
    def update_actor_and_record(batch: Any, *args: Any, **kwargs: Any) -> Any:
        out = update_actor(batch, *args, **kwargs)
        if recorder.enabled:
            try:
                step = int(trainer.global_steps)
                record_verl_batch(recorder, step, batch, stash.pop("entropys", None))
                metrics = getattr(out, "meta_info", {}).get("metrics", {})
                recorder.log_scalars(step, verl_scalars(metrics))
                recorder.end_step(step)
            except Exception as exc:
                recorder.record_failure("verl_batch", exc)
        return out

    trainer._compute_old_log_prob = compute_old_log_prob
    trainer._update_actor = update_actor_and_record
    return recorder
