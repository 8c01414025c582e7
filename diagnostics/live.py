"""LiveMonitor: the one streaming implementation of all detectors, used in training and by `scan`.

The Recorder calls `update` once per step with the step's scalars and rollouts; it returns the
alerts for that step (the Recorder writes them to the run) and hands them to the sinks. It never
raises: a failing detector is counted in `failures` and skipped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from collapsewatch.diagnostics.alerts import SEVERITY_RANK, Alert
from collapsewatch.diagnostics.behaviour_detectors import (
    BrokenModeGroups,
    LengthCollapse,
    StructuralShift,
    SuccessCollapse,
    ToolCallRateCollapse,
)
from collapsewatch.diagnostics.control_spike import ControlTokenSpike
from collapsewatch.diagnostics.detector_base import Detector, MonitorConfig
from collapsewatch.diagnostics.features import StepFeatures, step_features
from collapsewatch.diagnostics.probe_drift import ProbeDrift, ProbeTextDrift
from collapsewatch.diagnostics.sinks import Sink
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


def _control_token_texts(control_tokens: Sequence[Any] | None) -> list[str] | None:
    """Accept ["<tool_call>", ...] or run.json's [{"index", "text", "token_id"}, ...]."""
    if not control_tokens:
        return None
    out = []
    for t in control_tokens:
        out.append(t["text"] if isinstance(t, Mapping) else str(t))
    return out


def build_detectors(config: MonitorConfig, control_tokens: list[str] | None = None) -> list[Detector]:
    return [
        ControlTokenSpike(config, control_tokens),
        ProbeDrift(config),
        ProbeTextDrift(config),
        StructuralShift(config),
        BrokenModeGroups(config),
        SuccessCollapse(config),
        SuccessSlide(config),
        ToolCallRateCollapse(config),
        EntropyCollapse(config),
        ZeroAdvantageGroups(config),
        LearningSignalThin(config),
        ClipSaturation(config),
        OptimizerSpikes(config),
        NonFinite(config),
        LengthCollapse(config),
        LazyLikelihood(config),
        SamplerMismatch(config),
    ]


class LiveMonitor:
    """All detectors plus the combined verdict, fed one step at a time."""

    def __init__(
        self,
        control_tokens: Sequence[Any] | None = None,
        sinks: Sequence[Sink] | None = None,
        config: MonitorConfig | Mapping[str, Any] | None = None,
        source: str = "live",
    ):
        self.config = MonitorConfig.from_any(config)
        self.control_tokens = _control_token_texts(control_tokens)
        self.detectors = build_detectors(self.config, self.control_tokens)
        self.verdict = CombinedVerdict(self.config)
        self.sinks = list(sinks or [])
        self.source = source
        self.alerts: list[Alert] = []
        self.failures: Counter[str] = Counter()
        self.last_features: StepFeatures | None = None
        self.seconds = 0.0
        self.steps_seen = 0

    @property
    def confidence(self) -> float:
        """Independent signal families now agreeing, over three, capped at 1 (a heuristic, not a probability)."""
        return self.verdict.confidence

    def update(
        self,
        step: int,
        scalars: Mapping[str, float] | None,
        sequences: pd.DataFrame | Mapping[str, Any] | None = None,
        arrays: Mapping[str, Any] | None = None,
    ) -> list[Alert]:
        """Judge one step. `sequences` are its rollout rows: a DataFrame, or a mapping of equal-length
        columns as a hook builds them. `arrays` (optional) are `features.sequence_arrays(sequences)`."""
        t0 = time.perf_counter()
        try:
            f = step_features(step, scalars or {}, sequences, self.config.max_classified, arrays)
        except Exception:  # noqa: BLE001 - odd input must not stop training
            self.failures["features"] += 1
            return []
        return self.judge(f, started=t0)

    def judge(self, f: StepFeatures, started: float | None = None) -> list[Alert]:
        """Judge one step from its features: `update` computes them; a replay that tries several
        settings on one run computes them once."""
        t0 = time.perf_counter() if started is None else started
        self.last_features = f
        alerts: list[Alert] = []
        families: set[str] = set()
        for d in self.detectors:
            try:
                before = d.seen
                alerts.extend(d.update(f))
                if d.seen > before:
                    families.add(d.family)
            except Exception:  # noqa: BLE001
                self.failures[d.name] += 1
        active = {name: d.family for d in self.detectors for name, s in d.active.items() if s == f.step}
        try:
            alerts.extend(self.verdict.update(f.step, alerts, families, active, sft_logged=f.logs_sft_loss))
        except Exception:  # noqa: BLE001
            self.failures["verdict"] += 1
        now = time.time()
        for a in alerts:
            a.source = self.source
            a.time = now
        for s in self.sinks:
            try:
                s.emit(alerts)
            except Exception:  # noqa: BLE001
                self.failures["sink"] += 1
        self.alerts.extend(alerts)
        self.steps_seen += 1
        self.seconds += time.perf_counter() - t0
        return alerts

    def should_stop(self, stop_on: str | None) -> bool:
        """True once an alert at `stop_on` severity or above was raised (stop_on=None: never)."""
        if stop_on is None:
            return False
        rank = SEVERITY_RANK[stop_on]
        return any(a.rank >= rank for a in self.alerts)

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                self.failures["sink"] += 1
