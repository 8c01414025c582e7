"""A real TRL GRPOTrainer (tiny local Qwen2, CPU): captured tokens equal what TRL computed and logged."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("trl")

from hooks_trl_helpers import make_trainer  # noqa: E402

from collapsewatch.diagnostics.alerts import Alert  # noqa: E402
from collapsewatch.hooks import attach  # noqa: E402
from collapsewatch.hooks.trl import CANONICAL, trl_scalars  # noqa: E402
from collapsewatch.store.reader import open_run  # noqa: E402


def spy(trainer, reference_logits: bool = False) -> list[dict]:
    """Wrap outside our hooks: record what TRL's training forward returned, per micro-batch."""
    calls: list[dict] = []
    inner_loss, inner_lp = trainer._compute_loss, trainer._get_per_token_logps_and_entropies

    def outer_loss(model, inputs):  # type: ignore[no-untyped-def]
        calls.append({
            "step": trainer.state.global_step + 1,
            "keys": list(zip(inputs["cw_gen"].tolist(), inputs["cw_seq"].tolist(), strict=True)),
            "mask": (inputs["completion_mask"] * inputs.get("tool_mask", 1)).bool(),
            "ids": inputs["completion_ids"],
        })  # fmt: skip
        return inner_loss(model, inputs)

    def outer_lp(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = inner_lp(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if kwargs.get("compute_entropy"):
            calls[-1]["logps"], calls[-1]["entropy"] = out[0].detach(), out[1].detach()
            if reference_logits:
                with torch.no_grad():
                    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                calls[-1]["ref_logp"] = torch.log_softmax(
                    logits[:, -(logits_to_keep + 1) : -1].double() / trainer.temperature, -1
                )
        return out

    trainer._compute_loss, trainer._get_per_token_logps_and_entropies = outer_loss, outer_lp
    return calls


def seq_numbers(calls: list[dict]) -> None:
    """The adapter numbers rollouts per step in order of first appearance; do the same."""
    maps: dict[int, dict] = {}
    for call in calls:
        m = maps.setdefault(call["step"], {})
        call["seqs"] = [m.setdefault(k, len(m)) for k in call["keys"]]


def check_tokens_equal_trl(run, calls, trainer) -> None:
    tokens = run.tokens().set_index(["step", "seq", "pos"]).sort_index()
    seq_numbers(calls)
    for call in calls:
        for b, seq in enumerate(call["seqs"]):
            pos = call["mask"][b].nonzero().squeeze(-1)
            rows = tokens.loc[(call["step"], seq)].loc[pos.tolist()]
            assert not rows.is_tool_output.any()
            assert (rows.token_id.to_numpy() == call["ids"][b, pos].numpy()).all()
            np.testing.assert_allclose(rows.logprob, call["logps"][b, pos].numpy(), rtol=2.5e-4, atol=1e-6)
            np.testing.assert_allclose(rows.entropy, call["entropy"][b, pos].numpy(), rtol=2.5e-4, atol=1e-6)
    # per step: TRL logs the mean over micro-batches of each micro-batch's token-mean entropy
    logged = {h["step"]: h["entropy"] for h in trainer.state.log_history if "entropy" in h}
    steps = run.steps().set_index("step")
    assert set(logged) == set(steps.index)
    for step, trl_entropy in logged.items():
        means = []
        for call in (c for c in calls if c["step"] == step):
            rows = [
                tokens.loc[(step, s)].loc[call["mask"][b].nonzero().squeeze(-1).tolist()]
                for b, s in enumerate(call["seqs"])
            ]
            ent = np.concatenate([r.entropy.to_numpy() for r in rows])
            means.append(ent.mean())
        assert np.mean(means) == pytest.approx(trl_entropy, rel=1e-3)
        assert steps.loc[step, "entropy/mean"] == pytest.approx(trl_entropy, rel=1e-9)
        assert steps.loc[step, "trl/entropy"] == steps.loc[step, "entropy/mean"]


def test_capture_all_equals_trl_logps_and_logged_entropy(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), steps=2, beta=0.04)
    handle = attach(trainer, root=str(tmp_path), run_name="plain", capture="all")
    calls = spy(trainer, reference_logits=True)
    trainer.train()
    assert handle.recorder.failures == {}
    run = open_run(tmp_path / "plain")
    assert run.status == "finished" and run.meta["capture"] == "all"
    check_tokens_equal_trl(run, calls, trainer)
    # control-token probabilities from the LM-head gather match a full softmax of the same forward
    tokens = run.tokens().set_index(["step", "seq", "pos"]).sort_index()
    im_end = trainer.processing_class.convert_tokens_to_ids("<|im_end|>")
    for call in calls:
        for b, seq in enumerate(call["seqs"]):
            pos = call["mask"][b].nonzero().squeeze(-1)
            got = tokens.loc[(call["step"], seq)].loc[pos.tolist()]["p(<|im_end|>)"].to_numpy()
            want = call["ref_logp"][b, pos, im_end].exp().numpy()
            np.testing.assert_allclose(got, want, rtol=0.05, atol=3e-10)  # 1/8-bit quantisation
    seqs = run.sequences()
    assert (
        len(seqs) == 8 and set(seqs.group) == {0} and sorted(seqs["sample"][seqs.step == 1]) == [0, 1, 2, 3]
    )
    assert (
        seqs.reward_components.map(len).eq(2).all()
        and seqs.text.str.contains("<|im_end|>", regex=False).all()
    )
    assert seqs.reward.notna().all() and seqs.advantage.notna().all()
    steps = run.steps().set_index("step")
    for trl_key, name in CANONICAL.items():
        if f"trl/{trl_key}" in steps:
            assert (steps[name] == steps[f"trl/{trl_key}"]).all()
    assert {"reward/mean", "kl/mean", "loss", "grad_norm", "lr", "ctrl/<tool_call>/turn_start/p99"} <= set(
        steps
    )
    assert tokens.ref_logprob.notna().all()


def test_tools_multi_turn_marks_tool_output(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), tools=True, steps=2, max_completion_length=64)
    attach(trainer, root=str(tmp_path), run_name="tools", capture="all")
    calls = spy(trainer)
    trainer.train()
    run = open_run(tmp_path / "tools")
    tokens = run.tokens()
    assert tokens.is_tool_output.any(), "the taught model should have called the tool"
    tool_rows = tokens[tokens.is_tool_output]
    response = trainer.processing_class.convert_tokens_to_ids("<tool_response>")
    assert (tool_rows.token_id == response).any()
    assert (tokens.position_type[~tokens.is_tool_output] == 1).sum() > tokens.query("pos == 0").shape[
        0
    ]  # 2nd turns
    check_tokens_equal_trl(run, calls, trainer)
    seqs = run.sequences()
    assert (seqs.num_tool_calls > 0).any() and (seqs.num_turns >= 2).any()
    assert seqs.turn_texts.map(len).eq(seqs.num_turns).all()


