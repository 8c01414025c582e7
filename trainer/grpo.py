"""One GRPO step, top to bottom: rollout, reward, group advantage, clipped update, supervision, metrics.

Every logged name is written where its value is computed (canonical names: collapsewatch.schema.SCALARS).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from collapsewatch.hooks.probe import ControlProbe, ProbeRow
from collapsewatch.schema import STRUCTURAL_STATES
from collapsewatch.trainer import env
from collapsewatch.trainer.batch import collate, completion_logits, grouped_completion_logits, token_logprobs
from collapsewatch.trainer.recipes import TrainConfig
from collapsewatch.trainer.recording import RunLog
from collapsewatch.trainer.rollout import ChatFormat, Rollout, RolloutSpec, expert_rollout, generate
from collapsewatch.trainer.sft import sft_loss
from collapsewatch.trainer.tokenizer import CONTROL_TOKENS

try:  # structural states for the progress bar and the states/* scalars, when diagnostics is present
    from collapsewatch.diagnostics.structure import classify_turn
except ImportError:  # pragma: no cover - diagnostics is part of the package
    classify_turn = None


@dataclass
class GRPOState:
    """Everything a step reads or mutates."""

    cfg: TrainConfig
    model: torch.nn.Module  # DDP-wrapped when distributed: use for gradients
    policy: torch.nn.Module  # the bare module: use for generation and no-grad passes
    ref: torch.nn.Module | None
    opt: torch.optim.Optimizer
    fmt: ChatFormat
    device: torch.device
    log: RunLog | None
    rank: int = 0
    world_size: int = 1
    task_rng: random.Random = field(default_factory=random.Random)
    sample_gen: torch.Generator | None = None
    failed: deque = field(default_factory=lambda: deque(maxlen=4096))  # (step, Task) of failed tasks
    probe: ControlProbe | None = None  # expert trajectories of held-out tasks (control_probe)

    def autocast(self):
        """bf16 autocast on CUDA, with cuDNN's attention kernel left out (`attention_kernels`)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        stack.enter_context(attention_kernels())
        return stack


def attention_kernels():
    """SDPA restricted to flash, memory-efficient and math kernels. On an H200 (torch 2.11, bf16) the
    cuDNN kernel's backward turned an `interleaved` update into NaN gradients (seed 301 at step 4 in
    both of its runs); without it that seed ran clean through step 14 (docs/reproduction.md, "On a
    GPU")."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 has no cuDNN attention to leave out
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def step_if_finite(opt: torch.optim.Optimizer, grad_norm: torch.Tensor) -> bool:
    """Take the optimizer step unless the gradient is NaN or infinite: one such step would poison every
    weight (clipping scales all gradients by it). The skipped update is counted, and the NaN grad_norm
    it logs pages through the non_finite detector. (Every backward here follows a zero_grad, so the
    skipped gradient is dropped there.)"""
    finite = bool(torch.isfinite(grad_norm))
    if finite:
        opt.step()
    return finite


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup_steps, then constant (step counts from 1)."""
    lr = cfg.lr * min(1.0, step / max(cfg.warmup_steps, 1))
    if 0 <= cfg.fault_lr_spike_at <= step:
        lr *= cfg.fault_lr_factor
    return lr


