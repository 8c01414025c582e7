"""Streaming robust baselines: EWMA mean and EW-MAD on a transformed series, with a warm-up.

Training metrics drift on purpose, so detectors compare a step with the run's own recent history,
not with fixed thresholds. Outliers update the baseline only through a winsorised residual, so a
sustained shift keeps standing out for a while instead of being absorbed at once.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

MAD_TO_SIGMA = 1.4826


def log10_prob(p: float, floor: float = 1e-6) -> float:
    """Probabilities to decades; drifts below `floor` (the prototype's noise level) are flattened."""
    return math.log10(max(p, 0.0) + floor)


def logit_rate(r: float, eps: float = 0.01) -> float:
    """Rates in [0, 1] to logits, clamped so 0 and 1 stay finite."""
    r = min(max(r, eps), 1.0 - eps)
    return math.log(r / (1.0 - r))


def inverse_logit(y: float) -> float:
    """Logits back to rates in [0, 1] (a `logit_rate` baseline's centre as a rate)."""
    return 1.0 / (1.0 + math.exp(-y))


def update_rate(base: RobustBaseline, rate: float) -> tuple[float, float]:
    """Feed a rate in [0, 1] to a logit-scale baseline: (robust z, baseline rate before the update).

    During warm-up the baseline rate is NaN, so every comparison with it is False (no hit).
    """
    prior = inverse_logit(base.center) if base.ready else math.nan
    return base.update(logit_rate(rate)), prior


def signed_log(x: float) -> float:
    """Heavy-tailed signed scalars (loss) to a log-like scale."""
    return math.copysign(math.log1p(abs(x)), x)


def positive_log(x: float, floor: float = 1e-8) -> float:
    """Heavy-tailed positive scalars (KL, grad norm) to natural logs."""
    return math.log(max(x, 0.0) + floor)


class RobustBaseline:
    """EWMA centre and EW-MAD scale of a (transformed) series.

    `warmup` finite observations are collected first; the baseline starts at their median / MAD.
    `z()` is the robust z-score of a new value against the baseline *before* it is updated.
    Values within `clip` robust z update centre and scale; outliers only nudge the centre.
    """

    __slots__ = ("alpha", "warmup", "min_scale", "clip", "n", "center", "mad", "_warm")

    def __init__(self, warmup: int = 20, span: float = 20.0, min_scale: float = 0.05, clip: float = 3.0):
        self.alpha = 2.0 / (span + 1.0)
        self.warmup = max(int(warmup), 1)
        self.min_scale = min_scale
        self.clip = clip
        self.n = 0
        self.center = math.nan
        self.mad = math.nan
        self._warm: list[float] = []

    @property
    def ready(self) -> bool:
        return self.n >= self.warmup

    @property
    def scale(self) -> float:
        if not math.isfinite(self.mad):
            return self.min_scale
        return max(MAD_TO_SIGMA * self.mad, self.min_scale)

    def z(self, x: float) -> float:
        if not self.ready or not math.isfinite(x):
            return 0.0
        return (x - self.center) / self.scale

    def update(self, x: float) -> float:
        """Add an observation; return its z-score against the baseline before the update."""
        if not math.isfinite(x):
            return 0.0
        self.n += 1
        if self.n <= self.warmup:
            self._warm.append(x)
            if self.n == self.warmup:
                arr = np.asarray(self._warm)
                self.center = float(np.median(arr))
                self.mad = float(np.median(np.abs(arr - self.center)))
                self._warm = []
            return 0.0
        z = (x - self.center) / self.scale
        if abs(z) <= self.clip:
            resid = x - self.center
            self.center += self.alpha * resid
            self.mad += self.alpha * (abs(resid) - self.mad)
        else:
            # An outlier moves the centre a little (a lasting shift is absorbed over ~4 spans) and
            # leaves the scale alone, so a slow ramp cannot widen its own yardstick.
            self.center += 0.25 * self.alpha * math.copysign(self.clip * self.scale, z)
        return z


class RunningPeak:
    """Running maximum of a k-step moving mean (peak-then-collapse detectors)."""

    __slots__ = ("window", "values", "peak", "n")

    def __init__(self, window: int = 5):
        self.window = window
        self.values: deque[float] = deque(maxlen=window)
        self.peak = -math.inf
        self.n = 0

    def update(self, x: float) -> float:
        """Add a value; return the current moving mean (NaN until the window is full)."""
        if not math.isfinite(x):
            return math.nan
        self.values.append(x)
        self.n += 1
        if len(self.values) < self.window:
            return math.nan
        mean = sum(self.values) / len(self.values)
        self.peak = max(self.peak, mean)
        return mean


class KofN:
    """True when at least k of the last n checks were true (spikes must persist: 2 of 3 steps)."""

    __slots__ = ("k", "hits")

    def __init__(self, k: int = 2, n: int = 3):
        self.k = k
        self.hits: deque[bool] = deque(maxlen=n)

    def update(self, hit: bool) -> bool:
        self.hits.append(bool(hit))
        return bool(hit) and sum(self.hits) >= self.k
