"""Pool `act_on_page.py` results over seeds: per arm, how the forks ended and how close they came.

Reads the JSON objects `act_on_page.py` prints last (one file per seed) and each arm's run. Per
arm: runs that end below the onset line, runs with an onset (the issue's definition, over the
whole run), the lowest 5-step success mean after the fork as a share of the onset line then (1.0
is on the line), steps below the line after the fork, and medians of the end figures.
`--pair A B` adds, per seed, A's success over the last 10 steps minus B's (item 43's d); it may be
given more than once. A seed's arms may come from several files (item 44 adds one to item 42's seeds).
`--plot` draws every seed's 5-step success over the onset line, one panel per arm, from its fork.
Prints one JSON object.

Usage: .venv/bin/python benchmarks/act_on_page_summary.py docs/data/act-on-page-r40-s40*.json \
    [--pair sft-at-page none-at-page] [--plot docs/img/act-on-page-r40.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from act_on_page import rl_steps  # this script's folder is on sys.path when it runs

from collapsewatch.diagnostics.onset import moving_mean, onset_line

Curve = tuple[np.ndarray, np.ndarray]  # (steps, 5-step success mean over the onset line)


def relative_success(run_dir: Path) -> Curve:
    """The onset definition's moving mean over its line: below 1.0 is below the line."""
    steps = rl_steps(run_dir)
    mean = moving_mean(steps["step"], steps["success/rate"])
    line = onset_line(mean)
    rel = (mean / line.where(line > 0)).reindex(steps["step"])
    return steps["step"].to_numpy(), rel.to_numpy(dtype=float)


def closest_approach(arm: dict, curve: Curve) -> dict:
    """The lowest point after the fork (as a share of the line) and the steps spent below it."""
    steps, rel = curve
    after = steps > arm["fork"]
    below = int(np.sum(after & (rel < 1.0)))
    if not np.isfinite(rel[after]).any():  # fewer than 5 steps: no 5-step mean yet
        return {"min_over_line": None, "min_step": None, "steps_below_after_fork": below}
    i = int(np.nanargmin(np.where(after, rel, np.nan)))
    return {
        "min_over_line": round(float(rel[i]), 3),
        "min_step": int(steps[i]),
        "steps_below_after_fork": below,
    }


def median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 4) if values else None


def arms_by_name(results: list[dict]) -> dict[str, list[dict]]:
    """Each arm's runs over the seeds, in the order the arms first appear; each carries its seed."""
    by_arm: dict[str, list[dict]] = {}
    for result in results:
        for arm in result["arms"]:
            by_arm.setdefault(arm["arm"], []).append({**arm, "seed": result["seed"]})
    return by_arm


def summarise_arms(by_arm: dict[str, list[dict]], curves: dict[str, Curve]) -> dict:
    out = {}
    for name, runs in by_arm.items():
        arms = [{**arm, **closest_approach(arm, curves[arm["run"]])} for arm in runs]
        out[name] = {
            "seeds": [a["seed"] for a in arms],
            "below_line_at_end": sum(a["below_line_at_end"] for a in arms),
            "with_onset": sum(a["onset"] is not None for a in arms),
            "steps_below_after_fork": [a["steps_below_after_fork"] for a in arms],
            "min_over_line": [a["min_over_line"] for a in arms],
            "median_min_over_line": median(
                [a["min_over_line"] for a in arms if a["min_over_line"] is not None]
            ),
            "median_ma5_at_end": median([a["ma5_at_end"] for a in arms]),
            "median_success_last10": median([a["success_last10"] for a in arms]),
            "median_broken_last5": median([a["broken_last5"] for a in arms]),
        }
    return out


def paired(by_arm: dict[str, list[dict]], a: str, b: str) -> dict:
    """Per seed that has both arms, arm a's success over the last 10 steps minus arm b's."""
    tail_b = {arm["seed"]: arm["success_last10"] for arm in by_arm.get(b, [])}
    d = {
        arm["seed"]: round(arm["success_last10"] - tail_b[arm["seed"]], 4)
        for arm in by_arm.get(a, [])
        if arm["seed"] in tail_b
    }
    values = list(d.values())
    return {
        "arms": [a, b],
        "d": d,
        "median": median(values),
        "positive": sum(v > 0 for v in values),
        "negative": sum(v < 0 for v in values),
    }


def plot(by_arm: dict[str, list[dict]], curves: dict[str, Curve], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from detection_eval import save_figure
    from matplotlib.lines import Line2D

    rows = -(-len(by_arm) // 4)  # at most four panels a row
    cols = -(-len(by_arm) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), sharey=True, squeeze=False)
    panels = axes.ravel()
    for ax in panels[len(by_arm) :]:
        ax.set_visible(False)
    # one colour per seed in every panel, so a seed missing from one arm does not shift the others
    seeds = list(dict.fromkeys(arm["seed"] for arms in by_arm.values() for arm in arms))
    colour = {seed: f"C{i % 10}" for i, seed in enumerate(seeds)}
    for ax, (name, arms) in zip(panels, by_arm.items(), strict=False):
        for arm in arms:
            steps, rel = curves[arm["run"]]
            keep = steps >= arm["fork"] - 5
            ax.plot(steps[keep] - arm["fork"], rel[keep], lw=1, color=colour[arm["seed"]])
        ax.axhline(1.0, color="black", ls="--", lw=1)
        ax.axvline(0, color="grey", ls=":", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("steps after the fork")
    for row in axes:
        row[0].set_ylabel("5-step success / onset line")
    key = [Line2D([], [], color=colour[seed], lw=1, label=f"s{seed}") for seed in seeds]
    panels[len(by_arm) - 1].legend(handles=key, fontsize=6, ncol=2)
    return save_figure(fig, path)


def by_seed(results: list[dict]) -> list[dict]:
    """One result per seed, its arms gathered from every file that has them (a later item may add
    an arm to an earlier item's seeds); the same arm twice for a seed is an error."""
    seeds: dict[int, dict] = {}
    for result in results:
        seed = seeds.setdefault(result["seed"], {"seed": result["seed"], "arms": []})
        names = {arm["arm"] for arm in seed["arms"]}
        for arm in result["arms"]:
            if arm["arm"] in names:
                raise SystemExit(f"error: seed {result['seed']} has arm {arm['arm']!r} twice")
            seed["arms"].append(arm)
    return list(seeds.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="act_on_page.py JSON outputs, one per seed")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    ap.add_argument("--plot", type=Path, default=None, metavar="PNG")
    args = ap.parse_args()
    results = [json.loads(p.read_text()) for p in args.results]
    strays = [
        str(p) for p, r in zip(args.results, results, strict=True) if r.get("benchmark") != "act_on_page"
    ]
    if strays:
        raise SystemExit(f"error: not an act_on_page.py result: {', '.join(strays)}")
    results = by_seed(results)
    curves = {
        arm["run"]: relative_success(Path(arm["run"])) for r in results for arm in r["arms"]
    }  # read once
    out: dict = {"benchmark": "act_on_page_summary", "seeds": [r["seed"] for r in results]}
    by_arm = arms_by_name(results)
    unknown = sorted({name for pair in args.pair for name in pair} - set(by_arm))
    if unknown:  # a misspelt arm would give an empty difference, not an error
        raise SystemExit(f"error: --pair names no arm of these results: {', '.join(unknown)}")
    out["arms"] = summarise_arms(by_arm, curves)
    if args.pair:
        out["pairs"] = [paired(by_arm, a, b) for a, b in args.pair]
    if args.plot:
        out["plot"] = str(plot(by_arm, curves, args.plot))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
