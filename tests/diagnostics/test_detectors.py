"""Each detector on constructed series: fires on the anomaly, stays quiet on noise, respects warm-up
and cooldown. Steps are built as (scalars, sequences) the way the Recorder hands them over."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.baseline import inverse_logit
from collapsewatch.diagnostics.behaviour_detectors import (
    BrokenModeGroups,
    LengthCollapse,
    StructuralShift,
    SuccessCollapse,
    ToolCallRateCollapse,
)
from collapsewatch.diagnostics.control_spike import ControlTokenSpike
from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.features import step_features
from collapsewatch.diagnostics.probe_drift import ProbeDrift, ProbeTextDrift
from collapsewatch.diagnostics.success_slide import SuccessSlide
from collapsewatch.diagnostics.training_detectors import (
    ClipSaturation,
    EntropyCollapse,
    LazyLikelihood,
    LearningSignalThin,
    NonFinite,
    OptimizerSpikes,
    SamplerMismatch,
    ZeroAdvantageGroups,
)
from collapsewatch.diagnostics.verdict import CombinedVerdict
from collapsewatch.schema import control_stat_name

CONFIG = MonitorConfig(warmup=20, cooldown=10)
CALL = '<tool_call>{"name": "get", "arguments": {"a": 1}}</tool_call><|im_end|>'
N = 32


def jitter(rng, x, rel=0.1):
    return float(x * math.exp(rel * rng.normal()))


def seqs_frame(rng, **cols) -> pd.DataFrame:
    base = {
        "seq": np.arange(N),
        "uid": [f"u{i}" for i in range(N)],
        "group": np.arange(N) // 4,
        "reward": (rng.random(N) < 0.6).astype(float),
        "completion_len": rng.integers(35, 45, N),
        "finish_reason": ["stop"] * N,
        "num_tool_calls": np.ones(N, dtype=int),
        "turn_texts": [[CALL, "alice has 40."] for _ in range(N)],
    }
    base.update(cols)
    return pd.DataFrame(base)


# step builders: (rng, anomalous) -> (scalars, sequences or None)
def ctrl_step(rng, bad):
    name = control_stat_name("<|im_end|>", "after_open_tag", "mean")
    return {name: jitter(rng, 1e-5, 0.3) * (200 if bad else 1)}, None


def structure_step(rng, bad):
    broken = rng.random(N) < (0.5 if bad else 0.03)
    turns = [["<tool_call><|im_end|>"] if b else [CALL, "alice has 40."] for b in broken]
    return {}, seqs_frame(rng, turn_texts=turns)


BROKEN_TURN = ["<tool_call><|im_end|>"]


def broken_mode_step(rng, bad):
    """3% of rollouts broken at random; when bad, also every rollout of 3 of the 8 groups."""
    broken = rng.random(N) < 0.03
    if bad:
        broken[:12] = True
    turns = [BROKEN_TURN if b else [CALL, "alice has 40."] for b in broken]
    return {}, seqs_frame(rng, turn_texts=turns)


def success_step(rng, bad):
    return {"success/rate": float(np.clip(rng.normal(0.15 if bad else 0.8, 0.04), 0, 1))}, None


def slide_step(rng, bad, entropy_rises=True):
    success = float(np.clip(rng.normal(0.15 if bad else 0.5, 0.04), 0, 1))
    return {
        "success/rate": success,
        "entropy/mean": jitter(rng, 0.12 if bad and entropy_rises else 0.05, 0.05),
    }, None


def slide_on(config: MonitorConfig) -> SuccessSlide:
    """The success slide with rule F's threshold (off by default)."""
    return SuccessSlide(dataclasses.replace(config, slide_success_drop=0.6))


def tool_rate_step(rng, bad):
    return {"tool_calls/per_rollout": jitter(rng, 0.2 if bad else 1.5, 0.05)}, None


def entropy_low_step(rng, bad):
    return {"entropy/mean": jitter(rng, 0.01 if bad else 0.5, 0.05)}, None


def entropy_high_step(rng, bad):
    return {"entropy/mean": jitter(rng, 2.0 if bad else 0.5, 0.05)}, None


def zero_adv_step(rng, bad):
    reward = np.zeros(N) if bad else (rng.random(N) < 0.5).astype(float)
    if not bad:
        reward[::4], reward[1::4] = 1.0, 0.0  # every group mixed
    return {}, seqs_frame(rng, reward=reward)


def clip_step(rng, bad):
    return {"clip/frac": jitter(rng, 0.25 if bad else 0.01, 0.1)}, None


def grad_step(rng, bad):
    return {"grad_norm": jitter(rng, 40.0 if bad else 0.5, 0.1)}, None


def kl_step(rng, bad):
    return {"kl/mean": jitter(rng, 1.0 if bad else 0.01, 0.1)}, None


def loss_step(rng, bad):
    return {"loss": float(rng.normal(0.0, 0.01)) + (5.0 if bad else 0.0)}, None


