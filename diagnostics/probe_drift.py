"""Probe drift: the model unlearns the expert's control tokens on fixed reference conversations.

Input: the `probe/...` scalars a `ControlProbe` writes (teacher-forced log p of the control tokens of
known-good conversations, hooks/probe.py). Each series is read as a cost, -log p in nats, and compared
with its median over the run's first `probe_ref_steps` steps: the policy as training found it. The
probe has no sampling noise, so the comparison needs no robust spread, only a fold change held on
`persist_k` of the last `persist_n` steps, after the common warm-up. `probe_warn_fold` warns, and
the probe is its own family in the verdict (it reads the weights, not the samples).
`probe_page_fold` (off by default) pages on it alone: on the bundled trainer the 100-1000x
transients that precede some collapses also come in supervised runs that recover.

`ProbeTextDrift` reads the same conversations' ordinary (non-control) tokens, `probe/logp_text`.
Its own family, "drift": the control tokens move in bursts in every run of the bundled trainer,
while the expert's text cost passed 2x its start mostly in runs without supervision that went on
to collapse (docs/detection.md, rounds 7 and 8). It warns and counts as one family in the verdict.
`probe_text_page_fold` (off by default) makes it page on its own, and `verdict_requires_if_seen=
("drift",)` makes the structure verdict wait for it; together, at 2.5x on 2 of 3 steps, they were
round 15's default. From the 0.58 warm start of rounds 11-15, the supervised runs that held drifted
2.0-3.2x, the collapses 11-125x, and that rule caught 5 of 5 held-out collapses by the onset (round
7's rule 4). Round 16, from a 0.125 warm start, showed its weakness: supervised runs drifted only
1.4-1.5x, but slow collapses at a low learning rate crossed 2.5x after their onset or never, and
it caught 3 of 9 collapses by the onset against round 7's rule's 9 of 9, so round 7's rule is the
default again (docs/detection.md). How far the expert's text drifts depends on the warm start, so
its thresholds can also be set as a rise in nats per token over the start cost (`probe_text_delta`,
`probe_text_page_delta`). Round 18 held both out on a second warm start: at 1.5x or +0.05 nats they
led every collapse but paged 6 and 4 of 8 supervised runs, whose drift grew with the better warm
start on either measure.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.baseline import KofN
from collapsewatch.diagnostics.detector_base import Detector, MonitorConfig, fmt
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.schema import PROBE_CTRL_WORST, PROBE_TEXT, parse_probe_token

_FIX = (
    "Likely fix: lower the learning rate, or add supervision that keeps the format (interleave SFT on "
    "expert trajectories, or replace one rollout per group with an expert one)."
)


class StartReference:
    """Fold change of a probe series' cost (-log p, nats) over its median in the first steps."""

    def __init__(self, config: MonitorConfig):
        self.config = config
        self._early: dict[str, list[float]] = {}

    def fold(self, name: str, logp: float) -> tuple[float, float, float] | None:
        """(fold, cost, reference cost), or None while the reference is still being gathered."""
        c = self.config
        if not math.isfinite(logp):
            return None
        cost = max(-logp, c.probe_floor)
        early = self._early.setdefault(name, [])
        if len(early) < c.probe_ref_steps:
            early.append(cost)
            return None
        reference = statistics.median(early)
        return cost / reference, cost, reference


