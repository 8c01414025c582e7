"""Every call the trainer makes into collapsewatch's Recorder, in one place."""

from __future__ import annotations

from typing import Any

import torch

from collapsewatch.trainer.batch import Batch
from collapsewatch.trainer.rollout import ChatFormat, Rollout


class RunLog:
    """One rank's view of the run directory; scalars (already reduced over ranks) come from rank 0."""

    def __init__(self, root: str, run_name: str, fmt: ChatFormat, config: dict, rank: int, world_size: int):
        from collapsewatch.diagnostics.detector_base import EXPERT_ROW_GATE
        from collapsewatch.hooks.recorder import Recorder

        self.rank = rank
        self.fmt = fmt
        self.rec = Recorder(
            root,
            run_name,
            tokenizer=fmt.tok,
            control_tokens=["<tool_call>", "</tool_call>", "<|im_end|>", "<|im_start|>", "<tool_response>"],
            capture=config.get("capture", "control"),
            rank=rank,
            world_size=world_size,
            config=config,
            tokenizer_name=config.get("tokenizer_name"),
            # an expert row in every group keeps the groups mixed: the live page waits for them to thin
            detectors=EXPERT_ROW_GATE if config.get("expert_replacement") else None,
        )

    @property
    def run_dir(self):
        return self.rec.run_dir

    def rollouts(self, step: int, rollouts: list[Rollout], advantages: torch.Tensor) -> None:
        self.rec.log_rollout(
            step,
            completion_ids=[r.completion_ids for r in rollouts],
            tool_mask=[[not m for m in r.tool_mask] for r in rollouts],  # hooks: True = policy token
            rewards=[r.reward for r in rollouts],
            advantages=advantages.detach().cpu().numpy(),
            group_ids=[r.group for r in rollouts],
            samples=[r.sample for r in rollouts],
            success=[r.success for r in rollouts],
            reward_components=[{"success": r.reward} for r in rollouts],
            sources=[r.source for r in rollouts],
            num_tool_calls=[r.num_tool_calls for r in rollouts],
            num_tool_errors=[r.num_tool_errors for r in rollouts],
            num_turns=[len(r.turn_texts) for r in rollouts],
            finish_reasons=[r.finish_reason for r in rollouts],
            turn_texts=[r.turn_texts for r in rollouts],
            texts=[self.fmt.decode(r.completion_ids) for r in rollouts],
            prompts=[self.fmt.decode(r.prompt_ids) for r in rollouts],
            prompt_lens=[len(r.prompt_ids) for r in rollouts],
            completion_lens=[r.num_generated for r in rollouts],
            uids=[f"{step}-{self.rank}-{i}-{r.task.uid}" for i, r in enumerate(rollouts)],
            info=[r.truth for r in rollouts],
        )

    def logits(
        self,
        step: int,
        logits: torch.Tensor,
        batch: Batch,
        seq_index: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
    ) -> None:
        """Token-level capture from the logits the update already computed (no second forward)."""
        self.rec.log_logits(
            step,
            logits.detach(),
            batch.completion_ids,
            mask=batch.completion_mask,
            tool_mask=batch.policy_mask,
            seq_index=seq_index.cpu().numpy(),
            old_logprobs=old_logprobs.detach(),
            ref_logprobs=None if ref_logprobs is None else ref_logprobs.detach(),
            sampling_logprobs=batch.sample_logprobs,
        )

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if self.rank == 0:
            self.rec.log_scalars(step, values)

    def end_step(self, step: int) -> None:
        self.rec.end_step(step)

    def update_meta(self, **values: Any) -> None:
        if self.rank == 0 and self.rec.writer is not None:
            self.rec.writer.update_meta(**values)

    def close(self, status: str) -> None:
        self.rec.close(status=status)
