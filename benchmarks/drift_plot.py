"""The expert-text drift on the reference probe, run by run: what round 15's page read.

For each run (ROOT/<recipe>-s<seed>, a run folder or its feature archive), the probe's ordinary-token
cost as a fold over its median in the run's first `probe_ref_steps` steps: the quantity
`ProbeTextDrift` warns on, and pages on when `probe_text_page_fold` is set (docs/detectors.md). One
panel per group of runs: those that crossed the collapse onset line (onset marked) and those that
never did, with the page fold (`--page-fold`, round 15's 2.5x). Prints, per run, its largest fold
after the warm-up and where, the first step at or over the page fold, the largest fold up to step
80 and after it (long runs), and the onset; the last line is one JSON object.

Usage: .venv/bin/python benchmarks/drift_plot.py --root ROOT [ROOT ...] --recipes collapse off-policy \
    --seeds 30 31 [--label "round 16"] [--plot docs/img/drift-r16.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from detection_eval import features_table, read_run, run_dir, save_figure, success_of

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.diagnostics.probe_drift import text_fold_series as text_fold
from collapsewatch.schema import PROBE_TEXT


def summarize(
    name: str, steps: np.ndarray, fold: np.ndarray, onset: int | None, config: MonitorConfig, page_fold: float
) -> dict:
    after = steps >= config.warmup
    s, f = steps[after], fold[after]
    if not len(f):
        return {"run": name, "onset": onset, "max_fold": None}
    over = s[f >= page_fold]
    early, late = f[s <= 80], f[s > 80]
    return {
        "run": name,
        "onset": onset,
        "max_fold": round(float(f.max()), 2),
        "max_at": int(s[f.argmax()]),
        "first_at_page_fold": int(over[0]) if len(over) else None,  # the first step at page_fold or more
        "max_fold_to_80": round(float(early.max()), 2) if len(early) else None,
        "max_fold_after_80": round(float(late.max()), 2) if len(late) else None,
        "last_fold": round(float(f[-1]), 2),
    }


def plot(
    curves: list[tuple[str, np.ndarray, np.ndarray, int | None]], path: Path, label: str, page: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    groups = (("crossed the onset line", [c for c in curves if c[3] is not None]),
              ("never crossed it", [c for c in curves if c[3] is None]))  # fmt: skip
    for ax, (title, members) in zip(axes, groups, strict=True):
        for name, steps, fold, onset in members:
            (line,) = ax.plot(steps, fold, lw=1, label=name)
            if onset is not None:
                at = np.searchsorted(steps, onset)
                if at < len(steps):
                    ax.plot(steps[at], fold[at], "o", color=line.get_color(), ms=4)
        ax.axhline(page, color="black", ls="--", lw=0.8, label=f"page at {page}x")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{label + ': ' if label else ''}{title} ({len(members)} runs)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    axes[0].set_ylabel("expert text cost on the probe / its start (fold)")
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", nargs="+", required=True, help="one or more roots of runs or archives")
    ap.add_argument("--recipes", nargs="+", default=["collapse", "off-policy", "sync-sft"])
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--plot", default="", help="PNG path ('' for none)")
    ap.add_argument(
        "--page-fold",
        type=float,
        default=2.5,
        help="the fold to mark (round 15's page; an option since round 16)",
    )
    args = ap.parse_args()
    config = MonitorConfig()
    curves, rows = [], []
    for root in map(Path, args.root):
        for recipe in args.recipes:
            for seed in args.seeds:
                found = read_run(root, recipe, seed)
                if found is None:
                    continue
                t = features_table(found[1])
                if PROBE_TEXT not in t.columns:
                    continue
                name = f"{root.name}/{run_dir(root, recipe, seed).name}"
                onset = collapse_onset(t["step"].to_numpy(), success_of(t)[0])
                steps, fold = text_fold(t["step"].to_numpy(), t[PROBE_TEXT].to_numpy(dtype=float), config)
                curves.append((name, steps, fold, onset))
                rows.append(summarize(name, steps, fold, onset, config, args.page_fold))
                print(json.dumps(rows[-1]))
    if not rows:
        raise SystemExit("no runs with a reference probe under those roots, recipes and seeds")
    if args.plot:
        plot(curves, Path(args.plot), args.label, args.page_fold)
    print(json.dumps({"benchmark": "drift_plot", "page_fold": args.page_fold, "runs": rows}))


if __name__ == "__main__":
    main()
