"""The matched-false-alarm comparison picks the baseline setting that a fair reader would."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from lead_vs_false_alarms import matched_baseline  # noqa: E402


def _point(setting, paged: int, caught: int, lead: float | None) -> dict:
    return {
        "setting": setting,
        "quiet_runs_paged": paged,
        "detected_by_onset": caught,
        "median_lead_steps": lead,
    }


def test_matched_baseline_respects_our_false_alarm_count() -> None:
    baseline = [
        _point({"reward_frac": 0.8}, paged=6, caught=6, lead=16.0),  # leads most, alarms on every quiet run
        _point({"reward_frac": 0.45}, paged=1, caught=1, lead=-1.5),
        _point({"reward_frac": 0.4}, paged=0, caught=0, lead=-3.0),
        _point({"reward_frac": 0.3}, paged=0, caught=0, lead=None),  # caught nothing it could time
    ]
    quiet = matched_baseline(_point("ours", paged=0, caught=5, lead=6.5), baseline)
    assert quiet is not None
    assert quiet["baseline_setting"] == {"reward_frac": 0.4}
    assert quiet["lead_minus_baseline"] == 9.5
    noisy = matched_baseline(_point("ours", paged=1, caught=5, lead=6.5), baseline)
    assert noisy is not None and noisy["baseline_setting"] == {"reward_frac": 0.45}
    assert noisy["baseline"]["quiet_runs_paged"] == 1


def test_matched_baseline_none_when_the_baseline_always_alarms_more() -> None:
    baseline = [_point({"reward_frac": 0.8}, paged=3, caught=6, lead=16.0)]
    assert matched_baseline(_point("ours", paged=0, caught=5, lead=6.5), baseline) is None
    no_lead = matched_baseline(_point("ours", paged=3, caught=0, lead=None), baseline)
    assert no_lead is not None and no_lead["lead_minus_baseline"] is None
