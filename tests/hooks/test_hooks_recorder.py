"""Recorder: plain-loop API round-trips through the run store; capture modes; live alerts; faults."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import collapsewatch.store.writer as writer_mod
from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.hooks import Recorder
from collapsewatch.store.reader import open_run

CONTROLS = {"<tool_call>": 3, "</tool_call>": 4, "<|im_end|>": 5}
VOCAB = 12


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 8, VOCAB, generator=g) * 2
    ids = torch.randint(6, VOCAB, (4, 8), generator=g)
    ids[0, :5] = torch.tensor([3, 7, 8, 4, 5])  # a tool call in rollout 0
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[3, 5:] = 0
    return logits, ids, mask


def run_loop(rec: Recorder, steps: int = 2) -> None:
    for step in range(1, steps + 1):
        logits, ids, mask = batch(step)
        rec.log_rollout(step, completion_ids=ids, completion_mask=mask, rewards=[1.0, 0.0, 0.5, 0.0],
                        advantages=[1.0, -1.0, 0.2, -0.2], group_ids=[0, 0, 1, 1], texts=list("abcd"),
                        reward_components={"format": [1, 0, 1, 0]})  # fmt: skip
        rec.log_logits(step, logits, ids, mask)
        rec.log_scalars(step, {"reward/mean": 0.375, "loss": torch.tensor(0.5)})
        rec.end_step(step)


def test_capture_all_round_trip(tmp_path):
    with Recorder(tmp_path, "all", control_tokens=CONTROLS, capture="all", live_detectors=False) as rec:
        run_loop(rec)
    run = open_run(tmp_path / "all")
    assert run.status == "finished" and run.meta["capture"] == "all"
    assert run.control_tokens == list(CONTROLS)
    tokens = run.tokens()
    assert len(tokens) == 2 * (4 * 8 - 3)  # every completion token, padding excluded
    logits, ids, mask = batch(1)
    ref = torch.log_softmax(logits.double(), -1)
    t1 = tokens[tokens.step == 1].sort_values(["seq", "pos"])
    ref_lp = ref.gather(-1, ids.unsqueeze(-1)).squeeze(-1)[mask.bool()].numpy()
    np.testing.assert_allclose(t1.logprob.to_numpy(), ref_lp, rtol=2.5e-4)  # 12 mantissa bits
    p_end = ref[..., 5].exp()[mask.bool()].numpy()
    np.testing.assert_allclose(t1["p(<|im_end|>)"].to_numpy(), p_end, rtol=0.05)  # 1/8-bit quantisation
    ctrl_rows = t1[t1.is_control]
    assert set(ctrl_rows.token_id) <= {3, 4, 5} and len(ctrl_rows) >= 3
    assert ctrl_rows.top_ids.map(len).eq(5).all() and t1[~t1.is_control].top_ids.isna().all()
    steps = run.steps().set_index("step")
    assert steps.loc[1, "reward/mean"] == 0.375 and steps.loc[1, "loss"] == 0.5
    assert steps.loc[1, "tokens/count"] == 29
    assert steps.loc[1, "tokens/entropy_mean"] == pytest.approx(t1.entropy.mean(), rel=1e-3)
    assert steps.loc[1, "ctrl/<tool_call>/turn_start/count"] == 4
    assert steps.loc[1, "ctrl/<|im_end|>/after_close_tag/count"] == 1
    seqs = run.sequences().sort_values(["step", "seq"])
    assert list(seqs.completion_len[:4]) == [8, 8, 8, 5]
    assert list(seqs["sample"][:4]) == [0, 1, 0, 1]
    assert seqs.reward_components.iloc[0] in ({"format": 1.0}, [("format", 1.0)])
    lp_sum = t1.groupby("seq").logprob.sum().to_numpy()
    np.testing.assert_allclose(seqs.logprob_sum[:4].to_numpy(), lp_sum, rtol=1e-3)


def test_capture_control_keeps_control_and_sampled_rows(tmp_path):
    with Recorder(tmp_path, "ctl", control_tokens=CONTROLS, sample_rollouts=1, unexpected_threshold=0.2,
                  live_detectors=False) as rec:  # fmt: skip
        run_loop(rec, steps=1)
    tokens = open_run(tmp_path / "ctl").tokens()
    logits, ids, mask = batch(1)
    p = torch.softmax(logits.double(), -1)[..., [3, 4, 5]]
    unexpected = (p * (ids.unsqueeze(-1) != torch.tensor([3, 4, 5]))).amax(-1)
    keep = mask.bool() & ((ids == 3) | (ids == 4) | (ids == 5) | (unexpected > 0.2))
    keep[0] = mask[0].bool()  # the first rollout is kept whole
    got = set(zip(tokens.seq, tokens.pos, strict=True))
    want = {(int(b), int(t)) for b, t in keep.nonzero().tolist()}
    assert got == want and len(got) < mask.sum()


def test_multi_token_control_string_recorded_in_run_json(tmp_path):
    from collapsewatch.hooks.tiny_models import chatml_tokenizer

    tok = chatml_tokenizer()
    with pytest.warns(RuntimeWarning, match="is .* tokens"):
        rec = Recorder(tmp_path, "multi", tokenizer=tok, control_tokens=["<|im_end|>", "<function=call>"])
    rec.close()
    meta = open_run(tmp_path / "multi").meta
    assert meta["control_tokens"][1]["multi_token"] is True
    assert any("<function=call>" in w for w in meta["control_token_warnings"])


class CriticalOnStep2:
    """Stands in for a detector that pages on step 2 (the real LiveMonitor is tested by diagnostics)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict, object]] = []

    def update(self, step, scalars, sequences):  # type: ignore[no-untyped-def]
        self.calls.append((step, dict(scalars), sequences))
        if step == 2:
            return [
                Alert(step, "control_spike", "critical", "P(<tool_call>) spiked", 0.9, 0.01, {"seqs": [0]})
            ]
        return []