def test_gradient_accumulation_and_num_iterations(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), steps=2, grad_accum=2, num_iterations=2)
    attach(trainer, root=str(tmp_path), run_name="ga", capture="all")
    calls = spy(trainer)
    trainer.train()
    run = open_run(tmp_path / "ga")
    check_tokens_equal_trl(run, calls, trainer)
    assert len(calls) == 4  # 2 steps x 2 micro-batches
    seqs = run.sequences()
    # one generation of 8 rollouts, trained on at steps 1 and 2: same uids, re-logged per step
    assert sorted(seqs.groupby("step").size()) == [8, 8]
    assert set(seqs.uid[seqs.step == 1]) == set(seqs.uid[seqs.step == 2])
    assert seqs.old_logprob_sum.notna().all()  # num_iterations > 1: TRL computes old logps
    tokens = run.tokens()
    a = tokens[tokens.step == 1].set_index(["seq", "pos"]).logprob
    b = tokens[tokens.step == 2].set_index(["seq", "pos"]).logprob
    assert len(a) == len(b)


class CriticalAtOnce:
    def update(self, step, scalars, sequences):  # type: ignore[no-untyped-def]
        return [Alert(step, "control_spike", "critical", "spike", 1.0, 0.0, {})]


def test_resume_from_an_older_checkpoint_shows_each_step_once(tmp_path):
    """TRL's resume_from_checkpoint into the same run: the step trained again after the checkpoint
    replaces the first attempt's rows (kept under superseded/), and run.json keeps its history."""
    out = tmp_path / "out"
    first = make_trainer(str(out), steps=3, save_steps=2)
    attach(first, root=str(tmp_path), run_name="resumed")
    first.train()
    before = open_run(tmp_path / "resumed")
    old_step3 = sorted(before.sequences().query("step == 3")["uid"])
    assert before.last_step == 3 and old_step3
    step3_scalars = len(before.scalars().query("step == 3"))
    shutil.rmtree(out / "checkpoint-3", ignore_errors=True)  # as if it crashed before saving step 3
    second = make_trainer(str(out), steps=3, save_steps=2)
    attach(second, root=str(tmp_path), run_name="resumed")
    second.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert second.state.global_step == 3
    run = open_run(tmp_path / "resumed")
    assert run.meta["started_at"] == before.meta["started_at"]
    assert [(r["from_step"], r["previous_status"]) for r in run.meta["resumes"]] == [(2, "finished")]
    seqs = run.sequences()
    assert seqs.groupby("step").size().to_dict() == {1: 4, 2: 4, 3: 4}  # step 3 once, the new one
    assert len(run.scalars().query("step == 3")) == step3_scalars  # not twice: no replayed twin
    moved = run.path / "superseded" / "after-step-00000002" / "sequences"
    old = pq.read_table(sorted(moved.rglob("*.parquet*"))).to_pandas()
    assert sorted(old["uid"]) == old_step3 and set(old["step"]) == {3}