def nonfinite_step(rng, bad):
    return {"loss": math.nan if bad else float(rng.normal(0, 0.01)), "grad_norm": 0.5}, None


def length_step(rng, bad):
    return {"length/mean": jitter(rng, 4.0 if bad else 40.0, 0.05)}, None


def truncation_step(rng, bad):
    return {"length/truncated_frac": float(np.clip(rng.normal(0.7 if bad else 0.02, 0.01), 0, 1))}, None


def repetition_step(rng, bad):
    text = "alice alice has has 40 " * 20 if bad else "alice has 40 coins and bob has 12 coins now."
    return {}, seqs_frame(rng, text=[text] * N)


def lazy_step(rng, bad):
    adv = np.where(np.arange(N) % 2 == 0, 1.0, -1.0)
    before = -rng.uniform(20, 30, N)
    after = before + (rng.normal(-2.0, 0.5, N) if bad else rng.normal(1.0, 0.5, N))
    return {}, seqs_frame(rng, advantage=adv, logprob_sum=before, logprob_sum_after=after)


def mismatch_step(rng, bad):
    before = -rng.uniform(20, 30, N)
    old = before + rng.normal(0, 8.0 if bad else 0.05, N)
    return {}, seqs_frame(rng, logprob_sum=before, old_logprob_sum=old)


def probe_step(rng, bad):
    # the probe is noise-free, but the weights it reads drift a little every step
    cost = jitter(rng, 2.5e-4, 0.15) * (100 if bad else 1)
    return {"probe/logp/</tool_call>": -cost, "probe/logp/<tool_call>": -jitter(rng, 2.5e-4, 0.15)}, None


def probe_text_step(rng, bad):
    # the expert's ordinary tokens: ~0.8 nats each, a few percent of drift from step to step
    return {"probe/logp_text": -jitter(rng, 0.8, 0.05) * (3 if bad else 1)}, None


DETECTORS = [
    (ControlTokenSpike, ctrl_step, "control_spike"),
    (ProbeDrift, probe_step, "probe_drift"),
    (ProbeTextDrift, probe_text_step, "probe_text_drift"),
    (StructuralShift, structure_step, "structural_shift"),
    (BrokenModeGroups, broken_mode_step, "broken_mode_groups"),
    (SuccessCollapse, success_step, "success_collapse"),
    (slide_on, slide_step, "success_slide"),
    (ToolCallRateCollapse, tool_rate_step, "tool_call_rate"),
    (EntropyCollapse, entropy_low_step, "entropy_collapse"),
    (EntropyCollapse, entropy_high_step, "entropy_spike"),
    (ZeroAdvantageGroups, zero_adv_step, "zero_advantage"),
    (ClipSaturation, clip_step, "clip"),
    (OptimizerSpikes, grad_step, "grad_norm_spike"),
    (OptimizerSpikes, kl_step, "kl_spike"),
    (OptimizerSpikes, loss_step, "loss_spike"),
    (NonFinite, nonfinite_step, "non_finite"),
    (LengthCollapse, length_step, "length_collapse"),
    (LengthCollapse, truncation_step, "truncation"),
    (LengthCollapse, repetition_step, "repetition"),
    (LazyLikelihood, lazy_step, "lazy_likelihood"),
    (SamplerMismatch, mismatch_step, "sampler_mismatch"),
]
IDS = [d[2] for d in DETECTORS]


def run_detector(cls, builder, bad_steps, n_steps=80, seed=0):
    rng = np.random.default_rng(seed)
    det = cls(CONFIG)
    alerts = []
    for step in range(n_steps):
        scalars, seqs = builder(rng, step in bad_steps)
        alerts += det.update(step_features(step, scalars, seqs))
    return alerts


@pytest.mark.parametrize(("cls", "builder", "name"), DETECTORS, ids=IDS)
def test_stays_quiet_on_noise(cls, builder, name):
    for seed in range(3):
        alerts = [a for a in run_detector(cls, builder, set(), seed=seed) if a.rank >= 1]
        assert alerts == [], [a.message for a in alerts]


@pytest.mark.parametrize(("cls", "builder", "name"), DETECTORS, ids=IDS)
def test_fires_soon_after_the_anomaly(cls, builder, name):
    alerts = run_detector(cls, builder, set(range(40, 80)))
    mine = [a for a in alerts if a.detector == name]
    assert mine, f"{name} did not fire"
    first = mine[0]
    assert 40 <= first.step <= 46
    assert first.severity in ("warning", "critical")
    assert first.message and "fix" in first.message.lower()
    assert first.evidence["step"] == first.step
    assert first.family


@pytest.mark.parametrize(("cls", "builder", "name"), DETECTORS, ids=IDS)
def test_respects_warmup(cls, builder, name):
    if cls is NonFinite:
        pytest.skip("non-finite values are critical at once, warm-up or not")
    alerts = run_detector(cls, builder, set(range(5, 10)))
    assert [a for a in alerts if a.rank >= 1] == []


