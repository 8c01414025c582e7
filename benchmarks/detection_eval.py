"""Do the detectors warn before collapse, and stay quiet on stable runs? Over seeds, on real runs.

Reads (or, with --train, first runs) the bundled trainer's runs ROOT/<recipe>-s<seed> for the
collapsing and the stable recipes, then for each run:
  * `scan` (the same detectors as live): collapse onset (fixed definition) and what came with it
    (`onset_kind`), first critical, lead;
  * a scalar-only baseline monitor, as simple peers do: after the same warm-up, alarm when token
    entropy leaves [0.5x, 2x] its warm-up mean, KL exceeds 0.1 nats, or the 5-step mean reward falls
    below 80% of its running peak; and the same monitor tightened until no stable run alarms
    (`baseline_at_zero_false_alarms`), so leads can be compared at equal false alarms;
  * for every statistic (control-token series, structural shares, entropy, KL, ...), the first step
    it moved (>= 3 robust z on two consecutive steps against its own baseline; probabilities must
    also be >= 3x baseline), to find out which statistics really lead over seeds.
Writes plots to --plots (docs/img/detect-*.png) and prints a JSON object as its last line.

A run folder that is gone but whose feature archive ROOT/<recipe>-s<seed>.parquet is there (written
with --archive; docs/data/features/ keeps those of the latest rounds) is replayed from the archive:
the same alerts, onsets and leads, without the evidence rollouts.

Usage: .venv/bin/python benchmarks/detection_eval.py --root /work/runs/repro [--seeds 0 1 2] [--train]
       [--archive DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from collapsewatch.diagnostics.baseline import RobustBaseline, log10_prob, logit_rate, positive_log
from collapsewatch.diagnostics.detector_base import PRESETS, MonitorConfig
from collapsewatch.diagnostics.feature_archive import load_archive, save_archive
from collapsewatch.diagnostics.features import StepFeatures, parse_control_stat
from collapsewatch.diagnostics.onset import collapse_onset, success_series
from collapsewatch.diagnostics.scan import RunInputs, findings_of, read_inputs, step_features_of

WARMUP = MonitorConfig.warmup
SKIP = ("step", "lr", "seq/count", "tokens/count")


def run_dir(root: Path, recipe: str, seed: int) -> Path:
    return root / f"{recipe}-s{seed}"


def archive_path(root: Path, recipe: str, seed: int) -> Path:
    return root / f"{recipe}-s{seed}.parquet"


def read_run(
    root: Path, recipe: str, seed: int, max_classified: int | None = None
) -> tuple[RunInputs, list[StepFeatures]] | None:
    """A run's inputs and features: from its folder, else from its feature archive, else None."""
    path = run_dir(root, recipe, seed)
    if (path / "run.json").exists():
        inputs = read_inputs(path)
        return inputs, step_features_of(inputs, max_classified)
    archived = archive_path(root, recipe, seed)
    return load_archive(archived) if archived.exists() else None


def ensure_run(root: Path, recipe: str, seed: int, steps: int | None, train: bool) -> None:
    """Train the run when it is missing and `train` asks for it."""
    if not train or (run_dir(root, recipe, seed) / "run.json").exists():
        return
    cmd = ["nice", "-n", "10", sys.executable, "-m", "collapsewatch.cli", "train", "--recipe", recipe,
           "--seed", str(seed), "--out", str(root), "--no-progress", "--threads", "1"]  # fmt: skip
    if steps:
        cmd += ["--steps", str(steps)]
    print(f"training {recipe} seed {seed} ...", file=sys.stderr)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@dataclasses.dataclass(frozen=True)
class SelectedRun:
    """One run picked by `add_run_selection`'s flags, with its success onset."""

    name: str  # <root folder>/<run folder>
    recipe: str
    group: str  # "collapsing", "control" (a stable recipe without supervision) or "supervised"
    inputs: RunInputs
    features: list[StepFeatures]
    onset: int | None