def test_stop_on_critical_stops_training(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), steps=4)
    handle = attach(trainer, root=str(tmp_path), run_name="stop", stop_on="critical")
    handle.recorder.monitor = CriticalAtOnce()
    trainer.train()
    # detectors run on a background thread: the alert of step 1 stops training at step 1 or 2
    assert trainer.state.global_step in (1, 2)
    run = open_run(tmp_path / "stop")
    assert set(run.alerts().severity) == {"critical"} and run.status == "finished"


def test_stop_on_critical_synchronous_stops_at_once(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), steps=3)
    handle = attach(trainer, root=str(tmp_path), run_name="stop-sync", stop_on="critical", live_async=False)
    handle.recorder.monitor = CriticalAtOnce()
    trainer.train()
    assert trainer.state.global_step == 1


def test_failing_capture_never_stops_training(tmp_path, monkeypatch):
    import collapsewatch.store.writer as writer_mod

    trainer = make_trainer(str(tmp_path / "out"), steps=3)
    handle = attach(trainer, root=str(tmp_path), run_name="faults")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected")

    monkeypatch.setattr(handle, "_control_logprobs", broken)
    original_end = handle.recorder.end_step

    def end_then_fill_disk(step):  # type: ignore[no-untyped-def]
        original_end(step)
        if step == 2:  # from step 3 on, every file write fails
            monkeypatch.setattr(
                writer_mod, "parquet_write", lambda *a: (_ for _ in ()).throw(OSError(28, "disk full"))
            )

    monkeypatch.setattr(handle.recorder, "end_step", end_then_fill_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.state.global_step == 3
    assert handle.recorder.failures["trl_tokens"] >= 2
    assert sum("trl_tokens failed" in str(w.message) for w in caught) == 1
    assert not handle.recorder.enabled


def test_untested_trl_version_warns_once_and_still_captures(tmp_path, monkeypatch):
    import trl

    monkeypatch.setattr(trl, "__version__", "0.19.0")
    trainer = make_trainer(str(tmp_path / "out"), steps=1)
    with pytest.warns(RuntimeWarning, match="outside the tested range"):
        attach(trainer, root=str(tmp_path), run_name="old")
    trainer.train()
    run = open_run(tmp_path / "old")
    assert "trl_warning" in run.meta and len(run.tokens()) > 0


def test_missing_internals_degrade_to_scalars(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), steps=1)
    trainer._calculate_rewards = None  # pretend a TRL release renamed it
    with pytest.warns(RuntimeWarning, match="scalars only"):
        handle = attach(trainer, root=str(tmp_path), run_name="degraded")
    del trainer._calculate_rewards
    assert not handle.full_capture and "_compute_loss" not in trainer.__dict__
    trainer.train()
    run = open_run(tmp_path / "degraded")
    assert run.meta["trl_capture"] == "scalars_only"
    assert "reward/mean" in run.steps() and len(run.tokens()) == 0


