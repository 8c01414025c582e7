"""Detectors on what the rollouts look like: structural states, tool use, task success, length."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.baseline import KofN, RobustBaseline, RunningPeak, update_rate
from collapsewatch.diagnostics.detector_base import Detector, MonitorConfig, fmt
from collapsewatch.diagnostics.features import (
    StepFeatures,
    broken_mode_groups,
    group_keys,
    policy_samples,
    sequence_arrays,
)
from collapsewatch.diagnostics.onset import SUCCESS_NAMES

_SUPERVISE = (
    "Likely fix: lower the learning rate and add supervision (interleave SFT steps on expert "
    "trajectories, or hint/expert rollouts); the skill is usually intact behind the broken format."
)


class StructuralShift(Detector):
    """Share of turns in text pollution or full collapse shifts up from its warm-up level.

    A one-sided CUSUM on robust z-scores (logit scale) against the warm-up's median and MAD, which stay
    fixed afterwards: on the bundled trainer the format degrades over 10-20 steps, and an adaptive
    baseline widens with such a ramp until no single step stands out (docs/detection.md).
    With `structure_measure="not_tool_call"` the share watched is that of turns that are not healthy
    tool calls: broken turns plus plain answers, so a policy that stops calling the tool shifts it
    too (round 22's rule N: quieter but later, not adopted; docs/detection.md).
    With `sft_structure_persist_k/_n` set, a run that logs an SFT loss needs the shift on k of the
    last n steps: SFT repairs excursions within a few steps (round 24's rule S: quieter, but late when
    the SFT is too weak to win; an option).
    """

    name = "structural_shift"
    family = "structure"

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        # an infinite span freezes the baseline at the warm-up's median and MAD
        self.base = RobustBaseline(config.warmup, span=math.inf, min_scale=0.3)
        self.cusum = 0.0
        self.persist = KofN(config.structure_persist_k, config.structure_persist_n)
        sft_k, sft_n = config.sft_structure_persist_k, config.sft_structure_persist_n
        self.sft_persist = KofN(sft_k, sft_n) if sft_k else None
        self.sft_seen = False  # sticky: the run has logged an SFT loss
        self.rise = math.nan  # this step's share minus the warm-up level; NaN if not compared (for plots)

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        self.rise = math.nan
        if self.sft_persist is not None and not self.sft_seen:
            self.sft_seen = f.logs_sft_loss
        lost_calls = c.structure_measure == "not_tool_call"
        broken = 1.0 - f.get("state/healthy_tool_call") if lost_calls else f.get("state/broken_turns")
        if math.isnan(broken):
            return []
        self.seen += 1
        ready = self.base.ready
        z, base_rate = update_rate(self.base, broken)
        if not ready:
            return []
        self.rise = broken - base_rate
        self.cusum = max(0.0, self.cusum + z - c.structure_cusum_k)
        shifted = self.cusum >= c.structure_cusum_h and self.rise >= c.structure_min_rise
        held = self.persist.update(shifted)
        if self.sft_persist is not None:  # both windows see every step, so either can decide
            held_under_sft = self.sft_persist.update(shifted)
            if self.sft_seen:
                held = held_under_sft
        if not held:
            return []
        pollution, collapse = f.get("state/text_pollution"), f.get("state/full_collapse")
        answers = f.get("state/healthy_response")
        states = f.rollout_states or []
        broken_mask = np.array([s is not None and not s.healthy for s in states], dtype=bool)
        if lost_calls:
            what = (
                f"are not healthy tool calls (warm-up level {base_rate:.0%}; now {pollution:.0%} text pollution, "
                f"{collapse:.0%} full collapse, {answers:.0%} plain answers)"
            )
        else:
            kind = "full collapse (empty turns, bare tags)" if collapse >= pollution else "text pollution"
            what = f"are broken (warm-up level {base_rate:.0%}), mostly {kind},"
        lasted = f"CUSUM {self.cusum:.1f}"
        if self.sft_seen:  # only ever set with the SFT window on
            lasted += f", on {c.sft_structure_persist_k} of the last {c.sft_structure_persist_n} steps despite the run's SFT"
        msg = (
            f"{broken:.0%} of assistant turns {what} and the rise has lasted ({lasted}): "
            f"the tool-call format is breaking. {_SUPERVISE}"
        )
        a = self.emit(
            f,
            "warning",
            msg,
            broken,
            base_rate,
            text_pollution=pollution,
            full_collapse=collapse,
            healthy_response=answers,
            measure=c.structure_measure,
            cusum=self.cusum,
            rollouts=f.uids(mask=broken_mask) if len(broken_mask) else [],
        )
        return [a] if a else []


class BrokenModeGroups(Detector):
    """Whole GRPO groups broken: for those prompts the broken format is the policy's mode.

    Random breakage rarely fills a group (at 25% broken rollouts, 8 of 8 by chance is 1.5e-5), so
    this needs no baseline. It is the same evidence as `structural_shift` seen per prompt, hence the
    same family; on the bundled trainer it moves earlier when the breakage concentrates on some
    prompts before it spreads (docs/detection.md).
    """

    name = "broken_mode_groups"
    family = "structure"

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self.persist = KofN(config.persist_k, config.persist_n)

    def update(self, f: StepFeatures) -> list[Alert]:
        frac, count = f.get("groups/broken_mode_frac"), f.get("groups/broken_mode_count")
        if math.isnan(frac):
            return []
        self.seen += 1
        c = self.config
        hit = frac >= c.broken_mode_frac and count >= c.broken_mode_min_groups
        if not self.persist.update(hit) or not self.warmed_up:
            return []
        msg = (
            f"In {int(count)} of {int(f.get('groups/count'))} groups every rollout has a broken turn, on "
            f"{sum(self.persist.hits)} of the last {len(self.persist.hits)} steps: for those prompts the broken format is "
            "the policy's mode, and a group that fails as one gets zero advantage, so nothing in the RL loss "
            f"pushes back. {_SUPERVISE}"
        )
        a = self.emit(f, "warning", msg, frac, c.broken_mode_frac, groups=count, rollouts=self._evidence(f))
        return [a] if a else []

    @staticmethod
    def _evidence(f: StepFeatures) -> list:
        """Rollouts from the entirely broken groups."""
        if f.sequences is None or f.rollout_states is None or "group" not in f.sequences.columns:
            return []
        cols = sequence_arrays(f.sequences)
        keys = group_keys(cols["group"], cols.get("rank"))
        own = policy_samples(cols.get("source"), len(keys))
        return f.uids(mask=broken_mode_groups(keys, own, f.rollout_states)[1])


class _PeakDrop(Detector):
    """A moving mean falling below a share of its running peak (peak-then-collapse)."""

    names: tuple[str, ...] = ()
    drop = 0.5
    min_peak = 0.0

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self.peak = RunningPeak(config.peak_window)

    def value(self, f: StepFeatures) -> float:
        return f.first(*self.names)

    def update(self, f: StepFeatures) -> list[Alert]:
        x = self.value(f)
        if math.isnan(x):
            return []
        self.seen += 1
        mean = self.peak.update(x)
        peak = self.peak.peak
        if not self.warmed_up or math.isnan(mean) or peak <= self.min_peak or mean >= self.drop * peak:
            return []
        a = self.emit(f, "warning", self.message(mean, peak), mean, peak, **self.evidence(f))
        return [a] if a else []

    def message(self, mean: float, peak: float) -> str:
        raise NotImplementedError

    def evidence(self, f: StepFeatures) -> dict:
        return {}


class SuccessCollapse(_PeakDrop):
    """Task success (or reward) falls well below its running peak."""

    name = "success_collapse"
    family = "outcome"
    names = SUCCESS_NAMES

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self.drop = config.success_drop
        self.min_peak = config.success_min_peak

    def message(self, mean: float, peak: float) -> str:
        return (
            f"Task success ({self.config.peak_window}-step mean {fmt(mean)}) fell below "
            f"{self.config.success_drop:.0%} of its peak {fmt(peak)}. Check the control-token and "
            f"structural alerts for the cause. {_SUPERVISE}"
        )

    def evidence(self, f: StepFeatures) -> dict:
        seqs = f.sequences
        if seqs is None or "success" not in seqs.columns:
            return {}
        failed = ~seqs["success"].fillna(False).astype(bool).to_numpy()
        return {"rollouts": f.uids(mask=failed)}


class ToolCallRateCollapse(_PeakDrop):
    """Tool calls per rollout fall well below their peak: the no-tool shortcut."""

    name = "tool_call_rate"
    family = "behaviour"
    names = ("tool_calls/per_rollout", "seq/tool_calls_mean")

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self.drop = config.tool_rate_drop
        self.min_peak = config.tool_rate_min_peak

    def message(self, mean: float, peak: float) -> str:
        return (
            f"Tool calls per rollout fell to {fmt(mean)} (peak {fmt(peak)}): the policy is dropping its tools "
            "(no-tool shortcut or broken call format). Likely fix: reward tool-grounded answers only, lower "
            "the learning rate, or add expert/hint rollouts that use the tools."
        )

    def evidence(self, f: StepFeatures) -> dict:
        seqs = f.sequences
        if seqs is None or "num_tool_calls" not in seqs.columns:
            return {}
        return {"rollouts": f.uids(mask=seqs["num_tool_calls"].fillna(0).to_numpy() <= 0)}


class LengthCollapse(Detector):
    """Mean length collapses, truncation rises, or rollouts loop (repeated n-grams)."""

    name = "length"
    family = "length"

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self.history: deque[float] = deque(maxlen=50)
        self.trunc = RobustBaseline(config.warmup, config.span, min_scale=0.3)
        self.trunc_persist = KofN(config.persist_k, config.persist_n)
        self.rep_persist = KofN(config.persist_k, config.persist_n)

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        self.seen += 1
        out: list[Alert] = []
        length = f.first("length/mean", "seq/length_mean")
        if math.isfinite(length):
            if len(self.history) >= c.warmup:
                med = float(np.median(self.history))
                if med > 0 and length < c.length_drop * med:
                    a = self.emit(
                        f,
                        "warning",
                        f"Mean generated length fell to {fmt(length)} tokens (median {fmt(med)}): turns are "
                        "collapsing to empty or bare tags. Likely fix: see the structural alerts; lower the learning rate.",
                        length,
                        med,
                        key="length",
                        detector="length_collapse",
                    )
                    out += [a] if a else []
            self.history.append(length)
        trunc = f.first("length/truncated_frac", "seq/truncated_frac")
        if math.isfinite(trunc):
            z, base = update_rate(self.trunc, trunc)
            hit = z >= c.z_warn and trunc >= c.truncation_min and trunc - base >= 0.15
            if self.trunc_persist.update(hit):
                a = self.emit(
                    f,
                    "warning",
                    f"{trunc:.0%} of rollouts hit the length or turn limit (baseline {base:.0%}): degenerate "
                    "loops or runaway turns. Likely fix: penalise truncation, lower the learning rate.",
                    trunc,
                    base,
                    key="truncation",
                    detector="truncation",
                )
                out += [a] if a else []
        rep = f.get("seq/repetition_frac")
        if math.isfinite(rep) and self.warmed_up and self.rep_persist.update(rep >= c.repetition_min):
            a = self.emit(
                f,
                "warning",
                f"{rep:.0%} of rollouts repeat the same phrase over half their text: the policy is looping. "
                "Likely fix: lower the learning rate or temperature drift; check the reward for length hacking.",
                rep,
                c.repetition_min,
                key="repetition",
                detector="repetition",
            )
            out += [a] if a else []
        return out