def add_run_selection(ap: argparse.ArgumentParser) -> None:
    """The flags that pick runs for the per-run plot scripts: roots, recipes by kind, seeds."""
    ap.add_argument("--root", nargs="+", required=True, help="one or more roots of runs or archives")
    ap.add_argument("--collapsing", nargs="+", default=["collapse"], help="recipes that collapse")
    ap.add_argument("--stable", nargs="+", default=["off-policy", "sync-sft", "interleaved"])
    ap.add_argument("--control", nargs="*", default=[], help="recipes among --stable without supervision")
    ap.add_argument("--seeds", nargs="+", type=int, required=True)


def selected_runs(args: argparse.Namespace) -> Iterator[SelectedRun]:
    """The runs `add_run_selection`'s flags name that exist (folder or archive), in flag order."""
    for root in map(Path, args.root):
        for recipe in [*args.collapsing, *args.stable]:
            group = "control" if recipe in args.control else "supervised"
            if recipe in args.collapsing:
                group = "collapsing"
            for seed in args.seeds:
                found = read_run(root, recipe, seed)
                if found is None:
                    continue
                table = features_table(found[1])
                onset = collapse_onset(table["step"].to_numpy(), success_of(table)[0])
                name = f"{root.name}/{run_dir(root, recipe, seed).name}"
                yield SelectedRun(name, recipe, group, found[0], found[1], onset)


def features_table(features: Iterable[StepFeatures]) -> pd.DataFrame:
    """Wide per-step table: every scalar plus the detectors' derived statistics."""
    return pd.DataFrame([{"step": f.step, **f.derived, **f.scalars} for f in features])


def success_of(t: pd.DataFrame) -> tuple[np.ndarray, str]:
    found = success_series(t)
    if found is None:
        return np.full(len(t), np.nan), "none"
    return found[1], found[2]


def baseline_alarm(
    t: pd.DataFrame,
    warmup: int = WARMUP,
    reward_frac: float = 0.8,
    entropy_band: float = 2.0,
    kl_max: float = 0.1,
) -> int | None:
    """First step the scalar-only monitor alarms: entropy outside [1/band, band] x its warm-up mean,
    KL above `kl_max` nats, or the 5-step mean reward below `reward_frac` of its running peak."""
    steps = t["step"].to_numpy()
    ent_name = next((n for n in ("entropy/mean", "tokens/entropy_mean") if n in t.columns), None)
    ent = t[ent_name].to_numpy(dtype=float) if ent_name else np.full(len(t), np.nan)
    kl = t["kl/mean"].to_numpy(dtype=float) if "kl/mean" in t.columns else np.full(len(t), np.nan)
    reward = t["reward/mean"].to_numpy(dtype=float) if "reward/mean" in t.columns else success_of(t)[0]
    warm_ent = np.nanmean(ent[:warmup]) if np.isfinite(ent[:warmup]).any() else np.nan
    mean5 = pd.Series(reward).rolling(5, min_periods=5).mean().to_numpy()
    peak = np.fmax.accumulate(np.nan_to_num(mean5, nan=-np.inf))
    for i in range(warmup, len(t)):
        if (
            np.isfinite(ent[i])
            and np.isfinite(warm_ent)
            and not warm_ent / entropy_band <= ent[i] <= entropy_band * warm_ent
        ):
            return int(steps[i])
        if np.isfinite(kl[i]) and kl[i] > kl_max:
            return int(steps[i])
        if np.isfinite(mean5[i]) and peak[i] > 0 and mean5[i] < reward_frac * peak[i]:
            return int(steps[i])
    return None


# The scalar monitor's thresholds from loose to strict; `quiet_baseline` takes the first that stays
# silent on every stable run, so its lead is compared with ours at the same false-alarm count.
BASELINE_SWEEP = [
    {"reward_frac": r, "entropy_band": b, "kl_max": k}
    for r in (0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4)
    for b in (2.0, 3.0, 5.0)
    for k in (0.1, 0.3, 1.0)
]