@pytest.mark.parametrize(("cls", "builder", "name"), DETECTORS, ids=IDS)
def test_respects_cooldown(cls, builder, name):
    alerts = [a for a in run_detector(cls, builder, set(range(40, 80))) if a.detector == name]
    steps = [a.step for a in alerts]
    assert all(b - a >= CONFIG.cooldown for a, b in zip(steps, steps[1:], strict=False)), steps
    assert len(steps) <= 4


def test_a_lasting_condition_alerts_once_per_episode_and_stays_active():
    """Success under its peak for 40 steps is one warning, not four; the detector reports the
    condition as active on every one of those steps (the verdict reads that); after a quiet gap
    longer than the cooldown, a new slide alerts again."""
    det = SuccessCollapse(CONFIG)
    rng = np.random.default_rng(0)
    alerts, active = [], []
    for step in range(120):
        low = 40 <= step < 80 or step >= 100
        rate = (0.25 if low else 0.6) + 0.02 * rng.normal()
        alerts += det.update(step_features(step, {"success/rate": rate}, None))
        active.append(det.active_step == step)
    steps = [a.step for a in alerts]
    assert len(steps) == 2, steps
    assert 40 <= steps[0] <= 46 and 100 <= steps[1] <= 106
    assert all(active[steps[0] : 80]) and not any(active[85:100])


def test_control_spike_series_moving_together_alert_once_not_one_by_one():
    """Three series jump together and stay up: one alert naming the strongest, the others listed in
    it, and no further alert per series on the following steps."""
    rng = np.random.default_rng(2)
    det = ControlTokenSpike(CONFIG)
    series = [
        ("<|im_end|>", "after_open_tag"),
        ("</tool_call>", "turn_start"),
        ("<tool_call>", "after_open_tag"),
    ]
    alerts = []
    for step in range(70):
        scalars = {
            control_stat_name(tok, pos, "mean"): jitter(rng, 1e-5, 0.3) * (fold if step >= 40 else 1)
            for (tok, pos), fold in zip(series, (300, 100, 50), strict=True)
        }
        alerts += det.update(step_features(step, scalars, None))
    assert len(alerts) == 1, [(a.step, a.evidence["token"]) for a in alerts]
    assert alerts[0].evidence["token"] == "<|im_end|>" and len(alerts[0].evidence["moving"]) == 3


def test_single_step_control_blip_is_not_an_alert():
    alerts = run_detector(ControlTokenSpike, ctrl_step, {50})
    assert alerts == []


def test_control_spike_names_token_position_and_rollouts():
    rng = np.random.default_rng(1)
    det = ControlTokenSpike(CONFIG, control_tokens=["<|im_end|>"])
    alerts = []
    for step in range(60):
        scalars, _ = ctrl_step(rng, step >= 40)
        seqs = seqs_frame(rng, control_unexpected_max=np.linspace(0, 0.9, N))
        alerts += det.update(step_features(step, scalars, seqs))
    a = alerts[0]
    assert a.evidence["token"] == "<|im_end|>" and a.evidence["position_type"] == "after_open_tag"
    assert a.evidence["rollouts"][0] == f"u{N - 1}"  # the rollout with the highest unexpected probability
    assert a.value > 50 * a.baseline


def test_control_spike_pages_alone_only_when_the_grammar_moves_together():
    paging = MonitorConfig(warmup=20, cooldown=10, ctrl_page_series=2)  # opt-in; off by default

    def run(series_moving, config=paging):
        rng = np.random.default_rng(4)
        det, alerts = ControlTokenSpike(config), []
        positions = ["after_open_tag", "turn_start", "in_call"]
        for step in range(60):
            scalars = {
                control_stat_name("<|im_end|>", pos, "mean"): jitter(rng, 1e-5, 0.3)
                * (200 if step >= 40 and k < series_moving else 1)
                for k, pos in enumerate(positions)
            }
            alerts += det.update(step_features(step, scalars, None))
        return alerts

    one, two = run(1), run(2)
    assert one and {a.severity for a in one} == {"warning"}  # one token at one position: a warning
    assert two[0].severity == "critical" and two[0].evidence["series_moving"] == 2
    assert "grammar itself is shifting" in two[0].message
    assert not any(a.severity == "critical" for a in run(0))
    assert not any(
        a.severity == "critical" for a in run(2, CONFIG)
    )  # the default leaves paging to the verdict


def test_control_spike_ignores_tokens_it_was_not_told_about():
    rng = np.random.default_rng(2)
    det = ControlTokenSpike(CONFIG, control_tokens=["<tool_call>"])
    alerts = []
    for step in range(60):
        scalars, _ = ctrl_step(rng, step >= 40)
        alerts += det.update(step_features(step, scalars, None))
    assert alerts == []


