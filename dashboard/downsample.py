"""Server-side downsampling of long series so a 5,000+ step run still draws instantly.

MinMaxLTTB (tsdownsample) keeps the spikes a collapse shows up as: min/max preselection, then LTTB.
"""

from __future__ import annotations

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler

MAX_POINTS = 1000  # per trace (a chart is ~1,300 px wide); beyond this it is downsampled

_DOWNSAMPLER = MinMaxLTTBDownsampler()


def keep_indices(x: np.ndarray, y: np.ndarray, n_out: int = MAX_POINTS) -> np.ndarray:
    """Indices of the points to draw (all of them when the series is short). NaNs must be dropped first."""
    n = len(x)
    if n <= n_out:
        return np.arange(n)
    idx = _DOWNSAMPLER.downsample(
        np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64), n_out=n_out
    )
    return np.asarray(idx, dtype=np.int64)


def downsample_together(x: np.ndarray, ys: list[np.ndarray], n_out: int = MAX_POINTS) -> np.ndarray:
    """One index set for series drawn as a band: the union of each series' kept points."""
    if len(x) <= n_out:
        return np.arange(len(x))
    per = max(4, n_out // max(1, len(ys)))
    keep = [keep_indices(x, np.nan_to_num(y, nan=0.0), per) for y in ys]
    return np.unique(np.concatenate(keep))
