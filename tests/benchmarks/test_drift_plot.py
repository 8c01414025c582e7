"""drift_plot measures the fold that ProbeTextDrift pages on, step for step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from drift_plot import summarize, text_fold  # noqa: E402

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.probe_drift import ProbeTextDrift
from collapsewatch.schema import PROBE_TEXT


def test_text_fold_is_the_detectors_fold() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(1, 61)
    cost = 0.5 * (1 + 0.05 * rng.standard_normal(60)) * np.where(steps > 30, 1 + 0.2 * (steps - 30), 1)
    logp = -cost
    logp[40] = np.nan  # a step without a finite probe value is skipped by both
    config = MonitorConfig(probe_text_fold=2.5, probe_text_page_fold=2.5)  # round 15's page
    fold_steps, fold = text_fold(steps, logp, config)
    detector = ProbeTextDrift(config)
    fired, severities = {}, set()
    for step, value in zip(steps, logp, strict=True):
        for alert in detector.update(StepFeatures(int(step), {PROBE_TEXT: float(value)})):
            fired[alert.step] = alert.evidence["fold"]
            severities.add(alert.severity)
    assert "critical" in severities, "the constructed drift must page"
    by_step = dict(zip(fold_steps.tolist(), fold.tolist(), strict=True))
    assert 41 not in by_step
    for step, value in fired.items():
        assert np.isclose(by_step[step], value)
    row = summarize("run", fold_steps, fold, onset=None, config=config, page_fold=2.5)
    # the first page needs 2 of 3 steps over the fold: it comes at or after the first step over it
    assert row["first_at_page_fold"] <= min(s for s, a in fired.items())
    assert row["max_fold"] == round(float(fold[fold_steps >= config.warmup].max()), 2)
