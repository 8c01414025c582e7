"""Summarise reproduction runs: collapse onset, pre-onset hold, final OOD success, and plots.

`python -m collapsewatch.trainer.report ROOT [--plots DIR] [--json]` prints a Markdown table (one
row per run under ROOT), or with `--json` one object per run with every figure of the row, and
writes PNG plots with matplotlib (the `dev` extra).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

import collapsewatch as cw
from collapsewatch.diagnostics.onset import ONSET_WINDOW, collapse_onset

# (token, position type, statistic): the series that moved in the collapse runs
PLOT_TOKENS = [
    ("<tool_call>", "after_open_tag", "p99"),
    ("<tool_call>", "in_call", "p99"),
    ("</tool_call>", "turn_start", "p99"),
    ("<|im_end|>", "after_open_tag", "p99"),
]


def broken_share(steps: pd.DataFrame, after: int) -> float:
    """Mean share of turns in text pollution or full collapse over the steps after `after` (the LR
    warm-up): how well a recipe holds the format once the learning rate is full. NaN without them."""
    later = steps[steps["step"] > after]
    if not {"states/text_pollution", "states/full_collapse"} <= set(later) or not len(later):
        return math.nan
    return float((later["states/text_pollution"] + later["states/full_collapse"]).mean())


def summarise(run: cw.Run) -> dict:
    steps = run.steps()
    steps = steps[steps["step"] >= 1].sort_values("step")
    succ = steps["success/rate"].to_numpy(dtype=float)
    ma = pd.Series(succ).rolling(ONSET_WINDOW, min_periods=ONSET_WINDOW).mean().to_numpy()
    onset = collapse_onset(steps["step"].to_numpy(), succ)
    row = {
        "run": run.name,
        "recipe": run.meta.get("config", {}).get("recipe"),
        "seed": run.meta.get("config", {}).get("seed"),
        "steps": int(steps["step"].max()),
        "onset": onset,
        "peak_ma5": float(np.nanmax(ma)) if np.isfinite(ma).any() else math.nan,
        "first5": float(np.nanmean(succ[:5])),
        "last10": float(np.nanmean(succ[-10:])),
    }
    if onset is not None:
        pre = steps["step"].to_numpy() < onset
        row["pre_onset_steps"] = int(pre.sum())
        row["ma5_before_onset"] = float(ma[max(int(pre.sum()) - 1, 0)])
    for name in ("in_dist", "format_ood", "content_ood"):
        row[name] = (run.meta.get("final_eval") or {}).get(f"eval/{name}_success", math.nan)
        row[f"warm_{name}"] = (run.meta.get("warm_start_eval") or {}).get(f"eval/{name}_success", math.nan)
    tail = steps.tail(5)
    for state in ("healthy_tool_call", "healthy_response", "text_pollution", "full_collapse"):
        col = f"states/{state}"
        row[f"last5_{state}"] = float(tail[col].mean()) if col in tail else math.nan
    row["broken_after_warmup"] = broken_share(steps, int(run.meta.get("config", {}).get("warmup_steps", 0)))
    return row


def table(rows: list[dict]) -> str:
    head = ("| run | onset | steps before onset | peak MA5 success | last-10 success | in-dist | format-OOD "
            "| content-OOD | pollution+collapse (last 5) |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        broken = r["last5_text_pollution"] + r["last5_full_collapse"]
        lines.append(
            f"| {r['run']} | {r['onset'] if r['onset'] is not None else 'none'} | "
            f"{r.get('pre_onset_steps', '-')} | {r['peak_ma5']:.2f} | {r['last10']:.2f} | {r['in_dist']:.2f} | "
            f"{r['format_ood']:.2f} | {r['content_ood']:.2f} | {broken:.0%} |"
        )
    return "\n".join(lines)


def plots(runs: list[cw.Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    recipes = sorted({r.meta["config"]["recipe"] for r in runs})
    fig, axes = plt.subplots(2, len(recipes), figsize=(4 * len(recipes), 5.6), sharex=True, squeeze=False)
    for col, recipe in enumerate(recipes):
        top, bottom = axes[0][col], axes[1][col]
        for run in sorted((r for r in runs if r.meta["config"]["recipe"] == recipe), key=lambda r: r.name):
            st = run.steps().sort_values("step")
            st = st[st["step"] >= 1]
            ma = st["success/rate"].rolling(ONSET_WINDOW, min_periods=1).mean()
            (line,) = top.plot(st["step"], ma, label=f"seed {run.meta['config']['seed']}")
            onset = collapse_onset(st["step"].to_numpy(), st["success/rate"].to_numpy())
            if onset is not None:
                top.axvline(onset, color=line.get_color(), ls="--", lw=1)
            if "states/text_pollution" in st:
                broken = (
                    (st["states/text_pollution"] + st["states/full_collapse"])
                    .rolling(3, min_periods=1)
                    .mean()
                )
                bottom.plot(st["step"], broken, color=line.get_color())
        top.set_title(recipe)
        top.set_ylim(0, 0.45)
        bottom.set_ylim(0, 1.02)
        bottom.set_xlabel("step")
        top.legend(fontsize=7)
    axes[0][0].set_ylabel("success rate (5-step mean)\ndashed: onset")
    axes[1][0].set_ylabel("polluted + collapsed turns\n(3-step mean)")
    fig.tight_layout()
    written.append(out / "repro-success.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    for run in [r for r in runs if r.meta["config"]["recipe"] == "collapse"]:
        st = run.steps().sort_values("step")
        st = st[st["step"] >= 1]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
        for state in ("healthy_tool_call", "healthy_response", "text_pollution", "full_collapse"):
            if f"states/{state}" in st:
                ax1.plot(st["step"], st[f"states/{state}"].rolling(3, min_periods=1).mean(), label=state)
        ax1.set_ylabel("share of turns")
        ax1.legend(fontsize=7)
        ax1.set_title(f"{run.name}: structural states and control-token probabilities")
        for token, ptype, stat in PLOT_TOKENS:
            col = f"ctrl/{token}/{ptype}/{stat}"
            if col in st:
                ax2.plot(st["step"], st[col], label=f"p({token}) {ptype} {stat}")
        ax2.set_yscale("log")
        ax2.set_xlabel("step")
        ax2.set_ylabel("probability")
        ax2.legend(fontsize=6)
        onset = collapse_onset(st["step"].to_numpy(), st["success/rate"].to_numpy())
        for ax in (ax1, ax2):
            if onset is not None:
                ax.axvline(onset, color="k", ls="--", lw=1)
        fig.tight_layout()
        written.append(out / f"repro-states-{run.name}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--plots", default=None, help="folder for the PNG plots")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    args = parser.parse_args(argv)
    runs = [cw.open_run(s.path) for s in cw.list_runs(args.root)]
    runs = [
        r
        for r in runs
        if r.meta.get("config", {}).get("trainer") == "collapsewatch.trainer" and r.status == "finished"
    ]
    rows = sorted((summarise(r) for r in runs), key=lambda r: (r["recipe"], r["seed"]))
    if args.json:
        for r in rows:  # NaN (no evaluation, no states) is null, so the lines are strict JSON
            print(
                json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
            )
    else:
        print(table(rows))
    if args.plots:
        for p in plots(runs, Path(args.plots)):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
