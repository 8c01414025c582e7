"""What every detector shares: configuration, warm-up, cooldown and the alert it emits."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from collapsewatch.diagnostics.alerts import SEVERITY_RANK, Alert
from collapsewatch.diagnostics.features import StepFeatures

STRUCTURE_MEASURES = ("broken", "not_tool_call")  # the shares StructuralShift can watch

# Settings for supervision that puts an expert row in every GRPO group: the page waits for
# the groups' reward spread to thin (held out in round 22 of docs/detection.md)
EXPERT_ROW_GATE: Mapping[str, Any] = MappingProxyType(
    {"signal_mixed_max": 0.6, "verdict_requires_if_seen": ("signal",)}
)
_SFT_WINDOW = {"sft_structure_persist_k": 4, "sft_structure_persist_n": 4}
_SUCCESS_SLIDE = {"slide_success_drop": 0.6}  # rule F (item 27)
# The structure family without its CUSUM delay: the rise of broken turns decides (item 36; with the
# gates only: without them it pages supervised runs that hold)
_NO_CUSUM_DELAY = {"structure_cusum_h": 1.0}
# The settings docs/detection.md scores ("In short"), by name, for `--preset` and `Recorder(detectors=...)`:
# A is round 7's rule (the default), L the gate above, S a longer structure window once a run logs
# an SFT loss, F the success slide, H the structure family without its CUSUM delay. Held-out
# figures for each are in that table; with supervision LS and LSF are the recommended ones (item 40).
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "A": MappingProxyType({}),
    "L": EXPERT_ROW_GATE,
    "S": MappingProxyType(_SFT_WINDOW),
    "LS": MappingProxyType({**EXPERT_ROW_GATE, **_SFT_WINDOW}),
    "LSF": MappingProxyType({**EXPERT_ROW_GATE, **_SFT_WINDOW, **_SUCCESS_SLIDE}),
    "LSH": MappingProxyType({**EXPERT_ROW_GATE, **_SFT_WINDOW, **_NO_CUSUM_DELAY}),
    "LSFH": MappingProxyType({**EXPERT_ROW_GATE, **_SFT_WINDOW, **_SUCCESS_SLIDE, **_NO_CUSUM_DELAY}),
})  # fmt: skip


@dataclass(frozen=True)
class MonitorConfig:
    """Detector thresholds. Units: steps, probabilities, robust z-scores (MAD-scaled).

    Defaults were chosen on constructed series and checked on the bundled trainer's runs; see
    docs/detection.md for what they were calibrated on.
    """

    warmup: int = 15  # steps of history before any detector may fire
    # a detector/key alerts once per episode: again at the same severity only after its condition has
    # not held for this many steps (severity rising alerts at once)
    cooldown: int = 10
    span: float = 20.0  # EWMA span of the robust baselines, steps
    z_warn: float = 4.0  # robust z that counts as a hit
    persist_k: int = 2  # hits needed ...
    persist_n: int = 3  # ... among this many recent steps
    # control-token spike (the core detector)
    ctrl_stats: tuple[str, ...] = ("mean", "p99", "unexpected_mean")
    ctrl_floor: float = 1e-6  # probabilities below this are noise (prototype: 1e-7 drifts reverted)
    ctrl_min_fold: float = 5.0  # a hit must also be this many times the baseline probability
    ctrl_min_prob: float = 1e-4  # ... and at least this probability
    ctrl_min_scale: float = 0.15  # decades: smallest spread a baseline may claim
    # A spike pages on its own (critical) when this many (token, position) series move together, each
    # at least ctrl_page_fold x its baseline: the whole tool-call grammar is shifting, not one token
    # (0, the default, turns this off: on the bundled trainer it paged 6 of 6 supervised runs).
    ctrl_page_series: int = 0
    ctrl_page_fold: float = 10.0
    # probe drift (hooks/probe.py): -log p of the reference conversations' control tokens against its
    # median over the first probe_ref_steps steps (the probe is noise-free: no warm-up beyond that)
    probe_ref_steps: int = 5
    probe_floor: float = 1e-6  # nats: smaller costs are rounding
    probe_warn_fold: float = 5.0
    # >= this fold pages on its own (0, the default, turns it off: on the bundled trainer supervised
    # runs that recovered showed the same 100-1000x transients; docs/detection.md, round 7)
    probe_page_fold: float = 0.0
    # the expert's ordinary tokens on the probe: this fold over their start cost warns (family "drift");
    # (from the 0.58 warm start the supervised runs drifted 2.0-3.2x, the collapses 11-125x; from the
    # 0.125 warm start of round 16, 1.4-1.5x and 2.5-42x; docs/detection.md)
    probe_text_fold: float = 2.0
    # >= this fold (on persist_k of persist_n steps) pages on its own; 0, the default, turns it off.
    # Default in round 15 only (2.5x with verdict_requires_if_seen=("drift",)): held out in round 16,
    # on a weaker warm start, it caught 3 of 9 collapses by the onset against round 7's rule's 9 of 9
    # (slow collapses at a low LR drifted past 2.5x only after the onset, or never), so it went back
    # to an option (docs/detection.md, rounds 15-16)
    probe_text_page_fold: float = 0.0
    # the same thresholds as a rise of the expert text's cost over its start, nats per token (0: off).
    # A fold depends on how well the warm start knew the text (start cost 0.10 nats on rounds 16-17's
    # warm start, 0.06 on round 18's); in round 18 neither a fold nor a rise carried across the two
    # at a threshold low enough to lead (supervised runs: +0.02-0.08 nats, then +0.03-0.15)
    probe_text_delta: float = 0.0
    probe_text_page_delta: float = 0.0
    # structural states
    max_classified: int = 128  # rollouts per step whose text is classified (evenly spaced sample)
    # structural states: one-sided CUSUM of the broken-turn share (logit scale) against the warm-up's
    # median and MAD, so a slow, sustained rise adds up instead of widening its own yardstick
    structure_min_rise: float = 0.15  # absolute rise of the broken-turn share over its warm-up level
    # the share watched: "broken" (text pollution + full collapse) or "not_tool_call" (every turn that
    # is not a healthy tool call, plain answers included; round 22's rule N, not adopted)
    structure_measure: str = "broken"
    structure_cusum_k: float = 1.0  # robust z a step must exceed to add to the sum (slack)
    # sum that counts as a shift; 1 in the LSH and LSFH presets, where the rise above decides (item 36:
    # at 8 it delayed collapses' pages and kept no stable run quiet that the gates did not)
    structure_cusum_h: float = 8.0
    # ... on at least k of the last n steps (1 of 1: the step it holds). A repaired excursion is often
    # one step of broken turns; a collapse keeps them. 3 of 3, held out in rounds 12-14: 2 of 17
    # supervised runs that held paged (1 of 1: 13), but a median lead of 3 (1 of 1: 6); docs/detection.md
    structure_persist_k: int = 1
    structure_persist_n: int = 1
    # ... on k of the last n steps instead once the run logs a supervised loss on expert data (a
    # scalar `sft/...loss`: the bundled sync-sft and interleaved recipes, or a user's interleaved SFT
    # logged under that name); 0, the default, keeps the setting above. SFT repairs a format
    # excursion within a few steps, so an excursion it has not repaired in k steps is one it is
    # losing (round 24's rule S, 4 of 4: held out, it silenced 7 of 9 pages of SFT runs that held but
    # paged 3 of 4 slides under too weak an SFT after their onset; an option, docs/detection.md)
    sft_structure_persist_k: int = 0
    sft_structure_persist_n: int = 0
    # structural states per GRPO group: a group whose every rollout is broken (the broken format is
    # the policy's mode for that prompt); hit when this share of groups, and at least this many, are
    broken_mode_frac: float = 0.25
    broken_mode_min_groups: int = 2
    # outcome and behaviour
    peak_window: int = 5  # moving-mean window for peak-then-collapse, steps
    success_drop: float = 0.7  # warn when the moving mean falls below this share of its peak
    success_min_peak: float = 0.2  # success rate: a lower peak is too noisy to collapse from
    tool_rate_drop: float = 0.5
    tool_rate_min_peak: float = 0.2  # tool calls per rollout
    # success slide (family "slide", off at 0): the 5-step success mean below this share of its peak
    # while the 5-step entropy mean is above slide_entropy_rise x its warm-up mean, on slide_persist
    # consecutive steps, in a run without an SFT loss; it stands in for the structure family in the
    # verdict, counting as one family with task success. 0.6 / 1.5 / 2 is rule F, pre-registered as
    # round 27 of docs/detection.md; slide_entropy_rise 0 turns the entropy condition off (item 29)
    slide_success_drop: float = 0.0
    slide_entropy_rise: float = 1.5
    slide_persist: int = 2
    # exploration
    entropy_floor: float = 0.02  # nats
    entropy_drop: float = 0.25  # share of the warm-up median
    zero_adv_min: float = 0.5  # share of groups with zero reward variance
    # learning signal (family "signal", a gate for the verdict): the mean share of groups with a reward
    # spread over signal_window steps at most this; 0, the default, turns it off. 0.6 with
    # verdict_requires_if_seen=("signal",) for expert-row supervision (docs/detection.md, round 22)
    signal_mixed_max: float = 0.0
    signal_window: int = 3
    # optimisation
    clip_min: float = 0.05
    spike_min_fold: float = 2.0
    lazy_min_frac: float = 0.5
    lazy_run: int = 3
    mismatch_max: float = 0.05  # nats per token between trainer and sampler
    # length
    length_drop: float = 0.5
    truncation_min: float = 0.3
    repetition_min: float = 0.2
    # combined verdict
    verdict_window: int = 5  # steps within which families must agree
    verdict_min_families: int = 2
    verdict_cooldown: int = 20  # a page's episode ends once its condition has not held for this many steps
    # families that must be among the agreeing ones for a page (empty: any two families will do)
    verdict_requires: tuple[str, ...] = ("structure",)
    # ... and these too, when the run has data for them (a run without a reference probe has no drift).
    # () is round 7's rule, the default; ("drift",) with probe_text_page_fold=2.5 was round 15's
    verdict_requires_if_seen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.structure_measure not in STRUCTURE_MEASURES:
            raise ValueError(
                f"structure_measure must be one of {', '.join(STRUCTURE_MEASURES)}, not {self.structure_measure!r}"
            )
        if self.slide_entropy_rise < 0:
            raise ValueError(
                f"slide_entropy_rise must be >= 0 (0: no entropy condition), not {self.slide_entropy_rise}"
            )
        if self.slide_persist < 1:
            raise ValueError(f"slide_persist must be at least 1, not {self.slide_persist}")
        k, n = self.sft_structure_persist_k, self.sft_structure_persist_n
        if (k, n) != (0, 0) and not 0 < k <= n:
            raise ValueError(f"sft_structure_persist_k/_n must be 0/0 or 0 < k <= n, not {k}/{n}")

    @classmethod
    def parse_setting(cls, pair: str) -> tuple[str, Any]:
        """`KEY=VALUE` for one field, parsed by the field's type (tuples comma-separated, `KEY=` an
        empty tuple), as the CLI's `--set` takes it. ValueError says what is wrong."""
        key, sep, raw = pair.partition("=")
        if not sep or key not in {f.name for f in fields(cls)}:
            raise ValueError(f"detector setting {pair!r}: expected KEY=VALUE, KEY a MonitorConfig field")
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            return key, tuple(x for x in raw.split(",") if x)
        try:
            return key, type(default)(raw)
        except ValueError:
            raise ValueError(f"detector setting {key}: {raw!r} is not a {type(default).__name__}") from None

    @classmethod
    def from_any(cls, config: MonitorConfig | Mapping[str, Any] | None) -> MonitorConfig:
        if config is None:
            return cls()
        if isinstance(config, MonitorConfig):
            return config
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown detector settings: {', '.join(sorted(unknown))}")
        return replace(cls(), **dict(config))


