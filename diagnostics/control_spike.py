"""The core detector: a control token's probability jumps at a position type where it should not.

Input: the hook's `ctrl/<token>/<position_type>/<stat>` probabilities. Each series is judged in
decades (log10 of p + floor) against its own robust EWMA baseline; a hit needs a robust z above the
threshold, a fold change and a minimum probability, on 2 of the last 3 steps. A spike is a warning:
it moves earliest and names the token, but supervised runs that recover show it too
(docs/detection.md), so the page is left to the verdict. Setting `ctrl_page_series` makes that many
series moving together at `ctrl_page_fold`x or more critical on its own (earlier, more false alarms).
"""

from __future__ import annotations

import math

import numpy as np

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.baseline import KofN, RobustBaseline, log10_prob
from collapsewatch.diagnostics.detector_base import Detector, MonitorConfig, fmt
from collapsewatch.diagnostics.features import StepFeatures, parse_control_stat

_FIXES = {
    (
        "<tool_call>",
        "turn_start",
    ): "the policy is learning to open a call it cannot finish (bare-tag collapse)",
    (
        "<|im_end|>",
        "after_open_tag",
    ): "turns end right after an opening tag (bare `<tool_call>` then end of turn)",
    ("</tool_call>", "in_call"): "calls are being closed before their JSON is complete",
}
_FIX = (
    "Likely fix: lower the learning rate (or add LR warm-up), and add supervision: interleave SFT steps "
    "on expert trajectories or replace one rollout per group with an expert one."
)


class ControlTokenSpike(Detector):
    name = "control_spike"
    family = "control"

    def __init__(self, config: MonitorConfig, control_tokens: list[str] | None = None):
        super().__init__(config)
        self.control_tokens = set(control_tokens) if control_tokens else None
        self._base: dict[str, RobustBaseline] = {}
        self._persist: dict[str, KofN] = {}
        self.last_z: dict[str, float] = {}

    def _series(self, name: str) -> tuple[RobustBaseline, KofN]:
        b = self._base.get(name)
        if b is None:
            c = self.config
            b = RobustBaseline(c.warmup, c.span, c.ctrl_min_scale)
            self._base[name] = b
            self._persist[name] = KofN(c.persist_k, c.persist_n)
        return b, self._persist[name]

    def update(self, f: StepFeatures) -> list[Alert]:
        c = self.config
        best: dict[tuple[str, str], tuple[float, str, float, float, float]] = {}
        seen_any = False
        for name, p in f.scalars.items():
            parsed = parse_control_stat(name)
            if parsed is None:
                continue
            token, pos, stat = parsed
            if stat not in c.ctrl_stats or (self.control_tokens and token not in self.control_tokens):
                continue
            if not math.isfinite(p):
                continue
            seen_any = True
            base, persist = self._series(name)
            ready = base.ready
            center = base.center
            z = base.update(log10_prob(p, c.ctrl_floor))
            self.last_z[name] = z
            if not ready:
                persist.update(False)
                continue
            base_p = max(10.0**center - c.ctrl_floor, 0.0)
            fold = (p + c.ctrl_floor) / (base_p + c.ctrl_floor)
            hit = z >= c.z_warn and fold >= c.ctrl_min_fold and p >= c.ctrl_min_prob
            if persist.update(hit):
                key = (token, pos)
                if key not in best or z > best[key][0]:
                    best[key] = (z, stat, p, base_p, fold)
        self.seen += seen_any
        if not best:
            return []
        # One alert per step: the strongest mover whose episode is new. Every moving series is
        # recorded as holding, so the others ride along as evidence and do not alert one by one later.
        ranked = sorted(best.items(), key=lambda kv: -kv[1][4])
        also = [f"{t} @ {q}: {fmt(v[4])}x" for (t, q), v in ranked]
        wide = sum(v[4] >= c.ctrl_page_fold for v in best.values())
        severity = "critical" if c.ctrl_page_series and wide >= c.ctrl_page_series else "warning"
        new = [key for key, _ in ranked if self.holds(f.step, severity, key)]  # records every series
        if not new:
            return []
        token, pos = new[0]
        z, stat, p, base_p, fold = best[(token, pos)]
        why = _FIXES.get((token, pos), "the token appears where the tool-call grammar does not expect it")
        others = (
            f" Also moving: {', '.join(x for x in also if not x.startswith(f'{token} @ {pos}:'))}."
            if len(also) > 1
            else ""
        )
        grammar = (
            f" {wide} control-token series moved {fmt(c.ctrl_page_fold)}x or more together: the tool-call "
            "grammar itself is shifting."
            if severity == "critical"
            else ""
        )
        msg = (
            f"p({token}) at {pos} positions is {fmt(fold)}x its baseline ({stat}: {fmt(base_p)} -> {fmt(p)}, "
            f"robust z {z:.1f}): {why}.{grammar}{others} {_FIX}"
        )
        seqs = f.sequences
        order = None
        if seqs is not None and "control_unexpected_max" in seqs.columns:
            order = seqs["control_unexpected_max"].to_numpy(dtype=float, na_value=np.nan)
        return [
            self.alert(
                f,
                severity,
                msg,
                p,
                base_p,
                token=token,
                position_type=pos,
                stat=stat,
                fold=fold,
                z=z,
                moving=also,
                series_moving=wide,
                rollouts=f.uids(order=order),
            )
        ]
