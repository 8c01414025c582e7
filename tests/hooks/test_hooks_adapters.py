"""verl and OpenRLHF adapters, on faithful stand-ins of their batch structures (neither installs here).

The stand-ins copy the field names, shapes and call order of verl 0.9.1 (`DataProto`,
`RayPPOTrainer.fit`: old logprobs with `entropys` popped right after, then `_update_actor`) and
OpenRLHF 0.11.2 (`Experience`, `make_experience_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from collapsewatch.hooks.openrlhf import attach_openrlhf
from collapsewatch.hooks.verl import attach_verl
from collapsewatch.store.reader import open_run

CONTROLS = {"<tool_call>": 3, "</tool_call>": 4, "<|im_end|>": 5}


class TensorBatch(dict):
    """The bits of tensordict.TensorDict the verl trainer uses on the driver."""


@dataclass
class DataProto:
    batch: TensorBatch = None  # type: ignore[assignment]
    non_tensor_batch: dict = field(default_factory=dict)
    meta_info: dict = field(default_factory=dict)

    def union(self, other: DataProto) -> DataProto:
        self.batch.update(other.batch)
        return self


class RayPPOTrainerStandIn:
    """verl's fit() order for one GRPO step, with a random policy instead of workers."""

    def __init__(self) -> None:
        self.global_steps = 1
        self.truth: dict[int, dict[str, torch.Tensor]] = {}

    def _compute_old_log_prob(self, batch: DataProto):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.global_steps)
        logits = torch.randn(*batch.batch["responses"].shape, 16, generator=g)
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(-1, batch.batch["responses"].unsqueeze(-1)).squeeze(-1)
        ent = -(logp.exp() * logp).sum(-1)
        self.truth[self.global_steps] = {"logprob": lp, "entropy": ent}
        return DataProto(TensorBatch(old_log_probs=lp, entropys=ent)), 0.0

    def _update_actor(self, batch: DataProto) -> DataProto:
        return DataProto(
            TensorBatch(), meta_info={"metrics": {"actor/entropy": [0.5, 0.7], "actor/pg_loss": 0.1}}
        )

    def fit(self, steps: int) -> None:
        for _ in range(steps):
            g = torch.Generator().manual_seed(100 + self.global_steps)
            responses = torch.randint(6, 16, (4, 6), generator=g)
            responses[0, :3] = torch.tensor([3, 7, 4])
            attention = torch.ones(4, 10, dtype=torch.long)
            attention[2, -2:] = 0  # right padding of the response
            response_mask = attention[:, -6:].clone()
            response_mask[1, 2:4] = 0  # a tool observation inside a multi-turn response
            batch = DataProto(TensorBatch(responses=responses, attention_mask=attention, response_mask=response_mask),
                              non_tensor_batch={"uid": np.array(["p0", "p0", "p1", "p1"], dtype=object)})  # fmt: skip
            old, _ = self._compute_old_log_prob(batch)
            old.batch.pop("entropys")  # as verl does, before anyone downstream could see them
            batch = batch.union(old)
            scores = torch.zeros(4, 6)
            scores[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0])
            batch.batch["token_level_rewards"] = scores
            batch.batch["advantages"] = (
                torch.tensor([[0.7], [-0.7], [0.0], [0.0]]).expand(4, 6) * response_mask
            )
            self._update_actor(batch)
            self.global_steps += 1


def test_verl_adapter_records_entropys_before_they_are_popped(tmp_path):
    trainer = RayPPOTrainerStandIn()
    rec = attach_verl(trainer, root=str(tmp_path), run_name="verl", control_tokens=CONTROLS, capture="all")
    trainer.fit(steps=2)
    rec.close()
    assert rec.failures == {}
    run = open_run(tmp_path / "verl")
    tokens = run.tokens()
    assert len(tokens) == 2 * (24 - 2)
    t1 = tokens[tokens.step == 1].sort_values(["seq", "pos"])
    truth = trainer.truth[1]
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, -2:] = False
    np.testing.assert_allclose(t1.entropy, truth["entropy"][mask].numpy(), rtol=2.5e-4)
    np.testing.assert_allclose(t1.logprob, truth["logprob"][mask].numpy(), rtol=2.5e-4)
    assert t1[(t1.seq == 1)].is_tool_output.tolist() == [False, False, True, True, False, False]
    seqs = run.sequences().sort_values(["step", "seq"])
    assert list(seqs.group[:4]) == [0, 0, 1, 1] and list(seqs["sample"][:4]) == [0, 1, 0, 1]
    assert list(seqs.reward[:4]) == [1.0, 0.0, 1.0, 1.0] and seqs.advantage.iloc[0] == np.float32(0.7)
    steps = run.steps().set_index("step")
    assert steps.loc[1, "entropy/mean"] == 0.6 and steps.loc[1, "loss"] == 0.1