def alarm_leads(
    alarms: Mapping[str, int | None], onsets: Mapping[str, int | None], collapsed: list[str]
) -> list[int]:
    """Onset minus alarm step, for each collapsed run that alarmed (>= 0: caught by its onset)."""
    return [onsets[n] - alarms[n] for n in collapsed if alarms[n] is not None]


def quiet_baseline(tables: dict[str, tuple[str, pd.DataFrame, int | None]], warmup: int) -> dict | None:
    """The most sensitive BASELINE_SWEEP setting with no alarm on a stable run, and its leads."""
    onsets = {n: onset for n, (_, _, onset) in tables.items()}
    collapsed = [n for n, (kind, _, onset) in tables.items() if kind == "collapsing" and onset is not None]
    for setting in BASELINE_SWEEP:
        alarms = {name: baseline_alarm(t, warmup, **setting) for name, (_, t, _) in tables.items()}
        if any(alarms[n] is not None for n, (kind, _, _) in tables.items() if kind == "stable"):
            continue
        leads = alarm_leads(alarms, onsets, collapsed)
        return {
            **setting,
            "median_lead_steps": float(np.median(leads)) if leads else None,
            "detected_by_onset_fraction": round(sum(x >= 0 for x in leads) / max(len(collapsed), 1), 3),
            "alarms": alarms,
        }
    return None


def _transform(name: str):
    if name.startswith("ctrl/"):
        return lambda x: log10_prob(x, 1e-6), 0.15
    if name.startswith(
        ("state/", "groups/", "success/", "seq/success", "clip/frac", "length/truncated")
    ) or name.endswith("_frac"):
        return logit_rate, 0.3
    if name.startswith(("kl/", "grad_norm", "entropy/", "tokens/entropy", "ratio/")):
        return positive_log, 0.1
    return (lambda x: x), None