def grpo_step(s: GRPOState, step: int) -> dict[str, float]:
    cfg, fmt, G, E = s.cfg, s.fmt, s.cfg.group_size, s.cfg.experts_per_group
    metrics: dict[str, float] = {}

    # --- 1. rollout: G episodes per task; the first E may be the expert, the last h see a hint ------
    t0 = time.perf_counter()
    num_tasks = cfg.tasks_per_step // s.world_size
    tasks = env.sample_train_tasks(s.task_rng, num_tasks)
    specs = [
        RolloutSpec(task, g, k, hint=k >= G - cfg.hint_rollouts)
        for g, task in enumerate(tasks)
        for k in range(E, G)
    ]
    with s.autocast():
        sampled = generate(
            s.policy, fmt, specs, max_turns=cfg.max_turns, max_turn_tokens=cfg.max_turn_tokens,
            max_context=cfg.max_context, temperature=cfg.temperature, generator=s.sample_gen, device=s.device,
        )  # fmt: skip
    rollouts: list[Rollout] = []
    per_group = G - E
    for g, task in enumerate(tasks):
        rollouts += [expert_rollout(fmt, task, g, k) for k in range(E)]
        rollouts += sampled[g * per_group : (g + 1) * per_group]
    metrics["time/rollout_s"] = time.perf_counter() - t0

    # --- 2. reward and group-normalised advantage (expert rows join the normalisation) --------------
    rewards = torch.tensor([r.reward for r in rollouts], device=s.device).view(num_tasks, G)
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).flatten()
    on_policy = [r.source == "policy" for r in rollouts]
    metrics["reward/mean"] = rewards.mean().item()
    metrics["success/rate"] = _mean([r.success for r, p in zip(rollouts, on_policy, strict=True) if p])
    metrics["length/mean"] = _mean([r.num_generated for r in rollouts])
    metrics["length/truncated_frac"] = _mean([r.finish_reason in ("length", "max_turns") for r in rollouts])
    metrics["tool_calls/per_rollout"] = _mean([r.num_tool_calls for r in rollouts])
    metrics["tool_errors/per_rollout"] = _mean([r.num_tool_errors for r in rollouts])
    metrics["groups/mixed_frac"] = (rewards.std(1) > 0).float().mean().item()
    metrics.update(_structural_state_shares([r for r, p in zip(rollouts, on_policy, strict=True) if p]))

    # --- 3. behaviour log-probs: the sampler's where it sampled this prompt, else recomputed ---------
    t0 = time.perf_counter()
    batch = collate(rollouts, fmt.pad_id, s.device)
    old_logp = batch.sample_logprobs.clone()
    rescore = torch.tensor([not p for p in on_policy], device=s.device).nonzero().flatten()
    with torch.no_grad(), s.autocast():
        if len(rescore):  # expert rows were never sampled; hint rows were sampled under another prompt
            sub = batch.rows(rescore)
            old_logp[rescore] = token_logprobs(completion_logits(s.policy, sub), sub.completion_ids)[0]
        ref_logp = None
        if s.ref is not None and cfg.kl_coef > 0:
            ref_logp = token_logprobs(grouped_completion_logits(s.ref, batch, G), batch.completion_ids)[0]
    old_logp = torch.nan_to_num(old_logp, nan=0.0)

    # --- 4. clipped policy-gradient update: one epoch, `minibatches` optimizer steps, token-mean -----
    lr = lr_at(cfg, step)
    for group in s.opt.param_groups:
        group["lr"] = lr
    metrics["lr"] = lr
    s.model.train()
    total_tokens = batch.policy_mask.sum().clamp(min=1).float()
    # drawn on the sampling generator's own device (a CUDA generator cannot draw a CPU permutation)
    draw_on = s.sample_gen.device if s.sample_gen is not None else "cpu"
    order = torch.randperm(len(batch), generator=s.sample_gen, device=draw_on).to(s.device)
    if cfg.minibatches == 1:  # row order is irrelevant then: keep groups whole so prompts are shared
        order = torch.arange(len(batch), device=s.device)  # (the draw above keeps the sampling stream)
    acc, skipped = _Accumulator(), 0
    for mb_index, rows in enumerate(order.chunk(cfg.minibatches)):
        mb = batch.rows(rows)
        mask, adv = mb.policy_mask.float(), advantages[rows].unsqueeze(1)
        with s.autocast():
            logits = grouped_completion_logits(s.model, mb, G)  # plain forward for shuffled rows
        logp, entropy = token_logprobs(logits, mb.completion_ids)
        ratio = torch.exp(logp - old_logp[rows])
        clipped_ratio = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
        pg_loss = -torch.min(ratio * adv, clipped_ratio * adv)
        # minibatch share of the batch's token mean, so the minibatch gradients add up to it
        loss = (pg_loss * mask).sum() / total_tokens * cfg.minibatches
        if ref_logp is not None:
            delta = ref_logp[rows] - logp
            kl = torch.exp(delta) - delta - 1  # k3 estimator, >= 0, nats
            loss = loss + cfg.kl_coef * (kl * mask).sum() / total_tokens * cfg.minibatches
            acc.add("kl/mean", (kl.detach() * mask).sum(), mask.sum())
        if cfg.joint_sft_coef > 0:  # synchronous supervision: the step's expert turns, every minibatch
            experts = [expert_rollout(fmt, t) for t in tasks[mb_index :: cfg.minibatches]] or [
                expert_rollout(fmt, tasks[0])
            ]
            with s.autocast():
                joint = sft_loss(s.model, experts, fmt.pad_id, s.device)
            loss = loss + cfg.joint_sft_coef * joint
            acc.add("sft/joint_loss", joint.detach(), 1)
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        skipped += not step_if_finite(s.opt, grad_norm)
        with torch.no_grad():
            n = mask.sum()
            low = (ratio < 1 - cfg.clip_low) & (adv < 0)  # clipped: the gradient of these tokens is zero
            high = (ratio > 1 + cfg.clip_high) & (adv > 0)
            acc.add("loss", loss.detach() / cfg.minibatches, 1 / cfg.minibatches)
            acc.add("grad_norm", grad_norm.detach(), 1)
            acc.add("entropy/mean", (entropy * mask).sum(), n)
            acc.add("clip/frac_low", (low.float() * mask).sum(), n)
            acc.add("clip/frac_high", (high.float() * mask).sum(), n)
            acc.add("clip/frac", ((low | high).float() * mask).sum(), n)
            acc.add("ratio/sum", (ratio * mask).sum(), n)
            acc.add("ratio/sq_sum", (ratio.square() * mask).sum(), n)
        if s.log is not None:  # token capture from the logits the update already computed
            s.log.logits(step, logits, mb, rows, old_logp[rows], None if ref_logp is None else ref_logp[rows])
    metrics.update(acc.means(exclude=("ratio/sum", "ratio/sq_sum")))
    ratio_mean, ratio_sq = acc.mean("ratio/sum"), acc.mean("ratio/sq_sum")
    metrics["ratio/std"] = max(ratio_sq - ratio_mean**2, 0.0) ** 0.5
    metrics["time/update_s"] = time.perf_counter() - t0

    # --- 5. erroneous-example SFT every K steps on expert turns of tasks failed recently -------------
    for g, task in enumerate(tasks):
        if not all(r.success for r in rollouts[g * G : (g + 1) * G] if r.source == "policy"):
            s.failed.append((step, task))
    if cfg.err_sft_every and step % cfg.err_sft_every == 0:
        recent = [t for st, t in s.failed if st > step - cfg.err_sft_window] or tasks
        for group in s.opt.param_groups:
            group["lr"] = cfg.err_sft_lr if cfg.err_sft_lr is not None else lr
        for _ in range(cfg.err_sft_steps):
            picked = [
                recent[s.task_rng.randrange(len(recent))]
                for _ in range(min(cfg.tasks_per_step * 4, cfg.err_sft_batch))
            ]
            with s.autocast():
                err_loss = sft_loss(s.model, [expert_rollout(fmt, t) for t in picked], fmt.pad_id, s.device)
            s.opt.zero_grad(set_to_none=True)
            err_loss.backward()
            skipped += not step_if_finite(
                s.opt, torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
            )
        metrics["sft/erroneous_loss"] = err_loss.item()
        metrics["sft/erroneous_tasks"] = float(len(recent))
    metrics["updates/skipped_nonfinite"] = float(skipped)

    # --- 6. the fixed probe: teacher-forced log p of the expert's control tokens, held-out tasks ----
    # Each rank scores its share of the conversations; their sums add up to the one-process figures.
    probe = None
    if s.probe is not None:  # float32, no autocast: the expert's control tokens sit at log p ~ -1e-4
        t0 = time.perf_counter()
        probe = s.probe.totals(s.policy, part=s.rank, parts=s.world_size)
        metrics["time/probe_s"] = time.perf_counter() - t0

    metrics = _reduce_over_ranks(metrics, s.world_size, s.device)
    if probe is not None:
        metrics.update(s.probe.summarize(_sum_over_ranks(probe, s.world_size, s.device)))
    if s.log is not None:
        s.log.rollouts(step, rollouts, advantages)
        s.log.scalars(step, metrics)
        s.log.end_step(step)
    return metrics


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


