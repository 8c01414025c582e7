"""drift_plot measures the fold and the rise that ProbeTextDrift pages on, step for step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from drift_plot import plot_by_root, summarize  # noqa: E402

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.probe_drift import ProbeTextDrift, text_cost_series
from collapsewatch.schema import PROBE_TEXT


def _fired(config: MonitorConfig, steps, logp) -> dict[int, dict]:
    """step -> evidence of every alert the detector raises on the series; it must page."""
    detector, fired, severities = ProbeTextDrift(config), {}, set()
    for step, value in zip(steps, logp, strict=True):
        for alert in detector.update(StepFeatures(int(step), {PROBE_TEXT: float(value)})):
            fired[alert.step] = alert.evidence
            severities.add(alert.severity)
    assert "critical" in severities, "the constructed drift must page"
    return fired


def test_fold_and_rise_are_the_detectors() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(1, 61)
    cost = 0.5 * (1 + 0.05 * rng.standard_normal(60)) * np.where(steps > 30, 1 + 0.2 * (steps - 30), 1)
    logp = -cost
    logp[40] = np.nan  # a step without a finite probe value is skipped by both
    config = MonitorConfig(probe_text_fold=2.5, probe_text_page_fold=2.5)  # round 15's page
    cost_steps, measured, start = text_cost_series(steps, logp, config)
    assert 41 not in cost_steps.tolist()
    by_step = dict(zip(cost_steps.tolist(), measured.tolist(), strict=True))
    fired = _fired(config, steps, logp)
    for step, evidence in fired.items():
        assert np.isclose(by_step[step] / start, evidence["fold"])
        assert np.isclose(by_step[step] - start, evidence["rise"])
    row = summarize("run", cost_steps, measured, start, onset=None, config=config, page=2.5)
    # the first page needs 2 of 3 steps over the fold: it comes at or after the first step over it
    assert row["first_at_page"] <= min(fired)
    assert row["max_fold"] == round(float((measured / start)[cost_steps >= config.warmup].max()), 2)
    assert row["start_cost"] == round(start, 4)
    # the same series read as a rise in nats per token, against a page on the rise
    by_rise = MonitorConfig(probe_text_fold=0.0, probe_text_delta=0.4, probe_text_page_delta=0.4)
    fired = _fired(by_rise, steps, logp)
    row = summarize("run", cost_steps, measured, start, None, by_rise, page=0.4, measure="rise")
    assert row["first_at_page"] <= min(fired)
    assert row["max_rise"] == round(float((measured - start)[cost_steps >= config.warmup].max()), 4)


def test_by_root_plot_draws_both_measures(tmp_path) -> None:
    steps = np.arange(6, 40)
    runs = [
        (root, name, steps, start * (1 + rate * (steps - 6)), start, None)
        for root, start in (("r17", 0.1), ("r18", 0.06))
        for name, rate in (("collapse-s1", 0.5), ("off-policy-s1", 0.01))
    ]
    out = tmp_path / "by-root.png"
    plot_by_root(runs, out, "test", "collapse")
    assert out.stat().st_size > 10_000
