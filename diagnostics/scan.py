"""Post-mortem: replay the live detectors over a stored run and say when and why it collapsed.

`scan` feeds every stored step, in order, through the same LiveMonitor the hook runs during
training, then adds the fixed collapse onset (diagnostics.onset), the lead time of the first
critical alert, and the control-token root-cause ranking.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.features import StepFeatures, sequence_arrays, step_features
from collapsewatch.diagnostics.live import LiveMonitor
from collapsewatch.diagnostics.onset import SUCCESS_NAMES, collapse_onset, success_series
from collapsewatch.diagnostics.onset_context import describe_onset
from collapsewatch.diagnostics.root_cause import rank_control_tokens
from collapsewatch.diagnostics.token_stats import control_stats_from_tokens
from collapsewatch.errors import UserError
from collapsewatch.schema import SEQUENCES_SCHEMA

# Sequence columns the detectors read (prompt, info and reward components are not needed).
SEQUENCE_COLUMNS = tuple(
    n for n in SEQUENCES_SCHEMA.names if n not in ("prompt", "info", "reward_components")
)
STATE_NAMES = (
    "state/healthy_tool_call",
    "state/healthy_response",
    "state/text_pollution",
    "state/full_collapse",
)
TIMELINE_EXTRAS = ("groups/broken_mode_frac", "entropy/mean", "tokens/entropy_mean", "kl/mean")


@dataclass
class Findings:
    """What `scan` found. `to_dict()` is the JSON `collapsewatch scan --json` prints."""

    run: str
    path: str
    steps: int
    collapse_onset_step: int | None
    onset_series: str | None
    # the same fixed rule on the share of healthy turns: when the format broke (it can come before,
    # with or after the success onset, and is the only onset a run with near-zero success has)
    format_onset_step: int | None
    first_critical_step: int | None
    first_warning_step: int | None
    lead_steps: int | None
    alerts: list[Alert]
    root_cause: list[dict]
    warnings: list[str] = field(default_factory=list)
    # what came with the onset (diagnostics.onset_context): a format break, a text drift, or neither
    onset_context: dict | None = None
    timeline: pd.DataFrame | None = None  # per step: success series, structural shares, confidence
    per_step: dict[int, dict[str, float]] | None = None  # the scalars the detectors saw, by step
    # run.json's record of each resume (store/resume.py): where the run continued, what changed
    resumes: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        skip = ("alerts", "timeline", "per_step", "root_cause")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["alerts"] = [a.to_dict() for a in self.alerts]
        d["root_cause"] = [_clean(r) for r in self.root_cause]
        return d


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def open_any_run(run_or_path: Any):
    from collapsewatch.store.reader import Run, open_run

    if isinstance(run_or_path, Run):
        return run_or_path
    if isinstance(run_or_path, (str, os.PathLike)):
        return open_run(run_or_path)
    raise UserError(f"scan needs a run directory or a Run, got {type(run_or_path).__name__}")


def per_step_scalars(long: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Long steps table -> {step: {name: value}} (last value per name and step, across ranks)."""
    if long.empty:
        return {}
    long = long.sort_values(["step", "time"], kind="stable")
    out: dict[int, dict[str, float]] = {}
    steps = long["step"].to_numpy()
    names = long["name"].to_numpy()
    values = long["value"].to_numpy(dtype=float)
    bounds = np.flatnonzero(np.diff(steps)) + 1
    for chunk in np.split(np.arange(len(steps)), bounds):
        if len(chunk):
            out[int(steps[chunk[0]])] = dict(zip(names[chunk].tolist(), values[chunk].tolist(), strict=True))
    return out


@dataclass
class RunInputs:
    """A stored run read once: what every replay of the detectors over it needs."""

    run: Any  # store.reader.Run
    per_step: dict[int, dict[str, float]]
    sequences: pd.DataFrame
    notes: list[str]


def read_inputs(run_or_path: Any, use_tokens: bool | None = None) -> RunInputs:
    """Read a run's scalars and rollouts (see `scan` for `use_tokens`). Bad input raises UserError."""
    run = open_any_run(run_or_path)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        long = run.scalars()
        seqs = run.sequences(columns=[*SEQUENCE_COLUMNS, "rank"])
        per_step = per_step_scalars(long)
        has_ctrl = any(n.startswith("ctrl/") for n in long["name"].unique()) if not long.empty else False
        if use_tokens or (use_tokens is None and not has_ctrl):
            token_stats = control_stats_from_tokens(run)
            if token_stats:
                notes.append("control-token statistics recomputed from the captured token rows")
            for step, stats in token_stats.items():
                merged = dict(stats)
                merged.update(per_step.get(step, {}))
                per_step[step] = merged
    notes += [str(w.message) for w in caught]
    if not per_step and seqs.empty:
        raise UserError(f"run {run.path} has no steps yet (nothing to scan)")
    if run.status == "crashed":
        notes.append("the run's writer crashed or vanished; findings cover the steps it wrote")
    return RunInputs(run, per_step, seqs, notes)