def test_zero_advantage_all_correct_is_only_info():
    rng = np.random.default_rng(3)
    det = ZeroAdvantageGroups(CONFIG)
    alerts = []
    for step in range(60):
        reward = np.ones(N) if step >= 40 else np.tile([1.0, 0.0, 1.0, 0.0], N // 4)
        alerts += det.update(step_features(step, {}, seqs_frame(rng, reward=reward)))
    assert alerts and all(a.severity == "info" for a in alerts)
    assert "all-correct" in alerts[0].message


def _signal_run(det, thin_from, steps=60, seed=4):
    """Groups of 4 that all have a reward spread, until `thin_from`, after which every group fails."""
    rng = np.random.default_rng(seed)
    alerts = []
    for step in range(steps):
        alerts += det.update(step_features(step, {}, zero_adv_step(rng, step >= thin_from)[1]))
    return alerts


def test_learning_signal_is_off_by_default_and_holds_only_when_the_groups_thin():
    off = LearningSignalThin(CONFIG)
    assert _signal_run(off, thin_from=40) == [] and off.seen == 0  # no data: the gate cannot block

    on = LearningSignalThin(dataclasses.replace(CONFIG, signal_mixed_max=0.6))
    alerts = _signal_run(on, thin_from=40)
    # the mean over 3 steps first reaches 1/3 mixed at step 41; one info alert for the episode
    assert [a.step for a in alerts] == [41] and alerts[0].severity == "info"
    assert alerts[0].detector == "learning_signal" and alerts[0].family == "signal"
    assert on.active["learning_signal"] == 59  # the gate keeps holding after the alert

    early = LearningSignalThin(dataclasses.replace(CONFIG, signal_mixed_max=0.6))
    assert [a.step for a in _signal_run(early, thin_from=0)] == [CONFIG.warmup]  # quiet in the warm-up


def _answers_run(config, steps=60, from_step=40, seed=5):
    """Healthy runs (one call, then an answer) until `from_step`; after it, half the rollouts answer
    at once without calling the tool: nothing broken, but fewer healthy tool calls."""
    rng = np.random.default_rng(seed)
    det, alerts = StructuralShift(config), []
    for step in range(steps):
        skip = rng.random(N) < (0.5 if step >= from_step else 0.02)
        turns = [["alice has 40."] if s else [CALL, "alice has 40."] for s in skip]
        alerts += det.update(step_features(step, {}, seqs_frame(rng, turn_texts=turns)))
    return alerts


def test_structure_on_lost_tool_calls_sees_a_policy_that_stops_calling_the_tool():
    """Round 21's collapses ended in plain answers: the broken-turn share never moves on such a run,
    the share of turns that are not healthy tool calls does (structure_measure="not_tool_call")."""
    assert _answers_run(CONFIG) == []
    lost = dataclasses.replace(CONFIG, structure_measure="not_tool_call")
    alerts = _answers_run(lost)
    assert alerts and 40 <= alerts[0].step <= 50  # the CUSUM adds up over a few steps
    assert "not healthy tool calls" in alerts[0].message and "plain answers" in alerts[0].message
    assert alerts[0].evidence["measure"] == "not_tool_call"
    with pytest.raises(ValueError, match="structure_measure"):
        MonitorConfig.from_any({"structure_measure": "tool_calls"})


def _broken_share_run(shares, seed=0, config=CONFIG, scalars=None):
    """StructuralShift over steps whose broken-turn share is drawn around `shares[step]`; every step
    logs `scalars` besides."""
    rng = np.random.default_rng(seed)
    det, alerts = StructuralShift(config), []
    for step, share in enumerate(shares):
        broken = rng.random(N) < share
        turns = [["<tool_call><|im_end|>"] if b else [CALL, "alice has 40."] for b in broken]
        alerts += det.update(step_features(step, dict(scalars or {}), seqs_frame(rng, turn_texts=turns)))
    return alerts


def test_structural_shift_keeps_the_rise_it_compares():
    """`rise` (read by benchmarks/structure_rise_plot.py) is the step's broken share minus the frozen
    warm-up level, and NaN on the steps nothing is compared (the warm-up)."""
    rng = np.random.default_rng(0)
    det = StructuralShift(CONFIG)
    for step in range(CONFIG.warmup + 1):
        broken = np.arange(N) < (0.3 * N if step == CONFIG.warmup else 0)
        turns = [["<tool_call><|im_end|>"] if b else [CALL, "alice has 40."] for b in broken]
        f = step_features(step, {}, seqs_frame(rng, turn_texts=turns))
        det.update(f)
        if step < CONFIG.warmup:
            assert math.isnan(det.rise)
    assert det.rise == pytest.approx(f.get("state/broken_turns") - inverse_logit(det.base.center))
    assert det.rise > 0.1  # the jump, not the warm-up


def test_structural_shift_adds_up_a_slow_ramp():
    # 5% broken turns, then a rise of ~1.5 points a step from step 30: no single step stands out
    # much, but the rise lasts (the bundled trainer's collapsing runs look like this)
    ramp = [0.05] * 30 + [0.05 + 0.015 * k for k in range(1, 31)]
    alerts = _broken_share_run(ramp)
    fired = [a.step for a in alerts if a.detector == "structural_shift"]
    assert fired and 36 <= fired[0] <= 48, fired
    assert "CUSUM" in alerts[0].message


def test_structural_shift_ignores_a_one_step_burst_and_binomial_noise():
    burst = [0.05] * 40 + [0.3] + [0.05] * 39
    for seed in range(3):
        assert _broken_share_run(burst, seed) == []
        assert _broken_share_run([0.1] * 80, seed) == []


def test_structural_shift_persistence_skips_a_repaired_excursion_but_not_a_lasting_rise():
    # a supervised run's excursion: broken turns creep up, jump for one step, and are repaired
    excursion = [0.03] * 30 + [0.15] * 5 + [0.45] + [0.05] * 44
    lasting = [0.03] * 30 + [0.15] * 5 + [0.45] * 45
    persist = dataclasses.replace(CONFIG, structure_persist_k=2, structure_persist_n=3)
    for seed in range(3):
        once = [a.step for a in _broken_share_run(excursion, seed)]
        assert once and once[0] == 35, once  # the default fires on the step the share jumps
        assert _broken_share_run(excursion, seed, persist) == []
        kept = [a.step for a in _broken_share_run(lasting, seed, persist)]
        assert kept and kept[0] == 36, kept  # a lasting rise is held back one step


def test_structural_shift_waits_longer_only_in_a_run_that_logs_an_sft_loss():
    """Rule S (round 24): SFT repairs a format excursion within a few steps, so in an SFT-supervised
    run the shift must hold on 4 of 4 steps; a run without an SFT loss is judged as before."""
    repaired = [0.03] * 30 + [0.6] * 3 + [0.05] * 47  # SFT repairs the excursion within 3 steps
    lasting = [0.03] * 30 + [0.6] * 50
    rule_s = dataclasses.replace(CONFIG, sft_structure_persist_k=4, sft_structure_persist_n=4)
    sft = {"sft/joint_loss": 0.03}
    for seed in range(3):
        first = [a.step for a in _broken_share_run(lasting, seed)][0]  # the default's step
        assert [a.step for a in _broken_share_run(repaired, seed, rule_s)][:1] == [first]  # no SFT: as before
        assert _broken_share_run(repaired, seed, rule_s, sft) == []
        assert [a.step for a in _broken_share_run(repaired, seed, CONFIG, sft)][:1] == [
            first
        ]  # off by default
        held = _broken_share_run(lasting, seed, rule_s, {"sft/erroneous_loss": 0.05})
        assert [a.step for a in held][:1] == [first + 3], held  # the fourth step of the shift
        assert "4 of the last 4 steps despite the run's SFT" in held[0].message
        # a scalar that merely starts with sft/ is not a loss
        other = _broken_share_run(lasting, seed, rule_s, {"sft/erroneous_tasks": 3.0})
        assert [a.step for a in other][:1] == [first]


def test_sft_persistence_setting_is_checked():
    with pytest.raises(ValueError, match="sft_structure_persist"):
        MonitorConfig(sft_structure_persist_k=5, sft_structure_persist_n=4)
    with pytest.raises(ValueError, match="sft_structure_persist"):
        MonitorConfig(sft_structure_persist_k=2)


def _warning(step, family):
    """A warning of `family` at `step`, as the verdict receives detectors' alerts."""
    return Alert(step=step, detector=family, severity="warning", message="m", family=family)


def test_verdict_pages_only_when_the_format_itself_breaks():
    """Control tokens and task success moving together without broken turns is format stress that
    supervised runs repair (docs/detection.md); the page waits for the structural shift."""
    families = {"control", "outcome", "structure", "optimization"}
    verdict = CombinedVerdict(MonitorConfig())
    assert (
        verdict.update(
            30, [_warning(30, "control"), _warning(30, "outcome"), _warning(30, "optimization")], families
        )
        == []
    )
    page = verdict.update(32, [_warning(32, "structure")], families)
    assert page and page[0].severity == "critical"
    assert set(page[0].evidence["families"]) == {"control", "outcome", "structure", "optimization"}
    loose = CombinedVerdict(MonitorConfig(verdict_requires=()))
    assert loose.update(30, [_warning(30, "control"), _warning(30, "outcome")], families)


def test_verdict_pages_once_per_episode():
    """A condition that stands is one page, however long it stands (round 35's s347 re-paged every
    20 steps over 80 before this rule); once it has lapsed for `verdict_cooldown` steps, a new
    episode pages again."""
    families = {"control", "structure"}
    both = {"spike": "control", "structural_shift": "structure"}
    # a window of 1 step: the condition holds exactly on the steps both families do
    verdict = CombinedVerdict(MonitorConfig(verdict_cooldown=20, verdict_window=1))
    pages = [step for step in range(30, 90) if verdict.update(step, [], families, both)]
    assert pages == [30]
    for step in range(90, 108):
        assert verdict.update(step, [], families, {}) == []
    assert verdict.update(108, [], families, both) == []  # 19 steps since it last held: the same episode
    for step in range(109, 128):
        assert verdict.update(step, [], families, {}) == []
    assert verdict.update(128, [], families, both)  # 20 steps since: a new episode


def test_verdict_remembers_that_the_run_logged_an_sft_loss():
    """A run that logged an SFT loss once (interleaved SFT may log it only on some steps) is
    SFT-supervised from then on: its page asks for patience first."""
    families = {"control", "structure"}
    verdict = CombinedVerdict(MonitorConfig())
    assert verdict.update(10, [], families, sft_logged=True) == []
    page = verdict.update(30, [_warning(30, "control"), _warning(30, "structure")], families)
    assert page and page[0].evidence["sft_supervised"] is True
    assert "logs an SFT loss" in page[0].message and "Act now" not in page[0].message


def test_verdict_requires_text_drift_only_in_runs_with_a_probe():
    """With the gate on (round 15's default, an option since round 16), structure plus control tokens is not enough
    in a run with a reference probe: the expert's text must have drifted too. A run without the
    probe's text series is judged by structure and any other family, as before."""
    gated = MonitorConfig(verdict_requires_if_seen=("drift",))
    probed = CombinedVerdict(gated)
    with_probe = {"control", "structure", "probe", "drift"}
    assert (
        probed.update(
            30, [_warning(30, "control"), _warning(30, "structure"), _warning(30, "probe")], with_probe
        )
        == []
    )
    page = probed.update(31, [_warning(31, "structure"), _warning(31, "drift")], with_probe)
    assert page and set(page[0].evidence["families"]) == {"control", "drift", "probe", "structure"}

    unprobed = CombinedVerdict(gated)
    page = unprobed.update(30, [_warning(30, "control"), _warning(30, "structure")], {"control", "structure"})
    assert page and set(page[0].evidence["families"]) == {"control", "structure"}
    assert MonitorConfig().verdict_requires_if_seen == ()  # round 7's rule, the default again since round 16
    ungated = CombinedVerdict(MonitorConfig())
    assert ungated.update(30, [_warning(30, "control"), _warning(30, "structure")], with_probe)


def test_verdict_signal_gate_blocks_until_the_groups_thin_and_never_counts_as_a_family():
    """The learning-signal gate (item 22 of docs/detection.md): with groups still mixed, structure and
    control tokens do not page; once the signal holds thin they do, and the gate is not one of the
    agreeing families (structure plus the gate alone is one family, not two)."""
    gated = MonitorConfig(signal_mixed_max=0.6, verdict_requires_if_seen=("signal",))
    seen = {"control", "structure", "signal"}
    mixed = CombinedVerdict(gated)
    assert mixed.update(30, [_warning(30, "control"), _warning(30, "structure")], seen) == []
    verdict = CombinedVerdict(gated)
    assert (
        verdict.update(
            30, [_warning(30, "structure")], seen, active={"structure": "structure", "signal": "signal"}
        )
        == []
    )
    page = verdict.update(
        31,
        [_warning(31, "control")],
        seen,
        active={"control": "control", "structure": "structure", "signal": "signal"},
    )
    assert page and page[0].evidence["families"] == ["control", "structure"]
    assert "gate: thin reward spread" in page[0].message

    no_groups = CombinedVerdict(gated)  # a run without group ids is judged without the gate
    assert no_groups.update(
        30, [_warning(30, "control"), _warning(30, "structure")], {"control", "structure"}
    )


def test_verdict_counts_a_family_while_its_condition_holds():
    """A success slide that alerted at step 20 and still holds at 28 agrees with a structural shift
    at 28: its one alert is 8 steps old, but the condition is active (one alert per episode)."""
    families = {"outcome", "structure"}
    sliding = {"success_collapse": "outcome"}
    verdict = CombinedVerdict(MonitorConfig())
    assert verdict.update(20, [_warning(20, "outcome")], families, sliding) == []
    for step in range(21, 28):
        assert verdict.update(step, [], families, sliding) == []
    page = verdict.update(
        28, [_warning(28, "structure")], families, {**sliding, "structural_shift": "structure"}
    )
    assert page and set(page[0].evidence["families"]) == {"outcome", "structure"}
    assert {"step": 28, "detector": "success_collapse", "family": "outcome"} in page[0].evidence["detectors"]
    alerts_only = CombinedVerdict(MonitorConfig())  # counting alerts alone, the slide is stale by 28
    alerts_only.update(20, [_warning(20, "outcome")], families)
    assert alerts_only.update(28, [_warning(28, "structure")], families) == []


def _slide_run(detector, entropy_rises=True, scalars=None, seed=0):
    rng = np.random.default_rng(seed)
    alerts = []
    for step in range(80):
        row, _ = slide_step(rng, step >= 40, entropy_rises)
        alerts += detector.update(step_features(step, {**row, **(scalars or {})}, None))
    return alerts


def test_success_slide_needs_rising_entropy_and_stays_out_of_sft_runs():
    """Rule F (docs/detection.md, item 27): success falling alone is what supervised runs that hold
    do too; the slide needs the entropy up as well, is off by default, and is not evaluated once
    the run logs an SFT loss (rule S's patience applies there)."""
    for seed in range(3):
        fired = _slide_run(slide_on(CONFIG), seed=seed)
        assert [a.detector for a in fired] == ["success_slide"] and 41 <= fired[0].step <= 46
        assert fired[0].family == "slide" and "warm-up mean" in fired[0].message
        assert fired[0].evidence["entropy"] > 1.5 * fired[0].evidence["entropy_warmup"]
        assert _slide_run(slide_on(CONFIG), entropy_rises=False, seed=seed) == []
        assert _slide_run(slide_on(CONFIG), scalars={"sft/joint_loss": 0.1}, seed=seed) == []
        off = SuccessSlide(CONFIG)
        assert _slide_run(off, seed=seed) == [] and off.seen == 0
    with pytest.raises(ValueError, match="slide_persist"):
        MonitorConfig(slide_persist=0)


def test_success_slide_without_the_entropy_condition():
    """Item 29 of docs/detection.md: `slide_entropy_rise=0` drops the entropy condition, so a slide
    with flat entropy alerts (and a run that logs no entropy is judged on success alone); a negative
    rise is refused."""
    early = dataclasses.replace(CONFIG, slide_success_drop=0.75, slide_entropy_rise=0.0, slide_persist=1)
    for seed in range(3):
        fired = _slide_run(SuccessSlide(early), entropy_rises=False, seed=seed)
        assert [a.detector for a in fired] == ["success_slide"] and 40 <= fired[0].step <= 44
        assert "entropy" not in fired[0].message
        rng = np.random.default_rng(seed)
        no_entropy = SuccessSlide(early)
        steps = [{"success/rate": slide_step(rng, step >= 40)[0]["success/rate"]} for step in range(80)]
        alerts = [
            a for step, row in enumerate(steps) for a in no_entropy.update(step_features(step, row, None))
        ]
        assert alerts and 40 <= alerts[0].step <= 44
    with pytest.raises(ValueError, match="slide_entropy_rise"):
        MonitorConfig(slide_entropy_rise=-1.0)


def test_verdict_counts_the_slide_and_task_success_as_one_family():
    """Both read task success, so together they are one family: they page only with a third family
    that reads something else (here the control tokens), and the confidence counts them once."""
    seen = {"outcome", "slide", "control", "structure"}
    success_only = {"success_collapse": "outcome", "success_slide": "slide"}
    verdict = CombinedVerdict(MonitorConfig())
    assert verdict.update(30, [_warning(30, "outcome"), _warning(30, "slide")], seen, success_only) == []
    page = verdict.update(31, [_warning(31, "control")], seen, {**success_only, "control_spike": "control"})
    assert page and page[0].value == 2.0 and "2 independent signal families" in page[0].message
    assert page[0].evidence["families"] == ["control", "outcome", "slide"]
    assert page[0].evidence["confidence"] == pytest.approx(2 / 3)


def test_verdict_lets_the_success_slide_stand_in_for_the_structure_family():
    """Without a structural shift, the slide pages with task success and the control tokens;
    success with control tokens alone does not (the default's requirement stands), and under the
    learning-signal gate the slide waits for the groups to thin like any other page."""
    seen = {"outcome", "slide", "control", "structure"}
    verdict = CombinedVerdict(MonitorConfig())
    assert verdict.update(30, [_warning(30, "outcome"), _warning(30, "control")], seen) == []
    page = verdict.update(
        31, [_warning(31, "slide")], seen, {"success_collapse": "outcome", "success_slide": "slide"}
    )
    assert page and page[0].evidence["families"] == ["control", "outcome", "slide"]
    assert "task success sliding while entropy rises" in page[0].message
    lone = CombinedVerdict(MonitorConfig())  # the slide is one family, not two
    assert lone.update(30, [_warning(30, "slide")], seen) == []

    gated = MonitorConfig(signal_mixed_max=0.6, verdict_requires_if_seen=("signal",))
    mixed = CombinedVerdict(gated)
    assert mixed.update(30, [_warning(30, "outcome"), _warning(30, "slide")], seen | {"signal"}) == []
    thin = CombinedVerdict(gated)
    held = {"success_collapse": "outcome", "success_slide": "slide", "learning_signal": "signal"}
    assert thin.update(30, [_warning(30, "slide")], seen | {"signal"}, {**held, "control_spike": "control"})


def test_broken_mode_groups_needs_whole_groups_not_the_same_share_scattered():
    """12 of 32 rollouts broken in 3 whole groups fires; the same 12 spread over all 8 groups does not.
    The alert points to rollouts of the broken groups, not to stray broken rollouts elsewhere."""
    det = BrokenModeGroups(CONFIG)
    rng = np.random.default_rng(0)
    alerts = []
    for step in range(40):
        broken = np.zeros(N, dtype=bool)
        if step < 30:
            broken[rng.choice(N, 12, replace=False)] = True
        else:
            broken[[0, 5]] = True  # stray broken rollouts in groups 0 and 1
            broken[20:] = True  # groups 5, 6, 7 entirely
        turns = [BROKEN_TURN if b else [CALL, "alice has 40."] for b in broken]
        alerts += det.update(step_features(step, {}, seqs_frame(rng, turn_texts=turns)))
    assert [a.step for a in alerts][:1] == [31]  # steps 30 and 31: 2 of 3
    assert "3 of 8 groups" in alerts[0].message
    assert alerts[0].evidence["rollouts"] and all(int(u[1:]) >= 20 for u in alerts[0].evidence["rollouts"])


def test_structure_statistics_describe_the_policys_own_samples():
    """A teacher-forced expert row (healthy) does not make a broken group look healthy, and hinted
    rollouts (sampled from another prompt, broken here) do not count as the policy's breakage."""
    group = np.arange(N) // 8
    slot = np.arange(N) % 8
    source = np.select([slot == 0, slot == 1], ["expert", "hint"], "policy")
    broken = ((group < 3) & (source == "policy")) | (source == "hint")
    turns = [BROKEN_TURN if b else [CALL, "alice has 40."] for b in broken]
    f = step_features(
        1, {}, seqs_frame(np.random.default_rng(0), group=group, source=source, turn_texts=turns)
    )
    assert f.get("groups/broken_mode_count") == 3
    assert f.get("groups/broken_mode_frac") == 0.75
    assert f.get("state/broken_rollouts") == 0.75  # 18 of the 24 policy rows (22 of all 32)


def test_probe_drift_warns_then_pages_and_names_the_token():
    """A cost 8x the start warns; 50x pages on its own when probe_page_fold is set (off by default).
    The reference is the run's first steps: a drift that builds is measured against the start."""

    def replay(config):
        det, alerts = ProbeDrift(config), []
        for step in range(60):
            fold = 1.0 if step < 20 else 8.0 if step < 35 else 50.0
            scalars = {
                "probe/logp/</tool_call>": -2.5e-4 * fold * (1 + 0.01 * (step % 3)),
                "probe/logp/<tool_call>": -3e-4,
            }
            alerts += det.update(step_features(step, scalars, None))
        return alerts

    assert [(a.step, a.severity) for a in replay(CONFIG)] == [(21, "warning")]
    alerts = replay(dataclasses.replace(CONFIG, probe_page_fold=20.0))
    assert [(a.step, a.severity) for a in alerts] == [(21, "warning"), (36, "critical")]
    assert alerts[0].evidence["token"] == "</tool_call>" and alerts[0].family == "probe"
    assert "</tool_call>" in alerts[1].message and alerts[1].evidence["fold"] >= 45


def test_probe_text_drift_warns_then_pages_alone_only_when_asked():
    """The expert text at 2.2x its start warns (at a 2x warning fold); at 3x it pages on its own
    only while probe_text_page_fold is set, and the page names itself in the message."""

    def replay(config):
        det, alerts = ProbeTextDrift(config), []
        for step in range(60):
            fold = 1.0 if step < 20 else 2.2 if step < 35 else 3.0
            alerts += det.update(step_features(step, {"probe/logp_text": -0.03 * fold}, None))
        return alerts

    warn_only = dataclasses.replace(CONFIG, probe_text_fold=2.0, probe_text_page_fold=0.0)
    assert [(a.step, a.severity) for a in replay(warn_only)] == [(21, "warning")]
    alerts = replay(dataclasses.replace(warn_only, probe_text_page_fold=2.5))
    assert [(a.step, a.severity) for a in alerts] == [(21, "warning"), (36, "critical")]
    assert alerts[1].family == "drift" and "pages on its own" in alerts[1].message
    assert "pages on its own" not in alerts[0].message


def test_probe_text_drift_thresholds_as_a_rise_in_nats():
    """With the folds off, the same detector warns and pages on the rise of the expert text's cost
    over its start: from 0.03 nats, +0.04 warns at a 0.03 warning rise and +0.06 pages at 0.05,
    whatever fold that is; a start twice as costly reaches the page at a smaller fold."""

    def replay(config, start):
        det, alerts = ProbeTextDrift(config), []
        for step in range(60):
            rise = 0.0 if step < 20 else 0.04 if step < 35 else 0.06
            alerts += det.update(step_features(step, {"probe/logp_text": -(start + rise)}, None))
        return alerts

    by_rise = dataclasses.replace(
        CONFIG,
        probe_text_fold=0.0,
        probe_text_page_fold=0.0,
        probe_text_delta=0.03,
        probe_text_page_delta=0.05,
    )
    for start in (0.03, 0.06):
        alerts = replay(by_rise, start)
        assert [(a.step, a.severity) for a in alerts] == [(21, "warning"), (36, "critical")]
        assert alerts[1].evidence["rise"] == pytest.approx(0.06)
        assert alerts[1].evidence["fold"] == pytest.approx((start + 0.06) / start)
    assert replay(dataclasses.replace(by_rise, probe_text_delta=0.0, probe_text_page_delta=0.0), 0.03) == []