def test_detector_settings_reach_the_live_monitor_and_bad_ones_fail_early(tmp_path):
    gate = {"signal_mixed_max": 0.6, "verdict_requires_if_seen": ("signal",)}
    with Recorder(tmp_path, "gated", control_tokens=CONTROLS, detectors=gate) as rec:
        assert rec.monitor is not None
        assert rec.monitor.config.signal_mixed_max == 0.6
        assert rec.monitor.config.verdict_requires_if_seen == ("signal",)
    with pytest.raises(ValueError, match="signal_mixed"):
        Recorder(tmp_path, "typo", control_tokens=CONTROLS, detectors={"signal_mixed": 0.6})
    assert not (tmp_path / "typo").exists()  # nothing written for a Recorder that was never built


def test_live_monitor_alerts_and_stop_on(tmp_path):
    rec = Recorder(tmp_path, "live", control_tokens=CONTROLS, stop_on="critical", live_async=False)
    assert rec.monitor is not None  # the real LiveMonitor is importable and wired in
    rec.monitor = CriticalOnStep2()
    run_loop(rec, steps=1)
    assert not rec.should_stop
    run_loop_step = 2
    logits, ids, mask = batch(run_loop_step)
    rec.log_logits(run_loop_step, logits, ids, mask)
    rec.end_step(run_loop_step)
    assert rec.should_stop
    step, scalars, sequences = rec.monitor.calls[0]
    # the monitor gets plain columns, no DataFrame
    assert step == 1 and "ctrl/<tool_call>/turn_start/p99" in scalars and len(sequences["seq"]) == 4
    rec.close()
    alerts = open_run(tmp_path / "live").alerts()
    assert list(alerts.detector) == ["control_spike"] and alerts.source.iloc[0] == "live"


def test_real_live_monitor_runs_every_step(tmp_path):
    with Recorder(tmp_path, "real", control_tokens=CONTROLS) as rec:  # detectors on a background thread
        run_loop(rec, steps=3)
    assert rec.monitor.steps_seen == 3
    assert not rec.failures