def first_moves(t: pd.DataFrame, warmup: int = WARMUP) -> dict[str, tuple[int, str]]:
    """{series: (first step it moved, direction)}; see the module docstring for the rule."""
    out = {}
    steps = t["step"].to_numpy()
    for name in t.columns:
        if name in SKIP or name.endswith("/count"):
            continue
        parsed = parse_control_stat(name)
        fwd, min_scale = _transform(name)
        vals = pd.to_numeric(t[name], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(vals).sum() < warmup + 5:
            continue
        if min_scale is None:
            finite = vals[np.isfinite(vals)][:warmup]
            min_scale = max(0.05 * float(np.median(np.abs(finite))) if len(finite) else 0.0, 1e-9)
        base = RobustBaseline(warmup=warmup, span=20.0, min_scale=min_scale)
        streak, prev_dir = 0, 0
        for step, x in zip(steps, vals, strict=True):
            if not math.isfinite(x):
                continue
            ready = base.ready
            centre = base.center
            z = base.update(fwd(x))
            if not ready:
                continue
            direction = int(np.sign(z)) if abs(z) >= 3.0 else 0
            if parsed is not None:  # control-token probabilities: upward moves only, >= 3x baseline
                base_p = 10.0**centre - 1e-6
                if direction <= 0 or (x + 1e-6) < 3.0 * (base_p + 1e-6):
                    direction = 0
            streak = streak + 1 if direction != 0 and direction == prev_dir else (1 if direction else 0)
            prev_dir = direction
            if streak >= 2:
                out[name] = (int(step) - 1, "up" if direction > 0 else "down")
                break
    return out


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_run(name: str, t: pd.DataFrame, findings, baseline_step, out_dir: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    succ, succ_name = success_of(t)
    steps = t["step"].to_numpy()
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(steps, succ, label=succ_name)
    axes[0].plot(steps, pd.Series(succ).rolling(5, min_periods=5).mean(), label="5-step mean", lw=2)
    axes[0].set_ylabel("success")
    for col, colour in (("state/text_pollution", "tab:orange"), ("state/full_collapse", "tab:red")):
        if col in t.columns:
            axes[1].plot(steps, t[col], label=col.split("/")[1], color=colour)
    if "groups/broken_mode_frac" in t.columns:
        axes[1].step(steps, t["groups/broken_mode_frac"], where="mid", color="tab:purple", lw=1,
                     label="groups all broken (share of groups)")  # fmt: skip
    axes[1].set_ylabel("share")
    ctrl_cols = [
        c
        for c in t.columns
        if parse_control_stat(c) and parse_control_stat(c)[2] in ("mean", "unexpected_mean")
    ]
    shown = [f"ctrl/{r['token']}/{r['position_type']}/{r['stat']}" for r in findings.root_cause[:2]]
    shown.append(
        "ctrl/<|im_end|>/after_open_tag/mean"
    )  # the bare-tag mechanism: end of turn right after <tool_call>
    for c in shown or ctrl_cols[:3]:
        if c in t.columns:
            axes[2].semilogy(steps, t[c].clip(lower=1e-8), label=c[5:])
    axes[2].set_ylabel("p(control)")
    for col in ("entropy/mean", "tokens/entropy_mean"):
        if col in t.columns:
            axes[3].plot(steps, t[col], label=col)
            break
    axes[3].set_ylabel("entropy (nats)")
    axes[3].set_xlabel("step")
    for ax in axes:
        if findings.collapse_onset_step is not None:
            ax.axvline(findings.collapse_onset_step, color="k", ls="--", lw=1, label="onset")
        if findings.first_critical_step is not None:
            ax.axvline(findings.first_critical_step, color="tab:red", lw=1, label="first critical")
        if baseline_step is not None:
            ax.axvline(baseline_step, color="tab:gray", ls=":", lw=1, label="baseline alarm")
        ax.legend(fontsize=6, loc="best")
    axes[0].set_title(name)
    path = save_figure(fig, out_dir / f"detect-{name}.png", dpi=80)
    return str(path)


def plot_leads(leads: dict[str, list[int]], out_dir: Path, top: int = 20) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    items = sorted(leads.items(), key=lambda kv: -np.median(kv[1]))[:top]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(items) + 1.5))
    for i, (_name, vals) in enumerate(items):
        ax.scatter(vals, [i] * len(vals), s=18)
        ax.plot([np.median(vals)], [i], "k|", ms=12)
    ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=7)
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("steps before collapse onset (first move); one dot per collapsing run")
    ax.invert_yaxis()
    return str(save_figure(fig, out_dir / "detect-leads.png", dpi=80))


def issue_figures(per_run: list[dict]) -> dict:
    """The issue's headline figures over per-run rows, by its fixed definitions: a collapse is a run
    of a collapsing recipe that crossed the onset line, detected where its first critical alert is at
    or before the onset; the median lead is over the collapses with a critical alert (late ones
    negative). Shared with pooled_eval.py, so pooled and per-round figures cannot drift apart."""
    collapsed = [r for r in per_run if r["kind"] == "collapsing" and r["onset"] is not None]
    stable = [r for r in per_run if r["kind"] == "stable"]
    leads = [r["lead"] for r in collapsed if r["lead"] is not None]
    detected = sum(x >= 0 for x in leads)
    return {
        "collapsing_runs": len(collapsed),
        "detected_by_onset": detected,
        "detected_by_onset_fraction": round(detected / len(collapsed), 3) if collapsed else None,
        "median_lead_steps": float(np.median(leads)) if leads else None,
        "stable_runs": len(stable),
        "stable_runs_with_critical": sum(1 for r in stable if r["first_critical"] is not None),
    }


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% interval for a rate from few runs: a point estimate over 7 runs says little on its own."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)]


