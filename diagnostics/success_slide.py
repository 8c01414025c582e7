"""Success slides while token entropy rises: a page for collapses that lose success before their format.

Every page of the combined verdict needs the structure family, and on the bundled trainer that
family moves after the onset in collapses whose task success falls first (all 5 of round 7's
rule's held-out misses over rounds 16-26 of docs/detection.md). Success alone cannot stand in for
it: it dips as far in supervised runs that hold. In those collapses the token entropy rose with the
slide; in the supervised runs that dipped it mostly did not, or their groups stayed mixed (which
the learning-signal gate sees) or they logged an SFT loss. So the slide is success below a share of
its running peak *and* entropy above a multiple of its warm-up mean, on consecutive steps, and it
is not evaluated in a run that logs an SFT loss. Off by default (`slide_success_drop=0`); in the
verdict it stands in for the structure family (docs/detection.md, item 27).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.baseline import RunningPeak
from collapsewatch.diagnostics.detector_base import Detector, MonitorConfig, fmt
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.onset import SUCCESS_NAMES
from collapsewatch.diagnostics.training_detectors import ENTROPY_NAMES


class SuccessSlide(Detector):
    """Task success below `slide_success_drop` of its peak while entropy is up `slide_entropy_rise`x."""

    name = "success_slide"
    family = "slide"

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self.success = RunningPeak(config.peak_window)
        self.entropy: deque[float] = deque(maxlen=config.peak_window)
        self.warm_entropy: list[float] = []
        self.consecutive = 0
        self.sft_seen = False

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        self.sft_seen = self.sft_seen or f.logs_sft_loss
        if c.slide_success_drop <= 0 or self.sft_seen:
            return []
        success, entropy = f.first(*SUCCESS_NAMES), f.first(*ENTROPY_NAMES)
        if not (math.isfinite(success) and math.isfinite(entropy)):
            return []
        self.seen += 1
        mean = self.success.update(success)
        peak = self.success.peak
        self.entropy.append(entropy)
        if len(self.warm_entropy) < c.warmup:
            self.warm_entropy.append(entropy)
        entropy_now, entropy_warm = float(np.mean(self.entropy)), float(np.mean(self.warm_entropy))
        sliding = (
            self.warmed_up
            and math.isfinite(mean)
            and peak > c.success_min_peak
            and mean < c.slide_success_drop * peak
            and entropy_now > c.slide_entropy_rise * entropy_warm
        )
        self.consecutive = self.consecutive + 1 if sliding else 0
        if self.consecutive < c.slide_persist:
            return []
        msg = (
            f"Task success ({c.peak_window}-step mean {fmt(mean)}) is below {c.slide_success_drop:.0%} of its "
            f"peak {fmt(peak)} while token entropy ({fmt(entropy_now)} nats) is {entropy_now / entropy_warm:.1f}x "
            f"its warm-up mean, for {self.consecutive} steps: a collapse that loses success before its format "
            "breaks. Likely fix: stop or roll back, lower the learning rate, and add supervision."
        )
        a = self.emit(f, "warning", msg, mean, peak, entropy=entropy_now, entropy_warmup=entropy_warm)
        return [a] if a else []
