"""The fixed collapse-onset definition, so lead times stay comparable across runs and tools.

Onset is the first step of the first run of `run` consecutive steps in which the `window`-step
moving mean of the task success rate is below `frac` of its running peak.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ONSET_WINDOW = 5
ONSET_RUN = 5
ONSET_FRACTION = 0.5
# Where the success rate is looked up, in order; runs without one fall back to the mean reward.
SUCCESS_NAMES = ("success/rate", "seq/success_rate", "reward/mean", "seq/reward_mean")


def moving_mean(
    steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray, window: int = ONSET_WINDOW
) -> pd.Series:
    """`window`-step moving mean indexed by step (NaN until the window fills); non-finite values are
    dropped first, so they neither break nor pollute a window."""
    s = pd.Series(np.asarray(values, dtype=float), index=np.asarray(steps)).sort_index()
    return s[np.isfinite(s.to_numpy())].rolling(window, min_periods=window).mean()


def onset_line(mean: pd.Series, frac: float = ONSET_FRACTION) -> pd.Series:
    """The line a collapse crosses at each step: `frac` of the moving mean's running peak."""
    return frac * mean.cummax()


def collapse_onset(
    steps: Sequence[int] | np.ndarray,
    success: Sequence[float] | np.ndarray,
    window: int = ONSET_WINDOW,
    run: int = ONSET_RUN,
    frac: float = ONSET_FRACTION,
) -> int | None:
    """Onset step or None. Non-finite success values are skipped (they do not break a run)."""
    mean = moving_mean(steps, success, window)
    if len(mean) < window + run - 1:
        return None
    line = onset_line(mean, frac)
    below = (mean < line) & (line > 0)
    streak = 0
    for i, b in enumerate(below.to_numpy()):
        streak = streak + 1 if b else 0
        if streak == run:
            return int(below.index[i - run + 1])
    return None


def success_series(steps_table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(steps, values, name) of the first SUCCESS_NAMES column of a wide steps table with at least two
    finite values (non-numeric cells become NaN); None when there is none."""
    for name in SUCCESS_NAMES:
        if name in steps_table.columns:
            vals = pd.to_numeric(steps_table[name], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(vals).sum() >= 2:
                return steps_table["step"].to_numpy(), vals, name
    return None
