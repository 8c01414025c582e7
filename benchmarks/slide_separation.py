"""Which logged statistics tell a success slide that collapses from one that stops, when it starts.

The question left open by round 29 of docs/detection.md: paging when success falls to 0.75 of its
peak (F2) led the collapses by 8 steps and paged every unsupervised `low-lr` run that held. This
replays the success slide at that setting (diagnostics/success_slide.py: 0.75 of the peak, 1 step,
no entropy condition) over each run or feature archive under the roots, and at the step it first
holds, plus `--lag` steps, takes each logged statistic's 5-step mean minus its warm-up mean. It then
gives, per statistic, the AUC of collapses (a `--collapsing` recipe that crossed the onset line,
slide before the onset) against the runs without supervision that never crossed (`--control`), and
against the other runs that never crossed (supervised; the slide is not evaluated in runs that log
an SFT loss, so those are `off-policy` here). An AUC near 1 or 0 separates; 0.5 does not. A
statistic that separates collapses from the control but not from supervised runs at the same
learning rate reads the learning rate, not the collapse. The last line is one JSON object.

`--at page --preset LSF` asks the same at each run's first page under a preset instead (collapses
paged by their onset against runs that held and were paged: can a page be told apart when it
comes?). `--scale fold` takes the 5-step mean over the warm-up mean instead of the difference, which
removes what only scales with the learning rate; `--scale recent` the 5-step mean minus the 5-step mean
`--window` steps before (how fast it moved lately, not how far from the warm-up). `--max-lr` keeps only
runs whose learning rate never went above it (collapses at a low learning rate against runs at the same
rate that held). The pseudo-statistic `when/step` is the step itself.

Usage: .venv/bin/python benchmarks/slide_separation.py --root docs/data/features/r2{6,7,8,9} \
    docs/data/features/r29lr docs/data/features/r30 [--lag 4] [--top 12] [--at page --preset LSF]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from detection_eval import WARMUP, features_table, success_of

from collapsewatch.diagnostics.detector_base import PRESETS, MonitorConfig
from collapsewatch.diagnostics.feature_archive import load_archive
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.diagnostics.scan import (
    RunInputs,
    first_critical_step,
    read_inputs,
    replay_features,
    step_features_of,
)
from collapsewatch.diagnostics.success_slide import SuccessSlide

F2 = {"slide_success_drop": 0.75, "slide_persist": 1, "slide_entropy_rise": 0.0}
SKIPPED = ("time/", "lr", "step")  # wall-clock and the schedule itself


def runs_under(root: Path) -> list[tuple[str, RunInputs, list[StepFeatures]]]:
    """(name, inputs, features) of every feature archive or run folder directly under `root`."""
    found = [(p.stem, *load_archive(p)) for p in sorted(root.glob("*.parquet"))]
    for run in sorted(p.parent for p in root.glob("*/run.json")):
        inputs = read_inputs(run)
        found.append((run.name, inputs, step_features_of(inputs)))
    return found


def slide_step(features: list[StepFeatures]) -> int | None:
    """The first step F2's condition holds, as the detector itself decides it."""
    detector = SuccessSlide(MonitorConfig(**F2))
    return next((f.step for f in features if detector.update(f)), None)


def page_step(inputs: RunInputs, features: list[StepFeatures], preset: str) -> int | None:
    """The run's first page under a preset, as `scan` would give it."""
    alerts, _ = replay_features(features, inputs.run.control_tokens, dict(PRESETS[preset]))
    return first_critical_step(alerts)


def shifts_at(table: pd.DataFrame, step: int, scale: str = "shift", window: int = 12) -> dict[str, float]:
    """Each statistic's 5-step mean at `step` minus (`fold`: over) its mean over the warm-up steps;
    `recent`: minus its 5-step mean `window` steps before."""
    numeric = table.drop(columns=[c for c in table.columns if c.startswith(SKIPPED)])
    numeric = numeric.apply(pd.to_numeric, errors="coerce")
    rolling = numeric.rolling(5, min_periods=1).mean()
    row = int(np.searchsorted(table["step"].to_numpy(), step))
    row = min(row, len(table) - 1)
    warm = numeric.iloc[:WARMUP].mean()
    if scale == "fold":
        moved = rolling.iloc[row] / warm.where(warm.abs() > 1e-12)
    elif scale == "recent":
        moved = rolling.iloc[row] - rolling.iloc[max(row - window, 0)]
    else:
        moved = rolling.iloc[row] - warm
    return moved.to_dict() | {"when/step": float(step)}


