"""The onset is told apart: with a format break, with a drift of the expert's text, or neither."""

from __future__ import annotations

import numpy as np

from collapsewatch.diagnostics import collapse_onset
from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.onset_context import describe_onset, max_probe_text_drift
from collapsewatch.schema import PROBE_TEXT

STEPS = np.arange(1, 61)
SUCCESS = np.where(STEPS < 35, 0.2, 0.05)  # onset at 38 by the fixed rule (checked below)


def _probe(fold_after: float, from_step: int = 30) -> dict[int, dict[str, float]]:
    """Per-step scalars with the probe's text cost at 0.1 nats, times `fold_after` from a step on."""
    return {int(s): {PROBE_TEXT: -0.1 * (fold_after if s >= from_step else 1.0)} for s in STEPS}


def test_three_kinds_of_onset() -> None:
    config = MonitorConfig()
    onset = collapse_onset(STEPS, SUCCESS)
    assert onset == 38
    broke = describe_onset(STEPS, SUCCESS, onset, 41, _probe(1.1), config)
    assert broke is not None and broke["kind"] == "format_break" and broke["format_onset_step"] == 41
    drift = describe_onset(STEPS, SUCCESS, onset, None, _probe(6.0), config)
    assert drift is not None and drift["kind"] == "text_drift" and drift["max_probe_text_fold"] == 6.0
    noise = describe_onset(STEPS, SUCCESS, onset, None, _probe(1.3), config)
    assert noise is not None and noise["kind"] == "success_only"
    assert noise["peak_success_5step"] == 0.2 and noise["success_5step_at_onset"] < 0.1
    assert "1.3x" in noise["message"] and "0.20" in noise["message"]
    # a format onset far from the success onset is another event; no probe, nothing to tell by
    far = describe_onset(STEPS, SUCCESS, onset, 58, {}, config)
    assert far is not None and far["kind"] == "success_only" and far["max_probe_text_fold"] is None
    assert "no probe" in far["message"]
    assert describe_onset(STEPS, SUCCESS, None, None, {}, config) is None


def test_drift_is_read_up_to_just_after_the_onset() -> None:
    """A drift that starts long after the onset does not explain it."""
    config = MonitorConfig()
    late = _probe(6.0, from_step=50)
    assert max_probe_text_drift(late, config, config.warmup, 43) == (1.0, 0.0)
    assert describe_onset(STEPS, SUCCESS, 38, None, late, config)["kind"] == "success_only"
    # the threshold is the drift detector's own warning fold
    strict = MonitorConfig(probe_text_fold=8.0)
    assert describe_onset(STEPS, SUCCESS, 38, None, _probe(6.0), strict)["kind"] == "success_only"
    # ... or its rise in nats per token, when that is the threshold set (the fold off)
    by_rise = MonitorConfig(probe_text_fold=0.0, probe_text_delta=0.3)
    assert describe_onset(STEPS, SUCCESS, 38, None, _probe(3.0), by_rise)["kind"] == "success_only"
    rose = describe_onset(STEPS, SUCCESS, 38, None, _probe(5.0), by_rise)
    assert rose["kind"] == "text_drift" and rose["max_probe_text_rise"] == 0.4
