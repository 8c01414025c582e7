"""Supervised fine-tuning on expert trajectories: cross-entropy on assistant tokens only."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from collapsewatch.trainer import env
from collapsewatch.trainer.batch import collate, completion_logits, token_logprobs
from collapsewatch.trainer.rollout import ChatFormat, Rollout, expert_rollout


def sft_loss(model: torch.nn.Module, rollouts: list[Rollout], pad_id: int, device) -> torch.Tensor:
    """Token-mean negative log-likelihood of the policy tokens (tool output and prompt excluded), nats."""
    batch = collate(rollouts, pad_id, device)
    logp, _ = token_logprobs(completion_logits(model, batch), batch.completion_ids)
    mask = batch.policy_mask.float()
    return -(logp * mask).sum() / mask.sum().clamp(min=1.0)


def expert_batch(fmt: ChatFormat, rng: random.Random, size: int, hint_share: float = 0.0) -> list[Rollout]:
    """`size` expert trajectories of random training tasks; a `hint_share` of them under the hinted prompt."""
    tasks = [env.make_task("train", rng.randrange(env.TRAIN_TASKS)) for _ in range(size)]
    return [expert_rollout(fmt, task, hint=hint_share > 0 and rng.random() < hint_share) for task in tasks]


def train_sft(
    model: torch.nn.Module,
    fmt: ChatFormat,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device,
    progress=None,
    hint_share: float = 0.0,
) -> list[float]:
    """Warm start (and hint adaptation): AdamW with a one-cycle schedule over `steps`; returns the loss
    per step."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # 10% warm-up, at least 2 steps (at exactly 1, OneCycleLR divides by zero)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps)
    )
    model.train()
    losses = []
    for _ in range(steps):
        loss = sft_loss(model, expert_batch(fmt, rng, batch_size, hint_share), fmt.pad_id, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(len(losses), losses[-1])
    return losses


def warm_start_dir(cache_dir: str, key: dict) -> Path:
    """Cache folder of a warm-start checkpoint, named by a hash of everything that shaped it."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"sft-{digest}"