def median_interval(values: list[float], draws: int = 5000, seed: int = 0) -> list[float] | None:
    """Percentile-bootstrap 95% interval of a median (fixed seed, so reruns print the same)."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    sample = rng.choice(np.asarray(values, dtype=float), size=(draws, len(values)), replace=True)
    lo, hi = np.percentile(np.median(sample, axis=1), [2.5, 97.5])
    return [float(lo), float(hi)]


def _paired_difference(collapsed: list[dict]) -> dict | None:
    diffs = [
        r["lead"] - r["baseline_lead"]
        for r in collapsed
        if r["lead"] is not None and r["baseline_lead"] is not None
    ]
    if not diffs:
        return None
    return {
        "median": float(np.median(diffs)),
        "ci95": median_interval(diffs),
        "runs_ahead": sum(d > 0 for d in diffs),
        "runs": len(diffs),
    }


def _probe_summary(per_run: list[dict]) -> dict | None:
    """The reference-probe detectors on the runs that have a probe: how early they warn, and where."""
    probed = [r for r in per_run if r["has_probe"]]
    if not probed:
        return None
    collapsed = [r for r in probed if r["kind"] == "collapsing" and r["onset"] is not None]
    quiet = [r for r in probed if r["kind"] == "stable" and r["onset"] is None]
    warned = [r for r in collapsed if r["first_probe_alert"] is not None]
    drifted = [r["onset"] - r["first_text_drift"] for r in collapsed if r["first_text_drift"] is not None]
    by_onset = [r["onset"] - r["first_probe_alert"] for r in warned]
    by_format = [r["format_onset"] - r["first_probe_alert"] for r in warned if r["format_onset"] is not None]
    return {
        "runs_with_probe": len(probed),
        "collapsing_runs": len(collapsed),
        "collapsing_runs_warned_by_onset": sum(v >= 0 for v in by_onset),
        "median_probe_lead_over_onset": float(np.median(by_onset)) if by_onset else None,
        "median_probe_lead_over_format_onset": float(np.median(by_format)) if by_format else None,
        "never_collapsed_stable_runs": len(quiet),
        "never_collapsed_stable_runs_warned": sum(r["first_probe_alert"] is not None for r in quiet),
        "collapsing_runs_text_drift_by_onset": sum(v >= 0 for v in drifted),
        "median_text_drift_lead_over_onset": float(np.median(drifted)) if drifted else None,
        "never_collapsed_stable_runs_text_drift": sum(r["first_text_drift"] is not None for r in quiet),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/work/runs/repro")
    ap.add_argument("--collapsing", nargs="+", default=["collapse"])
    ap.add_argument("--stable", nargs="+", default=["interleaved"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="RL steps for runs trained here")
    ap.add_argument("--train", action="store_true", help="train missing runs (sequentially, 1 thread)")
    ap.add_argument(
        "--archive",
        default="",
        metavar="DIR",
        help="also save each run's detector inputs to DIR/<run>.parquet (diagnostics.feature_archive); "
        "a ROOT that holds such files in place of run folders is read from them",
    )
    ap.add_argument("--plots", default="docs/img", help="folder for detect-*.png ('' for none)")
    ap.add_argument(
        "--warmup", type=int, default=WARMUP, help="warm-up steps (detectors, baseline, first moves)"
    )
    ap.add_argument(
        "--preset",
        type=str.upper,
        choices=sorted(PRESETS),
        default="A",
        help="a named setting (docs/detection.md, 'In short'); --set applies on top",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other MonitorConfig overrides, e.g. --set ctrl_page_series=2 --set verdict_requires= (tuples comma-separated)",
    )
    args = ap.parse_args()
    overrides = {**PRESETS[args.preset], **dict(MonitorConfig.parse_setting(kv) for kv in args.set)}
    monitor_config = {"warmup": args.warmup, **overrides}
    max_classified = MonitorConfig.from_any(monitor_config).max_classified
    root = Path(args.root)
    plot_dir = Path(args.plots) if args.plots else None
    if plot_dir:
        plot_dir.mkdir(parents=True, exist_ok=True)

    per_run = []
    tables: dict[str, tuple[str, pd.DataFrame, int | None]] = {}
    leads: dict[str, list[int]] = defaultdict(list)
    leads_vs_break: dict[str, list[int]] = defaultdict(list)
    stable_moves: dict[str, int] = defaultdict(int)
    for kind, recipes in (("collapsing", args.collapsing), ("stable", args.stable)):
        for recipe in recipes:
            for seed in args.seeds:
                ensure_run(root, recipe, seed, args.steps, args.train)
                found = read_run(root, recipe, seed, max_classified)
                if found is None:
                    print(f"missing run {run_dir(root, recipe, seed)} (use --train)", file=sys.stderr)
                    continue
                inputs, features = found  # read once, features once: the findings and the table share them
                path = run_dir(root, recipe, seed)
                if args.archive:
                    save_archive(inputs, features, archive_path(Path(args.archive), recipe, seed))
                findings = findings_of(inputs, features, monitor_config)
                t = features_table(features)
                base = baseline_alarm(t, args.warmup)
                succ, succ_name = success_of(t)
                onset = collapse_onset(t["step"].to_numpy(), succ)
                tables[path.name] = (kind, t, onset)
                # secondary, for runs whose success never got high: the same rule on the healthy-turn share
                format_onset = findings.format_onset_step
                moves = first_moves(t, args.warmup)
                format_break = moves.get("state/broken_turns", (None, ""))[0]
                if kind == "collapsing" and onset is not None:
                    for name, (step, _) in moves.items():
                        leads[name].append(onset - step)
                        if format_break is not None:
                            leads_vs_break[name].append(format_break - step)
                if kind == "stable":
                    for name in moves:
                        stable_moves[name] += 1
                crit = findings.first_critical_step
                # alert fatigue: the warnings a user reads (on a collapsing run, those up to its onset)
                until = onset if kind == "collapsing" and onset is not None else math.inf
                warnings = [
                    a.detector for a in findings.alerts if a.severity == "warning" and a.step <= until
                ]
                mean5 = pd.Series(succ).rolling(5, min_periods=5).mean()
                per_run.append({
                    "run": path.name, "kind": kind, "steps": findings.steps, "onset": onset, "onset_series": succ_name,
                    "peak_success_5step": None if mean5.isna().all() else round(float(mean5.max()), 3),
                    "first_warning": findings.first_warning_step, "first_critical": crit,
                    "lead": None if onset is None or crit is None else onset - crit,
                    "format_break": format_break,
                    "format_onset": format_onset,
                    # what came with the onset: format_break, text_drift or success_only (scan's onset_context)
                    "onset_kind": findings.onset_context["kind"] if findings.onset_context else None,
                    "lead_vs_format_onset": None if format_onset is None or crit is None else format_onset - crit,
                    "baseline_lead_vs_format_onset": None if format_onset is None or base is None else format_onset - base,
                    "first_control_move": min((st for n, (st, _) in moves.items() if n.startswith("ctrl/")), default=None),
                    "has_probe": any(c.startswith("probe/") for c in t.columns),
                    "first_probe_alert": min((a.step for a in findings.alerts if a.detector == "probe_drift" and a.rank >= 1), default=None),
                    "first_text_drift": min((a.step for a in findings.alerts if a.detector == "probe_text_drift"), default=None),
                    "baseline_alarm": base, "baseline_lead": None if onset is None or base is None else onset - base,
                    "critical_detectors": sorted({a.detector for a in findings.alerts if a.severity == "critical"}),
                    "first_alerts": [(a.step, a.detector) for a in findings.alerts if a.rank >= 1][:6],
                    "warnings": len(warnings), "warnings_by_detector": dict(Counter(warnings)),
                    "root_cause": findings.root_cause[0]["evidence"] if findings.root_cause else None,
                })  # fmt: skip
                if plot_dir:
                    plot_run(
                        f"{path.name}-w{args.warmup}" if args.warmup != WARMUP else path.name,
                        t,
                        findings,
                        base,
                        plot_dir,
                    )
    if plot_dir:
        plot_leads(leads, plot_dir)

    collapsed = [r for r in per_run if r["kind"] == "collapsing" and r["onset"] is not None]
    stable = [r for r in per_run if r["kind"] == "stable"]
    lead_vals = [r["lead"] for r in collapsed if r["lead"] is not None]
    base_vals = [r["baseline_lead"] for r in collapsed if r["baseline_lead"] is not None]
    n_collapsed = max(len(collapsed), 1)
    consistent = {
        name: {
            "median_lead": float(np.median(v)),
            "runs_moved_before_onset": int(sum(x > 0 for x in v)),
            "stable_runs_moved": stable_moves.get(name, 0),
        }
        for name, v in leads.items()
    }
    leading = sorted(
        (
            n
            for n, s in consistent.items()
            if s["runs_moved_before_onset"] >= max(2, math.ceil(0.66 * len(collapsed)))
        ),
        key=lambda n: (consistent[n]["stable_runs_moved"], -consistent[n]["median_lead"]),
    )
    for r in per_run:
        print(json.dumps(r, default=str), file=sys.stderr)
    figures = issue_figures(per_run)
    result = {
        "benchmark": "detection_eval",
        "root": str(root),
        "collapsing_recipes": args.collapsing,
        "stable_recipes": args.stable,
        "seeds": args.seeds,
        "warmup": args.warmup,
        "config_overrides": overrides,
        "collapsing_runs": figures["collapsing_runs"],
        "collapsing_recipe_runs_without_collapse": sum(
            1 for r in per_run if r["kind"] == "collapsing" and r["onset"] is None
        ),
        "detected_by_onset_fraction": figures["detected_by_onset_fraction"],
        "median_lead_steps": figures["median_lead_steps"],
        "stable_runs": figures["stable_runs"],
        "stable_runs_with_critical": figures["stable_runs_with_critical"],
        # how much the figures above can be trusted, given how few runs there are
        "ci95": {
            "detected_by_onset_fraction": wilson_interval(
                figures["detected_by_onset"], figures["collapsing_runs"]
            ),
            "median_lead_steps": median_interval(lead_vals),
            "stable_run_critical_rate": wilson_interval(
                figures["stable_runs_with_critical"], figures["stable_runs"]
            ),
            "baseline_median_lead_steps": median_interval(base_vals),
        },
        # per run, our lead minus the baseline's (both alarms present): > 0 where we warn earlier
        "lead_minus_baseline": _paired_difference(collapsed),
        "stable_runs_that_collapsed": sum(1 for r in stable if r["onset"] is not None),
        # the onsets by what came with them: a stable recipe's crossing with neither a format break
        # nor a drift of the expert's text (success_only) is often noise at a low success level
        "onset_kinds": {
            kind: dict(
                Counter(r["onset_kind"] for r in per_run if r["kind"] == kind and r["onset"] is not None)
            )
            for kind in ("collapsing", "stable")
        },
        # warnings (not pages) per stable-recipe run, over the whole run: alert fatigue
        "warnings_per_stable_run": round(float(np.mean([r["warnings"] for r in stable])), 2)
        if stable
        else None,
        "baseline_median_lead_steps": float(np.median(base_vals)) if base_vals else None,
        "baseline_detected_by_onset_fraction": round(sum(v >= 0 for v in base_vals) / n_collapsed, 3)
        if collapsed
        else None,
        "baseline_stable_runs_with_alarm": sum(1 for r in stable if r["baseline_alarm"] is not None),
        # the same scalar monitor with its thresholds tightened until no stable run alarms
        "baseline_at_zero_false_alarms": quiet_baseline(tables, args.warmup),
        "leading_statistics": [{"series": n, **consistent[n]} for n in leading[:12]],
        "control_series_lead_over_format_break": {
            n: {
                "median": float(np.median(v)),
                "runs": len(v),
                "runs_before_break": int(sum(x > 0 for x in v)),
            }
            for n, v in sorted(leads_vs_break.items(), key=lambda kv: -np.median(kv[1]))
            if n.startswith("ctrl/")
        },
        "probe": _probe_summary(per_run),
        "runs": per_run,
    }
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