def iter_step_features(
    per_step: Mapping[int, Mapping[str, float]],
    sequences: pd.DataFrame | None,
    max_classified: int,
    progress: bool = False,
) -> Iterator[StepFeatures]:
    """Every stored step's features, in step order. With reading the run, this is 60-70% of a
    scan of a bundled-trainer run (the structural state of each rollout), so a sweep over detector
    settings computes it once per run (`step_features_of`, then `replay_features` per setting). A
    step whose features cannot be computed is skipped, as the live monitor skips it."""
    by_step: dict[int, tuple[int, int]] = {}
    arrays: dict[str, np.ndarray] = {}
    if sequences is not None and len(sequences):
        sequences = sequences.sort_values("step", kind="stable").reset_index(drop=True)
        arrays = sequence_arrays(sequences)  # converted once, sliced per step
        seq_steps = sequences["step"].to_numpy()
        uniq, starts = np.unique(seq_steps, return_index=True)
        ends = np.append(starts[1:], len(seq_steps))
        by_step = {int(s): (int(a), int(b)) for s, a, b in zip(uniq, starts, ends, strict=True)}
    steps = sorted(set(per_step) | set(by_step))
    bar = None
    if progress and len(steps) > 200:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("scanning steps", total=len(steps))
    try:
        for step in steps:
            span = by_step.get(step)
            rows = cols = None
            if span is not None and sequences is not None:
                a, b = span
                rows, cols = sequences.iloc[a:b], {k: v[a:b] for k, v in arrays.items()}
            try:
                f = step_features(step, per_step.get(step, {}), rows, max_classified, cols)
            except Exception:  # noqa: BLE001 - one odd step must not end the post-mortem
                f = None
            if bar is not None:
                bar.advance(task)
            if f is not None:
                yield f
    finally:
        if bar is not None:
            bar.stop()


def step_features_of(inputs: RunInputs, max_classified: int | None = None) -> list[StepFeatures]:
    """A run's features, kept for replaying under several settings (`replay_features`)."""
    limit = MonitorConfig().max_classified if max_classified is None else max_classified
    return list(iter_step_features(inputs.per_step, inputs.sequences, limit))


def replay_features(
    features: Iterable[StepFeatures],
    control_tokens: list | None = None,
    config: MonitorConfig | Mapping[str, Any] | None = None,
) -> tuple[list[Alert], pd.DataFrame]:
    """The detectors and the verdict over a run's features (computed once, then replayed under as
    many settings as wanted). Returns the alerts and a per-step timeline frame. The features must
    have been computed with the config's `max_classified`."""
    monitor = LiveMonitor(control_tokens=control_tokens, config=config, source="scan")
    rows = []
    for f in features:
        monitor.judge(f)
        row = {"step": f.step, "confidence": monitor.confidence}
        for n in SUCCESS_NAMES + STATE_NAMES + TIMELINE_EXTRAS:
            row[n] = f.get(n)
        rows.append(row)
    return monitor.alerts, pd.DataFrame(rows)


def first_critical_step(alerts: Iterable[Alert]) -> int | None:
    """The step of the first page (critical alert), or None."""
    return min((a.step for a in alerts if a.severity == "critical"), default=None)


def format_onset_from_timeline(timeline: pd.DataFrame) -> int | None:
    healthy_names = ("state/healthy_tool_call", "state/healthy_response")
    if timeline.empty or not all(n in timeline.columns for n in healthy_names):
        return None
    healthy = sum(pd.to_numeric(timeline[n], errors="coerce") for n in healthy_names)
    return collapse_onset(timeline["step"].to_numpy(), healthy.to_numpy(dtype=float))


def scan(
    run_or_path: Any,
    config: MonitorConfig | Mapping[str, Any] | None = None,
    progress: bool = False,
    use_tokens: bool | None = None,
) -> Findings:
    """Replay the detectors over a run. Bad input raises UserError (one line); a partly readable run
    (a corrupt file skipped) gives findings with a warning. `use_tokens=None` recomputes control-token
    statistics from the tokens table only when the run has no `ctrl/...` scalars."""
    inputs = read_inputs(run_or_path, use_tokens)
    limit = MonitorConfig.from_any(config).max_classified
    features = iter_step_features(inputs.per_step, inputs.sequences, limit, progress)
    return findings_of(inputs, features, config)


def findings_of(
    inputs: RunInputs,
    features: Iterable[StepFeatures],
    config: MonitorConfig | Mapping[str, Any] | None = None,
) -> Findings:
    """`scan`'s findings from a run read once and its features, so that a caller that also needs
    the features (detection_eval's per-step table) computes them only once."""
    run, per_step, notes = inputs.run, inputs.per_step, list(inputs.notes)
    monitor = MonitorConfig.from_any(config)
    alerts, timeline = replay_features(features, run.control_tokens, monitor)
    found = success_series(timeline)
    steps, success, series = found if found is not None else (None, None, None)
    onset = collapse_onset(steps, success) if found is not None else None
    format_onset = format_onset_from_timeline(timeline)
    context = None
    if onset is not None:  # what came with it: a format break, a drift of the expert's text, or neither
        context = describe_onset(steps, success, onset, format_onset, per_step, monitor)
    if series in ("reward/mean", "seq/reward_mean"):
        notes.append("no success rate in this run: collapse onset computed on the mean reward")
    warns = [a.step for a in alerts if a.rank >= 1]
    first_critical = first_critical_step(alerts)
    lead = onset - first_critical if onset is not None and first_critical is not None else None
    ranking = rank_control_tokens(per_step, onset, warmup=monitor.warmup)
    return Findings(
        run=run.name,
        path=str(run.path),
        steps=len(timeline),
        collapse_onset_step=onset,
        onset_series=series,
        format_onset_step=format_onset,
        first_critical_step=first_critical,
        first_warning_step=min(warns) if warns else None,
        lead_steps=lead,
        alerts=alerts,
        root_cause=ranking,
        warnings=notes,
        onset_context=context,
        timeline=timeline,
        per_step=per_step,
        resumes=[r for r in (getattr(run, "meta", {}) or {}).get("resumes") or [] if isinstance(r, dict)],
    )
