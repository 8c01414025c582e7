"""The expert-text drift on the reference probe, run by run: what round 15's page read.

For each run (ROOT/<recipe>-s<seed>, a run folder or its feature archive), the probe's ordinary-token
cost against its median in the run's first `probe_ref_steps` steps (its start cost), as a fold
(`--measure fold`, what `probe_text_page_fold` pages on) or as a rise in nats per token (`--measure
rise`, `probe_text_page_delta`; docs/detectors.md). Why both: a fold depends on how well the warm
start knew the text, and round 18 of docs/detection.md asks which of the two carries across warm
starts. One panel per group of runs: those that crossed the collapse onset line (onset marked) and
those that never did, with the page threshold (`--page`: round 15's 2.5x by default for the fold).
Prints, per run, its start cost, largest fold and rise after the warm-up and where, the first step
at or over the page threshold, the largest fold up to step 80 and after it (long runs), and the
onset; the last line is one JSON object.

Usage: .venv/bin/python benchmarks/drift_plot.py --root ROOT [ROOT ...] --recipes collapse off-policy \
    --seeds 30 31 [--label "round 16"] [--measure rise --page 0.05] [--plot docs/img/drift-r16.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from detection_eval import features_table, read_run, run_dir, save_figure, success_of

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.diagnostics.probe_drift import text_cost_series
from collapsewatch.schema import PROBE_TEXT


def drift(cost: np.ndarray, start: float, measure: str) -> np.ndarray:
    """The cost as a fold over its start, or as a rise in nats per token over it."""
    return cost / start if measure == "fold" else cost - start


def summarize(
    name: str,
    steps: np.ndarray,
    cost: np.ndarray,
    start: float,
    onset: int | None,
    config: MonitorConfig,
    page: float,
    measure: str = "fold",
) -> dict:
    after = steps >= config.warmup
    s, kept = steps[after], cost[after]
    if not len(s):
        return {"run": name, "onset": onset, "start_cost": None, "max_fold": None, "max_rise": None}
    fold, rise = drift(kept, start, "fold"), drift(kept, start, "rise")
    over = s[drift(kept, start, measure) >= page]
    early, late = fold[s <= 80], fold[s > 80]
    return {
        "run": name,
        "onset": onset,
        "start_cost": round(start, 4),
        "max_fold": round(float(fold.max()), 2),
        "max_rise": round(float(rise.max()), 4),
        "max_at": int(s[fold.argmax()]),
        "first_at_page": int(over[0]) if len(over) else None,  # the first step at `page` or more
        "max_fold_to_80": round(float(early.max()), 2) if len(early) else None,
        "max_fold_after_80": round(float(late.max()), 2) if len(late) else None,
        "last_fold": round(float(fold[-1]), 2),
    }


# a run read for the plots: (root name, run name, steps, cost, start cost, onset)
Curve = tuple[str, str, np.ndarray, np.ndarray, float, int | None]


def plot(curves: list[Curve], path: Path, label: str, page: float, measure: str = "fold") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    groups = (("crossed the onset line", [c for c in curves if c[5] is not None]),
              ("never crossed it", [c for c in curves if c[5] is None]))  # fmt: skip
    for ax, (title, members) in zip(axes, groups, strict=True):
        for root, name, steps, cost, start, onset in members:
            y = drift(cost, start, measure)
            (line,) = ax.plot(steps, y, lw=1, label=f"{root}/{name}")
            if onset is not None:
                at = np.searchsorted(steps, onset)
                if at < len(steps):
                    ax.plot(steps[at], y[at], "o", color=line.get_color(), ms=4)
        unit = "x" if measure == "fold" else " nats"
        ax.axhline(page, color="black", ls="--", lw=0.8, label=f"page at {page}{unit}")
        if measure == "fold":
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("step")
        ax.set_title(f"{label + ': ' if label else ''}{title} ({len(members)} runs)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    axes[0].set_ylabel(
        "expert text cost on the probe / its start (fold)"
        if measure == "fold"
        else "expert text cost on the probe minus its start (nats per token)"
    )
    save_figure(fig, path)


def plot_by_root(curves: list[Curve], path: Path, label: str, collapsing: str) -> None:
    """Fold and rise side by side, one colour per root (a warm start), `collapsing`-recipe runs solid
    and the others dashed: which of the two measures puts each kind at the same height on both?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    roots = list(dict.fromkeys(root for root, *_ in curves))
    colours = dict(zip(roots, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, measure in zip(axes, ("fold", "rise"), strict=True):
        for root, name, steps, cost, start, _ in curves:
            y = drift(cost, start, measure)
            ax.plot(steps, y, lw=0.9, color=colours[root], ls="-" if name.startswith(collapsing) else "--")
        ax.set_yscale(
            "log" if measure == "fold" else "symlog", **({} if measure == "fold" else {"linthresh": 0.01})
        )
        ax.set_xlabel("step")
        ax.set_ylabel(
            "expert text cost / its start" if measure == "fold" else "cost minus its start, nats per token"
        )
    handles = [plt.Line2D([], [], color=colours[r], label=r) for r in roots] + [
        plt.Line2D([], [], color="gray", ls="-", label=f"{collapsing} runs"),
        plt.Line2D([], [], color="gray", ls="--", label="supervised runs"),
    ]
    axes[1].legend(handles=handles, fontsize=7)
    fig.suptitle(
        f"{label + ': ' if label else ''}the expert text's drift as a fold and as a rise", fontsize=9
    )
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", nargs="+", required=True, help="one or more roots of runs or archives")
    ap.add_argument("--recipes", nargs="+", default=["collapse", "off-policy", "sync-sft"])
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--plot", default="", help="PNG path ('' for none)")
    ap.add_argument(
        "--measure", choices=("fold", "rise"), default="fold", help="fold over the start, or rise"
    )
    ap.add_argument(
        "--page",
        type=float,
        default=None,
        help="the threshold to mark (default: 2.5 for the fold, round 15's page; 0.05 nats for the rise)",
    )
    ap.add_argument(
        "--by-root",
        default="",
        metavar="PNG",
        help="also plot fold and rise side by side, a colour per root (warm start), the first recipe solid",
    )
    args = ap.parse_args()
    page = args.page if args.page is not None else (2.5 if args.measure == "fold" else 0.05)
    config = MonitorConfig()
    curves: list[Curve] = []
    rows = []
    for root in map(Path, args.root):
        for recipe in args.recipes:
            for seed in args.seeds:
                found = read_run(root, recipe, seed)
                if found is None:
                    continue
                t = features_table(found[1])
                if PROBE_TEXT not in t.columns:
                    continue
                name = run_dir(root, recipe, seed).name
                onset = collapse_onset(t["step"].to_numpy(), success_of(t)[0])
                steps, cost, start = text_cost_series(
                    t["step"].to_numpy(), t[PROBE_TEXT].to_numpy(dtype=float), config
                )
                curves.append((root.name, name, steps, cost, start, onset))
                rows.append(
                    summarize(f"{root.name}/{name}", steps, cost, start, onset, config, page, args.measure)
                )
                print(json.dumps(rows[-1]))
    if not rows:
        raise SystemExit("no runs with a reference probe under those roots, recipes and seeds")
    if args.plot:
        plot(curves, Path(args.plot), args.label, page, args.measure)
    if args.by_root:
        plot_by_root(curves, Path(args.by_root), args.label, args.recipes[0])
    print(json.dumps({"benchmark": "drift_plot", "measure": args.measure, "page": page, "runs": rows}))


if __name__ == "__main__":
    main()
