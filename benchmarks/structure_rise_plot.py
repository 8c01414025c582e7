"""The rise of broken turns over the warm-up level, run by run, with the pages at each minimum rise.

The structure family's CUSUM (`structural_shift`, diagnostics/behaviour_detectors.py) holds when the
CUSUM of the broken-turn share reaches `structure_cusum_h` and the share is at least
`structure_min_rise` above its warm-up level. This replays the detector itself over each run
(ROOT/<recipe>-s<seed>, a run folder or its feature archive) and draws that rise step by step, in
three panels: the collapsing recipes up to their onset (x), the supervised recipes, and the
recipes without supervision (`--control`, e.g. `low-lr`). Each `--rise` is one setting (the preset,
with that minimum rise); the first page (critical alert of the verdict) under each is marked on the
run's curve. Prints per run the onset, the page under each setting and the largest rise; the last
line is one JSON object. Round 30 of docs/detection.md (A at 0.15 against A20 at 0.2).

Usage: .venv/bin/python benchmarks/structure_rise_plot.py --root docs/data/features/r30 \
    --seeds 200 201 202 203 204 205 206 207 --stable off-policy sync-sft interleaved low-lr \
    --control low-lr --label "round 30" [--plot docs/img/structure-r30.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from detection_eval import SelectedRun, add_run_selection, save_figure, selected_runs

from collapsewatch.diagnostics.behaviour_detectors import StructuralShift
from collapsewatch.diagnostics.detector_base import PRESETS, MonitorConfig
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.scan import first_critical_step, replay_features

MARKERS = ("o", "x", "^", "s")  # one per --rise


@dataclasses.dataclass
class RiseTrace:
    """One run's broken-turn rise per step, as the structure detector measured it, and its pages."""

    name: str
    group: str  # "collapsing", "supervised" or "control"
    onset: int | None
    steps: list[int]
    rise: list[float]
    pages: dict[float, int | None]  # minimum rise -> first page under that setting


def rise_series(features: list[StepFeatures], config: MonitorConfig) -> tuple[list[int], list[float]]:
    """The rise the detector compares with `structure_min_rise`, on each step it compares one."""
    detector = StructuralShift(config)
    steps, rise = [], []
    for f in features:
        detector.update(f)
        if math.isfinite(detector.rise):
            steps.append(f.step)
            rise.append(detector.rise)
    return steps, rise


def trace(run: SelectedRun, preset: dict, rises: list[float]) -> RiseTrace:
    pages = {}
    for r in rises:
        config = {**preset, "structure_min_rise": r}
        alerts, _ = replay_features(run.features, run.inputs.run.control_tokens, config)
        pages[r] = first_critical_step(alerts)
    steps, rise = rise_series(run.features, MonitorConfig(**preset))
    return RiseTrace(run.name, run.group, run.onset, steps, rise, pages)


def summary(t: RiseTrace) -> dict:
    return {
        "run": t.name,
        "group": t.group,
        "onset": t.onset,
        "pages": {str(r): p for r, p in t.pages.items()},
        "max_rise": round(max(t.rise), 3) if t.rise else None,
    }


def plot(traces: list[RiseTrace], rises: list[float], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "collapsing": "collapsing recipes, up to the onset",
        "supervised": "supervised recipes",
        "control": "no supervision (control)",
    }
    groups = [g for g in titles if any(t.group == g for t in traces)]
    colours = {"collapsing": "tab:red", "supervised": "tab:blue", "control": "tab:green"}
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.0), sharey=True, squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        members = [t for t in traces if t.group == g]
        for t in members:
            keep = [i for i, s in enumerate(t.steps) if not (g == "collapsing" and t.onset and s > t.onset)]
            x, y = [t.steps[i] for i in keep], [t.rise[i] for i in keep]
            ax.plot(x, y, lw=0.8, alpha=0.6, color=colours[g])
            for r, marker in zip(rises, MARKERS, strict=False):
                page = t.pages[r]
                if page is not None and page in x:
                    ax.plot(page, y[x.index(page)], marker, color="black", ms=5, mfc="none")
        for r in rises:
            ax.axhline(r, color="black", lw=0.6, ls=":")
            ax.text(ax.get_xlim()[0], r, f" {r:.2f}", fontsize=7, va="bottom")
        ax.set_xlabel("step")
        ax.set_title(f"{label + ': ' if label else ''}{titles[g]} ({len(members)} runs)", fontsize=8)
    handles = [
        plt.Line2D([], [], ls="", marker=m, color="black", mfc="none", label=f"page at minimum rise {r:.2f}")
        for r, m in zip(rises, MARKERS, strict=False)
    ]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("broken turns minus warm-up level")
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_selection(ap)
    ap.add_argument("--rise", nargs="+", type=float, default=[0.15, 0.2], help="minimum rises to compare")
    ap.add_argument("--preset", default="A", choices=sorted(PRESETS), help="the other settings")
    ap.add_argument("--label", default="")
    ap.add_argument("--plot", default="", help="PNG path ('' for none)")
    args = ap.parse_args()
    if len(args.rise) > len(MARKERS):
        raise SystemExit(f"at most {len(MARKERS)} values of --rise")
    preset = dict(PRESETS[args.preset])
    traces: list[RiseTrace] = []
    for run in selected_runs(args):
        traces.append(trace(run, preset, args.rise))
        print(json.dumps(summary(traces[-1])))
    if not traces:
        raise SystemExit("no runs under those roots, recipes and seeds")
    if args.plot:
        plot(traces, args.rise, Path(args.plot), args.label)
    print(json.dumps({"benchmark": "structure_rise_plot", "preset": args.preset, "rises": args.rise,
                      "runs": [summary(t) for t in traces]}))  # fmt: skip


if __name__ == "__main__":
    main()