def auc(high: list[float], low: list[float]) -> float | None:
    """P(a value of the first group exceeds one of the second), ties counted half."""
    a = np.array([x for x in high if np.isfinite(x)])
    b = np.array([x for x in low if np.isfinite(x)])
    if not len(a) or not len(b):
        return None
    greater = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    return round(float(greater), 3)


def _median(values: list[float]) -> float | None:
    finite = [x for x in values if np.isfinite(x)]
    return round(float(np.median(finite)), 4) if finite else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", nargs="+", required=True, help="roots of feature archives or run folders")
    ap.add_argument("--collapsing", nargs="+", default=["collapse", "hint"])
    ap.add_argument("--control", nargs="+", default=["low-lr"], help="recipes without supervision")
    ap.add_argument("--lag", type=int, default=0, help="steps after the slide's first step")
    ap.add_argument("--top", type=int, default=12, help="statistics printed, by distance from 0.5")
    ap.add_argument("--at", choices=("slide", "page"), default="slide",
                    help="the step scored: F2's slide, or the first page under --preset")  # fmt: skip
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default="LSF", help="the setting whose page --at page reads"
    )
    ap.add_argument(
        "--scale", choices=("shift", "fold", "recent"), default="shift",
        help="5-step mean minus, or over, the warm-up; or minus itself --window steps before",
    )  # fmt: skip
    ap.add_argument("--window", type=int, default=12, help="steps back for --scale recent")
    ap.add_argument(
        "--max-lr", type=float, default=None, help="only runs whose learning rate stayed at most this"
    )
    args = ap.parse_args()
    groups: dict[str, list[dict[str, float]]] = {"collapse": [], "control": [], "supervised": []}
    runs = []
    for root in map(Path, args.root):
        for name, inputs, features in runs_under(root):
            recipe = re.sub(r"-s\d+$", "", name)
            table = features_table(features)
            top_lr = table["lr"].max() if "lr" in table else np.inf  # a run that logs no LR is not kept
            if args.max_lr is not None and not top_lr <= args.max_lr * (1 + 1e-6):
                continue
            onset = collapse_onset(table["step"].to_numpy(), success_of(table)[0])
            step = slide_step(features) if args.at == "slide" else page_step(inputs, features, args.preset)
            crossed = onset is not None
            if crossed and recipe in args.collapsing:
                group = "collapse" if step is not None and step <= onset else None
            elif crossed or (recipe in args.collapsing and recipe not in args.control):
                group = None  # a recipe in both lists: its runs that crossed collapse, the others held
            else:
                group = "control" if recipe in args.control else "supervised"
            runs.append({"run": f"{root.name}/{name}", "onset": onset, "step": step, "group": group})
            if group is not None and step is not None:
                groups[group].append(shifts_at(table, step + args.lag, args.scale, args.window))
    if not groups["collapse"] or not groups["control"]:
        raise SystemExit(
            f"need collapses with a {args.at} before their onset and control runs with a {args.at}"
        )
    names = sorted(set().union(*(g.keys() for rows in groups.values() for g in rows)))
    table = []
    for n in names:
        values = {g: [r.get(n, np.nan) for r in rows] for g, rows in groups.items()}
        vs_control = auc(values["collapse"], values["control"])
        if vs_control is None:
            continue
        table.append({
            "statistic": n,
            "auc_vs_control": vs_control,
            "auc_vs_supervised": auc(values["collapse"], values["supervised"]),
            "median_shift": {g: _median(v) for g, v in values.items()},
            "runs": {g: int(np.isfinite(v).sum()) for g, v in values.items()},  # fold: a zero warm-up drops a run
        })  # fmt: skip
    table.sort(key=lambda r: -abs(r["auc_vs_control"] - 0.5))
    for r in table[: args.top]:
        print(json.dumps(r))
    counts = {g: len(rows) for g, rows in groups.items()}
    setting = F2 if args.at == "slide" else {"preset": args.preset}
    print(json.dumps({"benchmark": "slide_separation", "at": args.at, "setting": setting, "lag": args.lag,
                      "scale": args.scale, "window": args.window, "max_lr": args.max_lr, "runs_scored": counts, "statistics": table, "runs": runs}))  # fmt: skip


if __name__ == "__main__":
    main()