class _Accumulator:
    """Sums of (value, weight) per name, for token-weighted means over minibatches."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, value: Any, weight: Any) -> None:
        pair = self.sums.setdefault(name, [0.0, 0.0])
        pair[0] += float(value)
        pair[1] += float(weight)

    def mean(self, name: str) -> float:
        value, weight = self.sums.get(name, (float("nan"), 0.0))
        return value / weight if weight else float("nan")

    def means(self, exclude=()) -> dict[str, float]:
        return {name: self.mean(name) for name in self.sums if name not in exclude}


def control_probe(fmt: ChatFormat, num_tasks: int) -> ControlProbe | None:
    """Expert trajectories of test tasks the evaluation does not use, scored on the policy's tokens."""
    if num_tasks <= 0:
        return None
    experts = [expert_rollout(fmt, t) for t in env.tasks("test", num_tasks, start=10_000)]
    rows = [
        ProbeRow(r.prompt_ids + r.completion_ids, [False] * len(r.prompt_ids) + [not m for m in r.tool_mask])
        for r in experts
    ]
    return ControlProbe(fmt.tok, rows, CONTROL_TOKENS)


def _structural_state_shares(rollouts: list[Rollout]) -> dict[str, float]:
    """Share of assistant turns in each structural state (states/<name>), when diagnostics is present."""
    if classify_turn is None:
        return {}
    states = [classify_turn(t).value for r in rollouts for t in r.turn_texts]
    if not states:
        return {}
    return {f"states/{name}": states.count(name) / len(states) for name in STRUCTURAL_STATES}


def _sum_over_ranks(t: torch.Tensor, world_size: int, device: torch.device) -> torch.Tensor:
    """Element-wise sum over ranks (on `device`: NCCL reduces CUDA tensors only)."""
    if world_size == 1 or not dist.is_initialized():
        return t
    t = t.to(device)
    dist.all_reduce(t)
    return t.cpu()


def _reduce_over_ranks(metrics: dict[str, float], world_size: int, device: torch.device) -> dict[str, float]:
    """Mean of every metric over ranks (equal-sized shards, so rank means average correctly)."""
    if world_size == 1 or not dist.is_initialized():
        return metrics
    names = sorted(metrics)
    sums = _sum_over_ranks(torch.tensor([metrics[n] for n in names], dtype=torch.float64), world_size, device)
    return {n: v / world_size for n, v in zip(names, sums.tolist(), strict=True)}