def test_hook_failure_is_counted_and_warned_once(tmp_path):
    rec = Recorder(tmp_path, "fail", control_tokens=CONTROLS, live_detectors=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2, 3):
            rec.log_logits(step, torch.randn(2, 3, VOCAB), torch.zeros(5, 7, dtype=torch.long))  # bad shapes
    assert rec.failures["log_logits"] == 3
    assert sum("log_logits failed" in str(w.message) for w in caught) == 1
    run_loop(rec, steps=1)  # still works afterwards
    rec.close()
    meta = open_run(tmp_path / "fail").meta
    assert meta["failures"]["log_logits"] == 3


def test_write_error_turns_capture_off(tmp_path, monkeypatch):
    rec = Recorder(tmp_path, "disk", control_tokens=CONTROLS, live_detectors=False)
    run_loop(rec, steps=1)

    def disk_full(table, path):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_mod, "parquet_write", disk_full)
    with pytest.warns(RuntimeWarning, match="capture is off"):
        logits, ids, mask = batch(2)
        rec.log_logits(2, logits, ids, mask)
        rec.end_step(2)
        rec.writer.flush_step(2)
        for _ in range(200):
            if not rec.enabled:
                break
            torch.ones(1).add_(1)
            import time

            time.sleep(0.01)
    assert not rec.enabled
    rec.log_logits(3, logits, ids, mask)  # a no-op now, and no exception
    rec.close()
    monkeypatch.undo()
    hb = open_run(tmp_path / "disk").heartbeats()[0]
    assert hb["capture_enabled"] is False and hb["failures"]["write_error"] >= 1


def test_unwritable_root_disables_capture_without_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="cannot create the run"):
        rec = Recorder(blocker, "x", control_tokens=CONTROLS)
    assert not rec.enabled
    logits, ids, mask = batch(1)
    rec.log_logits(1, logits, ids, mask)
    rec.close()


def test_top_alternatives_for_many_control_positions(tmp_path):
    """More control positions than one top-k call takes: rows are chunked, results stay aligned."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 300, VOCAB, generator=g)
    ids = torch.full((2, 300), 5)  # <|im_end|> sampled everywhere: 600 control positions
    with Recorder(tmp_path, "topk", control_tokens=CONTROLS, capture="all", live_detectors=False) as rec:
        rec.log_logits(1, logits, ids)
    tokens = open_run(tmp_path / "topk").tokens().sort_values(["seq", "pos"])
    ref = torch.log_softmax(logits.double(), -1).topk(5, dim=-1)
    assert len(tokens) == 600
    got_ids = np.stack(tokens.top_ids.to_numpy())
    np.testing.assert_array_equal(got_ids, ref.indices.reshape(600, 5).numpy())
    np.testing.assert_allclose(
        np.stack(tokens.top_logprobs.to_numpy()), ref.values.reshape(600, 5).numpy(), rtol=1e-5
    )


def test_diverged_logits_are_recorded_not_counted_as_a_failure(tmp_path):
    """NaN logits (a diverged update) are what the run must show: the capture records the step's rows
    and its non-finite statistics instead of failing (on an H200 it once failed in the histogram)."""
    with Recorder(tmp_path, "nan", control_tokens=CONTROLS, capture="all", live_detectors=False) as rec:
        logits, ids, mask = batch(1)
        logits[1] = float("nan")
        rec.log_logits(1, logits, ids, mask)
        rec.end_step(1)
        assert rec.failures == {}
    run = open_run(tmp_path / "nan")
    tokens = run.tokens()
    assert len(tokens) == 4 * 8 - 3 and tokens[tokens.seq == 1].logprob.isna().all()
    step = run.steps().set_index("step").loc[1]
    assert np.isnan(step["ctrl/<|im_end|>/other/mean"])  # NaN-skipping would hide the divergence
