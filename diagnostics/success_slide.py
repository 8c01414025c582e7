"""Success slides while token entropy rises: a page for collapses that lose success before their format.

Every page of the combined verdict needs the structure family, and on the bundled trainer that
family moves after the onset in collapses whose task success falls first (all 5 of round 7's
rule's held-out misses over rounds 16-26 of docs/detection.md). Success alone cannot stand in for
it: it dips as far in supervised runs that hold. Nor does the entropy rise that came with those
collapses set them apart: over rounds 16-26 success below 0.6 of its peak with entropy up 1.5x
held in 25 of 32 `off-policy` and 23 of 34 `sync-sft` runs too. What keeps the slide off
supervised runs is the context: it is not evaluated once a run logs an SFT loss, and under the
learning-signal gate (L) it waits, like any page, until few groups keep a reward spread, which an
expert row in every group prevents. So it is meant for runs without supervision, or with L. Off by
default (`slide_success_drop=0`); in the verdict it stands in for the structure family and counts
as one family with task success, which it reads too (docs/detection.md, items 27 and 29).
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
        # the two ratios the condition reads, at the last step (NaN until known): for plots and tests
        self.success_ratio = math.nan  # 5-step mean success / its running peak
        self.entropy_ratio = math.nan  # 5-step mean entropy / its warm-up mean

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        self.sft_seen = self.sft_seen or f.logs_sft_loss
        if c.slide_success_drop <= 0:
            return []
        success, entropy = f.first(*SUCCESS_NAMES), f.first(*ENTROPY_NAMES)
        needs_entropy = c.slide_entropy_rise > 0  # 0 turns the entropy condition off
        if not math.isfinite(success) or (needs_entropy and not math.isfinite(entropy)):
            return []
        self.seen += 1
        mean = self.success.update(success)
        peak = self.success.peak
        self.entropy.append(entropy)
        if len(self.warm_entropy) < c.warmup:
            self.warm_entropy.append(entropy)
        entropy_now, entropy_warm = float(np.mean(self.entropy)), float(np.mean(self.warm_entropy))
        self.success_ratio = mean / peak if peak > 0 else math.nan
        self.entropy_ratio = entropy_now / entropy_warm if entropy_warm > 0 else math.nan
        sliding = (
            not self.sft_seen  # the ratios are kept for plots; the condition is off in an SFT run
            and self.warmed_up
            and math.isfinite(mean)
            and peak > c.success_min_peak
            and mean < c.slide_success_drop * peak
            and (not needs_entropy or entropy_now > c.slide_entropy_rise * entropy_warm)
        )
        self.consecutive = self.consecutive + 1 if sliding else 0
        if self.consecutive < c.slide_persist:
            return []
        entropy_part = (
            f" while token entropy ({fmt(entropy_now)} nats) is {self.entropy_ratio:.1f}x its warm-up mean"
            if needs_entropy
            else ""
        )
        msg = (
            f"Task success ({c.peak_window}-step mean {fmt(mean)}) is below {c.slide_success_drop:.0%} of its "
            f"peak {fmt(peak)}{entropy_part}, for {self.consecutive} steps: a collapse that loses success "
            "before its format breaks. Likely fix: lower the learning rate and add supervision (a rollback "
            "alone does not stop it)."
        )
        a = self.emit(f, "warning", msg, mean, peak, entropy=entropy_now, entropy_warmup=entropy_warm)
        return [a] if a else []
