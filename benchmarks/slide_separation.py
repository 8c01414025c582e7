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

Usage: .venv/bin/python benchmarks/slide_separation.py --root docs/data/features/r2{6,7,8,9} \
    docs/data/features/r29lr docs/data/features/r30 [--lag 4] [--top 12]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from detection_eval import WARMUP, features_table, success_of

from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.feature_archive import load_archive
from collapsewatch.diagnostics.features import StepFeatures
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.diagnostics.scan import read_inputs, step_features_of
from collapsewatch.diagnostics.success_slide import SuccessSlide

F2 = {"slide_success_drop": 0.75, "slide_persist": 1, "slide_entropy_rise": 0.0}
SKIPPED = ("time/", "lr", "step")  # wall-clock and the schedule itself


def runs_under(root: Path) -> list[tuple[str, list[StepFeatures]]]:
    """(name, features) of every feature archive or run folder directly under `root`."""
    found = [(p.stem, load_archive(p)[1]) for p in sorted(root.glob("*.parquet"))]
    for run in sorted(p.parent for p in root.glob("*/run.json")):
        found.append((run.name, step_features_of(read_inputs(run))))
    return found


def slide_step(features: list[StepFeatures]) -> int | None:
    """The first step F2's condition holds, as the detector itself decides it."""
    detector = SuccessSlide(MonitorConfig(**F2))
    return next((f.step for f in features if detector.update(f)), None)


def shifts_at(table: pd.DataFrame, step: int) -> dict[str, float]:
    """Each statistic's 5-step mean at `step` minus its mean over the warm-up steps."""
    numeric = table.drop(columns=[c for c in table.columns if c.startswith(SKIPPED)])
    numeric = numeric.apply(pd.to_numeric, errors="coerce")
    rolling = numeric.rolling(5, min_periods=1).mean()
    row = int(np.searchsorted(table["step"].to_numpy(), step))
    row = min(row, len(table) - 1)
    warm = numeric.iloc[:WARMUP].mean()
    return (rolling.iloc[row] - warm).to_dict()


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
    args = ap.parse_args()
    groups: dict[str, list[dict[str, float]]] = {"collapse": [], "control": [], "supervised": []}
    runs = []
    for root in map(Path, args.root):
        for name, features in runs_under(root):
            recipe = re.sub(r"-s\d+$", "", name)
            table = features_table(features)
            onset = collapse_onset(table["step"].to_numpy(), success_of(table)[0])
            step = slide_step(features)
            if recipe in args.collapsing:
                group = "collapse" if onset is not None and step is not None and step <= onset else None
            else:
                group = None if onset is not None else "control" if recipe in args.control else "supervised"
            runs.append({"run": f"{root.name}/{name}", "onset": onset, "slide_step": step, "group": group})
            if group is not None and step is not None:
                groups[group].append(shifts_at(table, step + args.lag))
    if not groups["collapse"] or not groups["control"]:
        raise SystemExit("need collapses with a slide before their onset and control runs with a slide")
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
        })  # fmt: skip
    table.sort(key=lambda r: -abs(r["auc_vs_control"] - 0.5))
    for r in table[: args.top]:
        print(json.dumps(r))
    counts = {g: len(rows) for g, rows in groups.items()}
    print(json.dumps({"benchmark": "slide_separation", "setting": F2, "lag": args.lag, "runs_scored": counts,
                      "statistics": table, "runs": runs}))  # fmt: skip


if __name__ == "__main__":
    main()