def test_paused_steps_capture_nothing(tmp_path):
    from transformers import TrainerCallback

    trainer = make_trainer(str(tmp_path / "out"), steps=3)
    handle = attach(trainer, root=str(tmp_path), run_name="paused", capture="all")

    class PauseStepTwo(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            handle.paused = state.global_step == 1  # the second step

    trainer.add_callback(PauseStepTwo())
    trainer.train()
    run = open_run(tmp_path / "paused")
    assert sorted(run.tokens().step.unique()) == [1, 3]
    assert sorted(run.sequences().step.unique()) == [1, 3] and 2 not in set(run.steps().step)


def test_trl_scalar_names():
    out = trl_scalars(
        {"entropy": 0.5, "reward": 1.0, "kl": 0.1, "learning_rate": 1e-3, "epoch": 0.5, "x": "s"}
    )
    assert (
        out["entropy/mean"] == 0.5
        and out["reward/mean"] == 1.0
        and out["kl/mean"] == 0.1
        and out["lr"] == 1e-3
    )
    assert out["trl/epoch"] == 0.5 and "trl/x" not in out


def _addition_probe(tok):
    from hooks_trl_helpers import TOOL_CALL, add

    from collapsewatch.hooks.probe import ControlProbe

    conversation = [
        {"role": "user", "content": "What is 4 plus 5?"},
        {"role": "assistant", "content": TOOL_CALL.removesuffix("<|im_end|>")},
    ]
    return ControlProbe.from_conversations(tok, [conversation], tools=[add])


def test_probe_is_scored_after_every_optimizer_step(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), tools=True, steps=3)
    probe = _addition_probe(trainer.processing_class)
    attach(trainer, root=str(tmp_path), run_name="probe", probe=probe)
    start = probe.measure(trainer.model)
    trainer.train()
    steps = open_run(tmp_path / "probe").steps()
    logged = steps.set_index("step")["probe/logp/<tool_call>"].dropna()
    assert list(logged.index) == [1, 2, 3]
    assert logged.nunique() == 3 and logged.iloc[0] != start["probe/logp/<tool_call>"]  # weights moved
    # measured after the step's update: the last value is the final model's
    assert logged.iloc[-1] == pytest.approx(probe.measure(trainer.model)["probe/logp/<tool_call>"], abs=1e-6)


def test_probe_every_scores_only_those_steps(tmp_path):
    trainer = make_trainer(str(tmp_path / "out"), tools=True, steps=4)
    probe = _addition_probe(trainer.processing_class)
    with pytest.raises(ValueError, match="probe_every"):
        attach(trainer, root=str(tmp_path), run_name="bad", probe=probe, probe_every=0)
    attach(trainer, root=str(tmp_path), run_name="every2", probe=probe, probe_every=2)
    trainer.train()
    steps = open_run(tmp_path / "every2").steps().set_index("step")
    assert list(steps["probe/logp/<tool_call>"].dropna().index) == [2, 4]
    assert list(steps.index) == [1, 2, 3, 4]  # the other steps are recorded as usual
