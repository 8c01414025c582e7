"""The combined verdict: page (critical) only when independent detector families agree.

Single detectors warn; a page needs at least `verdict_min_families` different families (control
tokens, reference probe, expert-text drift, structure, outcome, behaviour, exploration,
optimisation, length) whose warning conditions held within the last `verdict_window` steps, among
them every family in `verdict_requires` and, when the run has data for it, in
`verdict_requires_if_seen` (empty by default: round 7's rule; `("drift",)`, the expert-text drift
family, was round 15's default, and a run without a reference probe is judged without it;
`("signal",)` waits for the learning signal to thin, a gate that never counts as a family).
A family counts while its condition holds, not only on the step it alerted: a detector alerts once per episode, and a
success slide that alerted 8 steps ago and is still under way is still evidence. Non-finite values
page on their own, and so, when `probe_text_page_fold` (or `_delta`) is set, does the expert-text drift on the
reference probe (probe_drift.py): one family, which its message says. The success slide (success_slide.py,
off by default) stands in for the structure family when that one is required, and counts as one family
with task success, which it reads too. A page is sent once per episode: the verdict pages again only
after its condition has not held for `verdict_cooldown` steps. Confidence is a plain heuristic: the number of agreeing families over three
(one 33%, two 67%, three or more 100%). It is kept in the evidence and the timeline, not in the page's
message: it is no probability, and pages at 100% came in unsupervised runs that held (docs/detection.md,
rounds 29-30).
"""

from __future__ import annotations

from collections.abc import Mapping

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.detector_base import Episodes, MonitorConfig

# Families whose agreement would be double counting: the outcome and tool-rate families describe the
# collapse itself; the control and structure families are the early, format-level evidence.
_FAMILY_LABEL = {
    "control": "control-token probabilities",
    "probe": "reference-conversation probe",
    "drift": "expert-text drift on the probe",
    "structure": "structural states",
    "outcome": "task success",
    "behaviour": "tool-call rate",
    "exploration": "entropy / learning signal",
    "optimization": "optimizer statistics",
    "length": "rollout length",
    "signal": "thin reward spread in the groups",
    "slide": "task success sliding while entropy rises",
}
# A family that stands in for a required one: the success slide pages a collapse that loses success
# before its format, which the structure family sees only after the onset (docs/detection.md, item 27)
_STANDS_IN = {"slide": "structure"}
# Families that read the same series count once towards `verdict_min_families`: the slide and the
# outcome family both read task success (docs/detection.md, item 29)
_SAME_SIGNAL = {"slide": "outcome"}
# Families that can only gate a page (be required), never count towards `verdict_min_families`: the
# learning signal thins in supervised runs that hold as well (docs/detection.md, item 22).
_GATE_ONLY = {"signal"}
# What acting on a page measured on the bundled trainer (docs/detection.md, items 42-49): supervision
# brought collapses back from any point, a lower learning rate until about the onset, and a rollback to
# an earlier checkpoint with the same settings collapsed again
_ACT = (
    "Act now: lower the learning rate and add supervision (interleaved SFT or expert rollouts); a rollback "
    "to an earlier checkpoint with the same settings collapsed again on the bundled trainer."
)
# In a run that logs an SFT loss the page asks for a few steps' patience first: on the bundled trainer 18
# of the 23 pages of SFT-supervised runs came in runs that never crossed the onset line, during format
# excursions the SFT then (mostly) repaired (docs/detection.md, rounds 16-24)
_ACT_UNDER_SFT = (
    "The run logs an SFT loss, and most pages of SFT-supervised runs on the bundled trainer came in runs "
    "whose SFT then repaired the format: if the broken share does not fall within 3-4 steps, lower the "
    "learning rate and strengthen the SFT."
)


class CombinedVerdict:
    name = "verdict"
    family = "verdict"

    def __init__(self, config: MonitorConfig):
        self.config = config
        self.active: dict[str, tuple[str, int]] = {}  # detector -> (family, last step its condition held)
        self.episodes = Episodes(config.verdict_cooldown)  # one page per episode of its condition
        self.confidence = 0.0
        self.families_seen: set[str] = set()
        self.last_control: Alert | None = None
        self.sft_seen = False  # the run has logged an SFT loss (`sft/...loss`) at some step

    def update(
        self,
        step: int,
        alerts: list[Alert],
        families_with_data: set[str],
        active: Mapping[str, str] | None = None,
        sft_logged: bool = False,
    ) -> list[Alert]:
        """Judge one step. `active`: detector name -> family, for every detector whose warning (or
        worse) condition holds at this step, alerted or not (LiveMonitor passes it; every alert's
        condition is among them). Without it, the step's warnings stand for the conditions.
        `sft_logged`: the step logs an SFT loss; from then on a page asks for patience first."""
        c = self.config
        self.families_seen |= families_with_data
        self.sft_seen = self.sft_seen or sft_logged
        warnings = [a for a in alerts if a.rank >= 1]
        for a in warnings:
            if a.family == "control":
                self.last_control = a  # the suspect to name, even when it moved before the window
        held = active if active is not None else {a.detector: a.family for a in warnings}
        for name, family in held.items():
            if family in _FAMILY_LABEL:
                self.active[name] = (family, step)
        recent = {name: fs for name, fs in self.active.items() if step - fs[1] < c.verdict_window}
        holding = {family for family, _ in recent.values()}
        agreeing = sorted(holding - _GATE_ONLY)
        independent = {_SAME_SIGNAL.get(f, f) for f in agreeing}
        self.confidence = min(1.0, len(independent) / 3.0)
        required = set(c.verdict_requires) | (set(c.verdict_requires_if_seen) & self.families_seen)
        satisfied = holding | {_STANDS_IN[f] for f in holding if f in _STANDS_IN}
        if len(independent) < c.verdict_min_families or not required <= satisfied:
            return []
        if not self.episodes.starts(step):  # a standing condition re-paged every 20 steps before (round 35)
            return []
        supporting = [
            {"step": s, "detector": name, "family": family} for name, (family, s) in sorted(recent.items())
        ]
        labels = ", ".join(_FAMILY_LABEL[f] for f in agreeing)
        if holding & _GATE_ONLY:
            labels += "; gate: " + ", ".join(_FAMILY_LABEL[f] for f in sorted(holding & _GATE_ONLY))
        lead = self.last_control
        hint = ""
        if lead is not None:
            hint = (
                f" First suspect: p({lead.evidence.get('token')}) at {lead.evidence.get('position_type')} "
                f"positions (step {lead.step})."
            )
        msg = (
            f"Collapse likely: {len(independent)} independent signal families agree within {c.verdict_window} steps "
            f"({labels}).{hint} {_ACT_UNDER_SFT if self.sft_seen else _ACT}"
        )
        return [
            Alert(
                step=step,
                detector="verdict",
                severity="critical",
                message=msg,
                value=float(len(independent)),
                baseline=float(c.verdict_min_families),
                evidence={
                    "step": step,
                    "families": agreeing,
                    "confidence": self.confidence,
                    "detectors": supporting,  # each with the last step its condition held
                    "sft_supervised": self.sft_seen,
                },
                family="verdict",
            )
        ]
