"""The success slide's two ratios, run by run: where collapses and supervised runs go (rule F).

The success slide (diagnostics/success_slide.py; rule F of docs/detection.md, item 27) holds when
the 5-step success mean is below `slide_success_drop` of its running peak while the 5-step entropy
mean is above `slide_entropy_rise` x its warm-up mean, on `slide_persist` consecutive steps, in a
run without an SFT loss. This replays the detector itself over each run (ROOT/<recipe>-s<seed>, a
run folder or its feature archive) and draws the two ratios against each other, step by step: one
panel for the runs of the collapsing recipes up to their onset (marked), one for the other runs
(all steps; runs that log an SFT loss dashed, since F is not evaluated there), with F's region
shaded. Prints, per run, the onset, the first step F's condition held (`slide_step`) and the
largest entropy ratio while success was below the drop; the last line is one JSON object.

Usage: .venv/bin/python benchmarks/success_slide_plot.py --root docs/data/features/r26 \
    --seeds 150 151 152 153 --collapsing collapse --label "round 26" [--plot docs/img/slide-r26.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from detection_eval import add_run_selection, save_figure, selected_runs

from collapsewatch.diagnostics.detector_base import PRESETS, MonitorConfig
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.success_slide import SuccessSlide

RULE_F = {k: v for k, v in PRESETS["LSF"].items() if k not in PRESETS["LS"]}  # the slide's own setting


@dataclasses.dataclass
class SlideTrace:
    """One run's ratios per step, as the detector saw them."""

    name: str
    collapsing: bool
    onset: int | None
    sft: bool
    steps: list[int]
    success_ratio: list[float]
    entropy_ratio: list[float]
    slide_step: int | None
    control: bool = False  # a recipe without supervision that holds (`--control`, e.g. low-lr)


def trace(
    name: str,
    collapsing: bool,
    features: list[StepFeatures],
    onset: int | None,
    config: MonitorConfig,
    control: bool = False,
) -> SlideTrace:
    detector = SuccessSlide(config)
    steps, success, entropy, first = [], [], [], None
    for f in features:
        fired = detector.update(f)
        if fired and first is None:
            first = f.step
        if math.isfinite(detector.success_ratio) and detector.warmed_up:
            steps.append(f.step)
            success.append(detector.success_ratio)
            entropy.append(detector.entropy_ratio)
    return SlideTrace(name, collapsing, onset, detector.sft_seen, steps, success, entropy, first, control)


def summary(t: SlideTrace, config: MonitorConfig) -> dict:
    below = [
        e for s, e in zip(t.success_ratio, t.entropy_ratio, strict=True) if s < config.slide_success_drop
    ]
    return {
        "run": t.name,
        "collapsing_recipe": t.collapsing,
        "onset": t.onset,
        "sft": t.sft,
        "slide_step": t.slide_step,
        "max_entropy_ratio_below_drop": round(max(below), 2) if below else None,
    }


def plot(traces: list[SlideTrace], config: MonitorConfig, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, sharey=True)
    groups = (
        ("collapsing recipes, up to the onset (x)", [t for t in traces if t.collapsing]),
        ("the other recipes, all steps", [t for t in traces if not t.collapsing]),
    )
    shown = {t.name: _shown(t) for t in traces}
    x_max = max([3.0] + [float(x.max()) for x, _ in shown.values() if len(x)])
    for ax, (title, members) in zip(axes, groups, strict=True):
        ax.add_patch(
            Rectangle(
                (config.slide_entropy_rise, 0),
                x_max * 2 - config.slide_entropy_rise,
                config.slide_success_drop,
                color="tab:red",
                alpha=0.08,
            )
        )
        for t in members:
            x, y = shown[t.name]
            colour = (
                "tab:red"
                if t.collapsing
                else ("tab:gray" if t.sft else "tab:green" if t.control else "tab:blue")
            )
            ax.plot(x, y, lw=0.7, alpha=0.6, color=colour, ls="--" if t.sft else "-")
            if t.collapsing and t.onset is not None and len(x):
                ax.plot(x[-1], y[-1], "x", color=colour, ms=4)
        ax.axvline(config.slide_entropy_rise, color="black", lw=0.6, ls=":")
        ax.axhline(config.slide_success_drop, color="black", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlim(0.5, x_max * 1.1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("5-step entropy / its warm-up mean (log)")
        ax.set_title(f"{label + ': ' if label else ''}{title} ({len(members)} runs)", fontsize=8)
    handles = [
        Rectangle((0, 0), 1, 1, color="tab:red", alpha=0.15, label="F's region"),
        plt.Line2D([], [], color="tab:blue", label="no SFT loss (under L, F waits for thin groups)"),
        plt.Line2D([], [], color="tab:gray", ls="--", label="logs an SFT loss: F not evaluated"),
    ]
    if any(t.control for t in traces):
        handles.append(plt.Line2D([], [], color="tab:green", label="no supervision (control)"))
    axes[1].legend(
        handles=handles,
        fontsize=7,
        loc="lower right",
    )
    axes[0].set_ylabel("5-step success / its running peak")
    save_figure(fig, path)


def _shown(t: SlideTrace) -> tuple[np.ndarray, np.ndarray]:
    """The steps drawn: a collapsing-recipe run up to its onset, any other run whole."""
    keep = [i for i, s in enumerate(t.steps) if not (t.collapsing and t.onset is not None and s > t.onset)]
    return np.array(t.entropy_ratio)[keep], np.array(t.success_ratio)[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_selection(ap)
    ap.add_argument("--label", default="")
    ap.add_argument("--plot", default="", help="PNG path ('' for none)")
    args = ap.parse_args()
    config = MonitorConfig(**RULE_F)
    traces: list[SlideTrace] = []
    rows: list[dict] = []
    for run in selected_runs(args):
        collapsing, control = run.group == "collapsing", run.group == "control"
        traces.append(trace(run.name, collapsing, run.features, run.onset, config, control))
        rows.append(summary(traces[-1], config))
        print(json.dumps(rows[-1]))
    if not traces:
        raise SystemExit("no runs under those roots, recipes and seeds")
    if args.plot:
        plot(traces, config, Path(args.plot), args.label)
    print(json.dumps({"benchmark": "success_slide_plot", "rule": RULE_F, "runs": rows}))


if __name__ == "__main__":
    main()