def text_cost_series(steps, logp, config: MonitorConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """(steps, cost, start cost) of the probe's expert text, nats per token, as ProbeTextDrift
    measures it (steps while the start is gathered, and non-finite ones, are left out; the start
    cost is NaN until it is known)."""
    reference = StartReference(config)
    kept = [
        (step, m[1], m[2])
        for step, x in zip(steps, logp, strict=True)
        if (m := reference.fold(PROBE_TEXT, float(x)))
    ]
    out = np.array(kept, dtype=float).reshape(-1, 3)
    start = float(out[0, 2]) if len(out) else math.nan
    return out[:, 0].astype(int), out[:, 1], start


def text_drift_hit(fold: float, rise: float, fold_threshold: float, rise_threshold: float) -> bool:
    """Whether the expert text's drift reaches a threshold: a fold over its start cost, or a rise
    in nats per token over it (round 18 of docs/detection.md: neither carried across two warm
    starts); a threshold of 0 is off."""
    return 0 < fold_threshold <= fold or 0 < rise_threshold <= rise


class _Levels:
    """A page and a warning condition, each held on `persist_k` of the last `persist_n` steps."""

    def __init__(self, config: MonitorConfig):
        self._persist = {level: KofN(config.persist_k, config.persist_n) for level in ("critical", "warning")}

    def severity(self, page_hit: bool, warn_hit: bool) -> str | None:
        found = None
        for level, hit in (("critical", page_hit), ("warning", warn_hit)):
            if self._persist[level].update(hit) and found is None:
                found = level
        return found


class ProbeDrift(Detector):
    name = "probe_drift"
    family = "probe"

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self._reference = StartReference(config)
        self._levels = _Levels(config)

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        folds: dict[str, tuple[float, float, float]] = {}  # series -> (fold, cost, reference cost)
        seen_probe = False
        for name, logp in f.scalars.items():
            if parse_probe_token(name) is None and name != PROBE_CTRL_WORST:
                continue
            seen_probe = True
            measured = self._reference.fold(name, logp)
            if measured is not None:
                folds[name] = measured
        self.seen += seen_probe
        if not folds or not self.warmed_up:
            return []
        ranked = sorted(folds.items(), key=lambda kv: -kv[1][0])
        name, (fold, cost, reference) = ranked[0]
        severity = self._levels.severity(0 < c.probe_page_fold <= fold, 0 < c.probe_warn_fold <= fold)
        if severity is None or not self.holds(f.step, severity):
            return []
        by_token = [(parse_probe_token(n), v[0]) for n, v in ranked if n != PROBE_CTRL_WORST]
        token = by_token[0][0] if by_token else None  # the token that moved most, for the evidence
        subject = (
            "each conversation's least likely control token"
            if name == PROBE_CTRL_WORST
            else f"the expert's {token}"
        )
        moving = [f"{t}: {fmt(v)}x" for t, v in by_token if v >= c.probe_warn_fold]
        msg = (
            f"On the reference conversations, {subject} costs {fmt(fold)}x the log-loss it had at the start "
            f"({fmt(reference)} -> {fmt(cost)} nats): training is unlearning the tool-call format before the "
            f"rollouts show it.{' Moving: ' + ', '.join(moving) + '.' if moving else ''} {_FIX}"
        )
        return [self.alert(f, severity, msg, cost, reference, token=token, fold=fold, moving=moving)]


class ProbeTextDrift(Detector):
    """The expert's ordinary tokens cost `probe_text_fold` x their start: the policy is leaving the
    expert's language, not only its format (what supervision prevents)."""

    name = "probe_text_drift"
    family = "drift"

    def __init__(self, config: MonitorConfig):
        super().__init__(config)
        self._reference = StartReference(config)
        self._levels = _Levels(config)

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        if PROBE_TEXT not in f.scalars:
            return []
        self.seen += 1
        measured = self._reference.fold(PROBE_TEXT, f.scalars[PROBE_TEXT])
        if measured is None or not self.warmed_up:
            return []
        fold, cost, reference = measured
        rise = cost - reference
        severity = self._levels.severity(
            text_drift_hit(fold, rise, c.probe_text_page_fold, c.probe_text_page_delta),
            text_drift_hit(fold, rise, c.probe_text_fold, c.probe_text_delta),
        )
        if severity is None:
            return []
        alone = (
            " It pages on its own (probe_text_page_fold / probe_text_page_delta)."
            if severity == "critical"
            else ""
        )
        msg = (
            f"On the reference conversations, the expert's ordinary (non-control) tokens cost {fmt(fold)}x "
            f"the log-loss they had at the start ({fmt(reference)} -> {fmt(cost)} nats per token, +{fmt(rise)}): the policy is "
            f"drifting away from the expert's language as a whole (on the bundled trainer, supervised runs that "
            f"held stayed under ~3.5x, how far depending on the warm start; fast collapses went on to 10-125x, slow "
            f"ones to 2.5-7x).{alone} "
            f"{_FIX}"
        )
        alert = self.emit(f, severity, msg, cost, reference, fold=fold, rise=rise)
        return [alert] if alert else []
