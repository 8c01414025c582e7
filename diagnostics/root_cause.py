"""Post-mortem ranking: which control token, at which position type, moved first before the collapse.

For every `ctrl/<token>/<position_type>/<stat>` series, the first "move" is the first step where the
series stands >= `z` robust z-scores and >= `fold` times above its own robust baseline on two
consecutive steps (looser than the live detector: hindsight may be more sensitive). Candidates are
ranked by that step, earliest first; a move long before the onset (outside `lookback`) is ignored as
unrelated drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from collapsewatch.diagnostics.baseline import RobustBaseline, log10_prob
from collapsewatch.diagnostics.detector_base import step_word
from collapsewatch.diagnostics.features import parse_control_stat

RANKED_STATS = ("mean", "p99", "unexpected_mean", "unexpected_max", "max")


def rank_control_tokens(
    per_step: Mapping[int, Mapping[str, float]],
    onset: int | None,
    warmup: int = 20,
    z: float = 3.0,
    fold: float = 3.0,
    floor: float = 1e-6,
    lookback: int = 50,
) -> list[dict]:
    """Ranking of (token, position_type) by first move; each entry carries its evidence."""
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for step in sorted(per_step):
        for name, value in per_step[step].items():
            parsed = parse_control_stat(name)
            if parsed is None or parsed[2] not in RANKED_STATS or not math.isfinite(value):
                continue
            series.setdefault(parsed, []).append((step, value))
    best: dict[tuple[str, str], dict] = {}
    for (token, pos, stat), points in series.items():
        base = RobustBaseline(warmup=warmup, span=20.0, min_scale=0.15)
        first_move = None
        streak = 0
        baseline_at_move = math.nan
        peak_fold, peak_step = 0.0, None
        for step, p in points:
            ready = base.ready
            base_p = 10.0**base.center - floor if ready else math.nan
            zz = base.update(log10_prob(p, floor))
            if not ready:
                continue
            f = (p + floor) / (max(base_p, 0.0) + floor)
            if f > peak_fold and (onset is None or step <= onset + 5):
                peak_fold, peak_step = f, step
            moved = zz >= z and f >= fold and p >= 1e-5
            streak = streak + 1 if moved else 0
            in_window = onset is None or onset - lookback <= step <= onset + 5
            if first_move is None and streak >= 2 and in_window:
                first_move = step - 1
                baseline_at_move = base_p
        entry = {
            "token": token,
            "position_type": pos,
            "stat": stat,
            "first_move_step": first_move,
            "steps_before_onset": (onset - first_move)
            if onset is not None and first_move is not None
            else None,
            "baseline": baseline_at_move,
            "peak_fold": peak_fold,
            "peak_step": peak_step,
        }
        key = (token, pos)
        old = best.get(key)
        if old is None or _sort_key(entry) < _sort_key(old):
            best[key] = entry
    ranked = sorted(best.values(), key=_sort_key)
    ranked = [r for r in ranked if r["first_move_step"] is not None]
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
        r["evidence"] = (
            f"p({r['token']}) at {r['position_type']} ({r['stat']}) first rose at step {r['first_move_step']}"
            + _relative(r["steps_before_onset"])
            + f"; peak {r['peak_fold']:.3g}x its baseline at step {r['peak_step']}"
        )
    return ranked


def _sort_key(entry: dict) -> tuple:
    move = entry["first_move_step"]
    return (move is None, move if move is not None else 0, -entry["peak_fold"])


def _relative(steps_before_onset: int | None) -> str:
    if steps_before_onset is None:
        return ""
    n = abs(steps_before_onset)
    return f", {n} {step_word(n)} {'before' if steps_before_onset >= 0 else 'after'} onset"