def fmt(x: float) -> str:
    """Short human number: 3 significant digits, scientific for tiny/huge values."""
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.3g}"


def step_word(n: int | None) -> str:
    """'step' for one (or minus one), else 'steps'."""
    return "step" if n in (1, -1) else "steps"


class Episodes:
    """One alert per episode: a condition that keeps holding (no gap of `cooldown` steps between the
    steps it holds) alerts again only if its rank rises. Detectors keep one per detector, keyed by
    condition; the combined verdict keeps one for its page."""

    def __init__(self, cooldown: int):
        self.cooldown = cooldown
        self._last: dict[Any, tuple[int, int]] = {}  # key -> (last step it held, rank it alerted at)

    def starts(self, step: int, key: Any = None, rank: int = 0) -> bool:
        """Record that condition `key` holds at `step`; True when this starts a new episode (or the
        rank rises above the one the episode alerted at)."""
        last = self._last.get(key)
        if last is not None and step - last[0] < self.cooldown and rank <= last[1]:
            self._last[key] = (step, last[1])  # the episode goes on: its quiet period restarts
            return False
        self._last[key] = (step, rank)
        return True


class Detector:
    """A streaming detector: `update(features)` once per step, returns the alerts for that step.

    Subclasses set `name` and `family` (detectors in one family see the same evidence, so they do
    not count as independent confirmation) and call `emit` whenever their condition holds. `emit`
    applies the cooldown to the alert, not to the condition: `active` records, per alerting name,
    the last step a warning-or-worse condition held, so the verdict sees a lasting condition that
    alerted once.
    """

    name = "detector"
    family = "other"

    def __init__(self, config: MonitorConfig):
        self.config = config
        self.episodes = Episodes(config.cooldown)
        self.seen = 0
        self.active: dict[str, int] = {}  # alerting name -> last step a warning-or-worse condition held

    def update(self, f: StepFeatures) -> list[Alert]:
        raise NotImplementedError

    @property
    def warmed_up(self) -> bool:
        return self.seen > self.config.warmup

    @property
    def active_step(self) -> int | None:
        """The last step any of this detector's warning-or-worse conditions held."""
        return max(self.active.values(), default=None)

    def holds(self, step: int, severity: str, key: Any = None, detector: str | None = None) -> bool:
        """Record that the condition `key` (alerting as `detector`, default this detector's name)
        holds at `step`; True when it should alert.

        One alert per episode: a condition that keeps holding (no gap of `cooldown` steps) alerts
        again only if its severity rises, so a 40-step slide is one warning, not four.
        """
        rank = SEVERITY_RANK[severity]
        if rank >= SEVERITY_RANK["warning"]:
            self.active[detector or self.name] = step
        return self.episodes.starts(step, key, rank)

    def emit(
        self, f: StepFeatures, severity: str, *args: Any, key: Any = None, **kwargs: Any
    ) -> Alert | None:
        """`alert(f, severity, *args, **kwargs)`, unless this is the same episode of a condition that
        already alerted."""
        if not self.holds(f.step, severity, key, kwargs.get("detector")):
            return None
        return self.alert(f, severity, *args, **kwargs)

    def alert(
        self,
        f: StepFeatures,
        severity: str,
        message: str,
        value: float,
        baseline: float,
        detector: str | None = None,
        **evidence: Any,
    ) -> Alert:
        """The alert itself (`emit` also applies the cooldown; a detector that calls `holds` itself
        uses this directly)."""
        evidence = {"step": f.step, **evidence}
        return Alert(
            step=f.step,
            detector=detector or self.name,
            severity=severity,
            message=message,
            value=float(value),
            baseline=float(baseline),
            evidence=evidence,
            family=self.family,
        )
