"""What came with the collapse onset: a format break, a drift of the expert's text, or neither.

The onset is a fixed rule on the success rate (diagnostics.onset), so that leads stay comparable.
From a weak policy (success peaking near 0.2 on a handful of tasks a step) that rule also fires on
noise: in round 17 of docs/detection.md half the supervised runs crossed it with no format break
and the expert's text on the probe within 1.8x of its start, while every collapse had drifted
23-53x. A post-mortem should say which kind of onset it is looking at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.onset import moving_mean
from collapsewatch.diagnostics.probe_drift import text_cost_series, text_drift_hit
from collapsewatch.schema import PROBE_TEXT

# a format onset this many steps before or after the success onset counts as "with" it
FORMAT_NEAR_STEPS = 10
# the drift is read from the warm-up to this many steps after the onset
DRIFT_AFTER_STEPS = 5


def max_probe_text_drift(
    per_step: Mapping[int, Mapping[str, float]], config: MonitorConfig, from_step: int, to_step: int
) -> tuple[float, float] | None:
    """Largest (fold, rise in nats per token) of the probe's expert-text cost over its start (the
    drift detector's own measures) in [from_step, to_step]; None for a run without a probe."""
    steps = sorted(per_step)
    logp = [per_step[step].get(PROBE_TEXT, math.nan) for step in steps]
    cost_steps, cost, start = text_cost_series(steps, logp, config)
    inside = cost[(cost_steps >= from_step) & (cost_steps <= to_step)]
    if not len(inside):
        return None
    top = float(inside.max())
    return top / start, top - start


def describe_onset(
    steps: Sequence[int] | np.ndarray,
    success: Sequence[float] | np.ndarray,
    onset: int | None,
    format_onset: int | None,
    per_step: Mapping[int, Mapping[str, float]],
    config: MonitorConfig,
) -> dict | None:
    """`kind` ("format_break", "text_drift" or "success_only"), the evidence, and a sentence."""
    if onset is None:
        return None
    mean = moving_mean(steps, success)
    before = mean[mean.index < onset].dropna()
    peak = float(before.max()) if len(before) else None
    peak_step = int(before.idxmax()) if len(before) else None
    at_onset = float(mean.get(onset, np.nan))
    drift = max_probe_text_drift(per_step, config, config.warmup, onset + DRIFT_AFTER_STEPS)
    fold = None if drift is None else drift[0]
    with_format = format_onset is not None and abs(format_onset - onset) <= FORMAT_NEAR_STEPS
    drifted = drift is not None and text_drift_hit(*drift, config.probe_text_fold, config.probe_text_delta)
    if with_format:
        kind = "format_break"
        message = (
            f"success fell with the format: healthy turns fell below half their peak at step {format_onset}"
        )
    elif drifted:
        kind = "text_drift"
        message = (
            f"success fell while the expert's text on the probe drifted {fold:.1f}x from its start, "
            "before any format break"
        )
    else:
        kind = "success_only"
        seen = "no probe to tell" if fold is None else f"the expert's text at most {fold:.1f}x its start"
        level = "" if peak is None else f" (5-step mean peaked at {peak:.2f})"
        message = (
            f"success fell without a format break ({seen}): a slow loss of success, or noise at this "
            f"success level{level}"
        )
    return {
        "kind": kind,
        "peak_success_5step": None if peak is None else round(peak, 4),
        "peak_step": peak_step,
        "success_5step_at_onset": None if not np.isfinite(at_onset) else round(at_onset, 4),
        "format_onset_step": format_onset,
        "max_probe_text_fold": None if fold is None else round(fold, 2),
        "max_probe_text_rise": None if drift is None else round(drift[1], 4),
        "message": message,
    }