@dataclass
class Experience:
    """OpenRLHF 0.11.2 field names (trajectory, policy, value, outcome, metadata)."""

    sequences: torch.Tensor = None  # type: ignore[assignment]
    attention_mask: torch.Tensor = None  # type: ignore[assignment]
    action_mask: torch.Tensor = None  # type: ignore[assignment]
    action_log_probs: torch.Tensor = None  # type: ignore[assignment]
    base_action_log_probs: torch.Tensor = None  # type: ignore[assignment]
    rollout_log_probs: torch.Tensor = None  # type: ignore[assignment]
    values: torch.Tensor = None  # type: ignore[assignment]
    returns: torch.Tensor = None  # type: ignore[assignment]
    advantages: torch.Tensor = None  # type: ignore[assignment]
    kl: torch.Tensor = None  # type: ignore[assignment]
    rewards: torch.Tensor = None  # type: ignore[assignment]
    prompts: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class ExperienceMakerStandIn:
    def __init__(self) -> None:
        self.calls = 0

    def make_experience_batch(self, rollout_samples: list) -> list[Experience]:
        self.calls += 1
        out = []
        for i in range(2):  # two micro rollout batches
            g = torch.Generator().manual_seed(10 * self.calls + i)
            seq = torch.randint(6, 16, (2, 9), generator=g)
            action_mask = torch.ones(2, 5, dtype=torch.bool)
            action_mask[1, 3:] = False
            lp = -torch.rand(2, 5, generator=g)
            out.append(Experience(sequences=seq, attention_mask=torch.ones(2, 9), action_mask=action_mask,
                                  action_log_probs=lp, rollout_log_probs=lp - 0.01, base_action_log_probs=lp - 0.1,
                                  advantages=torch.full((2, 5), 0.5), rewards=torch.tensor([1.0, 0.0]),
                                  prompts=["q1", "q2"]))  # fmt: skip
        return out


def test_openrlhf_adapter_records_experiences(tmp_path):
    maker = ExperienceMakerStandIn()
    rec = attach_openrlhf(maker, root=str(tmp_path), run_name="orl", control_tokens=CONTROLS, capture="all")
    batches = [maker.make_experience_batch([]) for _ in range(2)]
    rec.close()
    assert rec.failures == {}
    run = open_run(tmp_path / "orl")
    tokens = run.tokens()
    assert sorted(tokens.step.unique()) == [1, 2] and len(tokens) == 2 * 2 * (5 + 3)
    first = batches[0][1]
    t = tokens[(tokens.step == 1) & (tokens.seq == 2)].sort_values("pos")  # micro-batch 2, row 0
    assert t.token_id.tolist() == first.sequences[0, -5:].tolist()
    np.testing.assert_allclose(t.logprob, first.rollout_log_probs[0].numpy(), rtol=2.5e-4)
    np.testing.assert_allclose(t.old_logprob, first.action_log_probs[0].numpy(), rtol=2.5e-4)
    seqs = run.sequences()
    assert len(seqs) == 8 and seqs.prompt.notna().all() and set(seqs.reward) == {0.0, 1.0}
    # OpenRLHF has no entropy here: it stays missing rather than turning into zeros
    assert seqs.entropy_mean.isna().all() and tokens.entropy.isna().all()
    steps = run.steps()
    assert "tokens/entropy_mean" not in steps and (steps["tokens/count"] == 16).all()
