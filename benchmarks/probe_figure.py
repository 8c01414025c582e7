"""Plot the reference probe against success and broken turns, one column per run (docs/detection.md).

    python benchmarks/probe_figure.py RUN [RUN ...] -o docs/img/probe-runs.png

Rows: the 5-step success mean (dashed: the collapse onset); the share of broken turns; the cost
(-log p) of each control token on the reference conversations, as a multiple of its median over the
first 5 steps (log scale; dotted: the folds at which `probe_drift` warns, and pages if set). Prints a
JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.schema import parse_probe_token
from collapsewatch.store.reader import open_run


def probe_folds(steps: pd.DataFrame, ref_steps: int) -> pd.DataFrame:
    """Per control token, -log p over its median over the first `ref_steps` steps."""
    cols = [c for c in steps.columns if parse_probe_token(c) is not None]
    cost = -steps[cols]
    return (cost / cost.iloc[:ref_steps].median()).rename(columns=parse_probe_token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--out", default="docs/img/probe-runs.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = MonitorConfig()
    fig, axes = plt.subplots(
        3, len(args.runs), figsize=(3.6 * len(args.runs), 7), sharex="col", squeeze=False
    )
    summary = []
    for col, path in enumerate(args.runs):
        run = open_run(path)
        t = run.steps().set_index("step")
        onset = collapse_onset(t.index.to_numpy(), t["success/rate"].to_numpy())
        folds = probe_folds(t, cfg.probe_ref_steps)
        broken = t["states/text_pollution"] + t["states/full_collapse"]
        axes[0, col].plot(t.index, t["success/rate"].rolling(5, min_periods=5).mean(), color="tab:blue")
        axes[0, col].set_title(f"{run.name} (onset {onset})", fontsize=9)
        axes[1, col].plot(t.index, broken, color="tab:red")
        for token in folds.columns:
            axes[2, col].plot(t.index, folds[token].clip(lower=0.1), label=token, lw=1)
        axes[2, col].set_yscale("log")
        for fold in (cfg.probe_warn_fold, cfg.probe_page_fold):
            if fold > 0:  # the page fold is 0 (off) by default
                axes[2, col].axhline(fold, color="grey", ls=":", lw=1)
        for ax in axes[:, col]:
            if onset is not None:
                ax.axvline(onset, color="black", ls="--", lw=1)
        worst = folds.max(axis=1)
        summary.append({
            "run": run.name, "onset": onset, "max_fold": round(float(worst.max()), 1),
            "first_step_at_warn_fold": next((int(s) for s, v in worst.items() if v >= cfg.probe_warn_fold), None),
        })  # fmt: skip
    axes[0, 0].set_ylabel("success, 5-step mean")
    axes[1, 0].set_ylabel("broken turns")
    axes[2, 0].set_ylabel("probe cost / start")
    axes[2, 0].legend(fontsize=7)
    for ax in axes[2]:
        ax.set_xlabel("step")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(json.dumps({"figure": args.out, "runs": summary}, default=lambda x: None if np.isnan(x) else x))


if __name__ == "__main__":
    main()
