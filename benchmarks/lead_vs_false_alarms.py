"""Lead time against false alarms, for our detectors and for the scalar-only baseline, on one plot.

A monitor's lead means little without its false-alarm rate: one that alarms on every run has the
longest lead of all. This sweeps both monitors over their settings on the same runs and reports,
per setting, the share of runs that never collapsed which it paged, how many collapses it caught by
their onset, and its median lead; and, for each of our settings, the baseline's best setting at no
more false alarms (`matched_false_alarms`), since the issue's lead target compares against the
baseline's default, which alarms on most runs that never collapse. The baseline's settings are
detection_eval's BASELINE_SWEEP; ours are the structure-detector and verdict settings of the
trade-off table in docs/detection.md.

Runs are ROOT/<recipe>-s<seed>. "Collapsed" runs are runs of the collapsing recipes with a collapse
onset (the fixed definition); "quiet" runs are runs of any recipe without one. Stable-recipe runs
that slid below the onset line are in neither group and are counted apart.

Usage: .venv/bin/python benchmarks/lead_vs_false_alarms.py --root /work/runs/repro3 --seeds 0 1 2 \
    --stable interleaved off-policy sync-sft [--plot docs/img/lead-vs-false-alarms.png]
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from detection_eval import (
    BASELINE_SWEEP,
    WARMUP,
    alarm_leads,
    baseline_alarm,
    features_table,
    read_run,
    run_dir,
    save_figure,
    success_of,
)
from rich.progress import track

from collapsewatch.diagnostics.detector_base import PRESETS
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.diagnostics.scan import first_critical_step, replay_features

# Our settings (docs/detection.md, "The trade-off"), each written out from round 7's rule (setting C:
# structure CUSUM k 1, h 8, no text gate, no page on the drift) so that their meaning does not move
# with the shipped default (round 7's rule again since round 16; round 15's was "drift pages at 2.5x").
# A, B, D: structure CUSUM slack k, threshold h and minimum rise; "any 2 families" also drops the
# verdict's requirement that the structure family be one of them.
ROUND7 = {"verdict_requires_if_seen": (), "probe_text_fold": 2.0, "probe_text_page_fold": 0.0}
SETTING_D = {**ROUND7, "structure_cusum_k": 1.5, "structure_cusum_h": 5.0}
# round 22's learning-signal gate: the page waits until at most 60% of the groups have a reward spread
SIGNAL_GATE = dict(PRESETS["L"])
LOST_CALLS = {"structure_measure": "not_tool_call"}
# round 24's S: in a run that logs an SFT loss, the structural shift must hold on 4 of 4 steps
SFT_PERSIST = dict(PRESETS["S"])
TEXT_GATE = {"verdict_requires_if_seen": ("drift",)}
# round 27's F: the success slide (success below 0.6 of its peak while entropy rises) stands in for structure
SUCCESS_SLIDE = {k: v for k, v in PRESETS["LSF"].items() if k not in PRESETS["LS"]}
OUR_SETTINGS = {
    "A": {**ROUND7, "structure_cusum_k": 0.5, "structure_cusum_h": 5.0, "structure_min_rise": 0.10},
    "B": {**ROUND7, "structure_cusum_k": 1.0, "structure_cusum_h": 5.0},
    "C (round 7's rule)": ROUND7,
    "D": SETTING_D,
    "any 2 families": {**ROUND7, "verdict_requires": ()},
    "C, structure on 3 of 3": {**ROUND7, "structure_persist_k": 3, "structure_persist_n": 3},
    "C + learning-signal gate": {**ROUND7, **SIGNAL_GATE},
    # round 22's N: the structure family watching every turn that is not a healthy tool call
    "C on lost tool calls": {**ROUND7, **LOST_CALLS},
    "C on lost tool calls + learning-signal gate": {**ROUND7, **LOST_CALLS, **SIGNAL_GATE},
    "C + SFT persistence": {**ROUND7, **SFT_PERSIST},
    "C + learning-signal gate + SFT persistence": {**ROUND7, **SIGNAL_GATE, **SFT_PERSIST},
    "C + learning-signal gate + SFT persistence + success slide": {**ROUND7, **SIGNAL_GATE, **SFT_PERSIST, **SUCCESS_SLIDE},
}  # fmt: skip
# Alternatives that differ only on runs with a reference probe; score them on such runs with
# `--probe-settings`. Round 7's: the probe paging alone. Round 8's rule (D plus the expert-text gate)
# and the alternatives named with it before its held-out runs were scored (docs/detection.md,
# "Round 8"): D without the gate, the gate on C, the gate at 1.5x, and the drift family with any
# other family (structure not required).
PROBE_SETTINGS = {
    "probe pages at 20x": {**ROUND7, "probe_page_fold": 20.0},
    "probe pages at 100x": {**ROUND7, "probe_page_fold": 100.0},
    "round 8 rule (D + text gate)": {**SETTING_D, **TEXT_GATE},
    "D, no text gate": SETTING_D,
    "C + text gate": {**ROUND7, **TEXT_GATE},
    "C + text gate at 3x": {**ROUND7, **TEXT_GATE, "probe_text_fold": 3.0},
    "D, text gate at 1.5x": {**SETTING_D, **TEXT_GATE, "probe_text_fold": 1.5},
    "text drift + any family": {**SETTING_D, **TEXT_GATE, "verdict_requires": ()},
    "drift pages at 2.5x (round 15's default)": {
        **ROUND7,
        **TEXT_GATE,
        "probe_text_fold": 2.5,
        "probe_text_page_fold": 2.5,
    },
    "drift pages at 3x": {**ROUND7, **TEXT_GATE, "probe_text_fold": 3.0, "probe_text_page_fold": 3.0},
    # round 18's rules B and C: the same page low, as a fold or as a rise in nats per token
    "drift pages at 1.5x": {**ROUND7, **TEXT_GATE, "probe_text_fold": 1.5, "probe_text_page_fold": 1.5},
    "drift pages at +0.05 nats": {
        **ROUND7,
        **TEXT_GATE,
        "probe_text_fold": 0.0,
        "probe_text_delta": 0.05,
        "probe_text_page_delta": 0.05,
    },
}


def score(alarms: dict[str, int | None], onsets: dict[str, int | None], collapsing: set[str]) -> dict:
    """False-alarm share on quiet runs, detected-by-onset share and median lead on collapsed runs."""
    collapsed = [n for n in alarms if n in collapsing and onsets[n] is not None]
    quiet = [n for n in alarms if onsets[n] is None]
    leads = alarm_leads(alarms, onsets, collapsed)
    paged = [n for n in quiet if alarms[n] is not None]
    return {
        "quiet_runs_paged": len(paged),
        "quiet_runs": len(quiet),
        "false_alarm_share": round(len(paged) / len(quiet), 3) if quiet else None,
        "detected_by_onset": sum(x >= 0 for x in leads),
        "collapsed_runs": len(collapsed),
        "median_lead_steps": float(np.median(leads)) if leads else None,
        "paged_quiet_runs": paged,
    }


def frontier(points: list[dict]) -> list[dict]:
    """The settings no other setting beats on both false alarms and median lead."""
    usable = [p for p in points if p["median_lead_steps"] is not None]
    best = []
    for p in sorted(usable, key=lambda p: (p["false_alarm_share"], -p["median_lead_steps"])):
        if not best or p["median_lead_steps"] > best[-1]["median_lead_steps"]:
            best.append(p)
    return best


def matched_baseline(ours: dict, baseline: list[dict]) -> dict | None:
    """The baseline's best setting that pages no more quiet runs than `ours` does: the comparison
    at a matched false-alarm count (most collapses caught by their onset, then the longest lead).
    None when every baseline setting pages more quiet runs."""
    fair = [
        b
        for b in baseline
        if b["quiet_runs_paged"] <= ours["quiet_runs_paged"] and b["median_lead_steps"] is not None
    ]
    if not fair:
        return None
    best = max(fair, key=lambda b: (b["detected_by_onset"], b["median_lead_steps"]))
    lead = ours["median_lead_steps"]
    return {
        "setting": ours["setting"],
        "quiet_runs_paged": ours["quiet_runs_paged"],
        "ours": {"detected_by_onset": ours["detected_by_onset"], "median_lead_steps": lead},
        "baseline_setting": best["setting"],
        "baseline": {"detected_by_onset": best["detected_by_onset"], "median_lead_steps": best["median_lead_steps"],
                     "quiet_runs_paged": best["quiet_runs_paged"]},
        "lead_minus_baseline": None if lead is None else lead - best["median_lead_steps"],
    }  # fmt: skip


def plot(ours: list[dict], baseline: list[dict], edge: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = [p for p in baseline if p["median_lead_steps"] is not None]
    ax.scatter([p["false_alarm_share"] for p in base], [p["median_lead_steps"] for p in base],
               s=12, color="tab:gray", alpha=0.4, label="scalar baseline, every setting")  # fmt: skip
    ax.plot([p["false_alarm_share"] for p in edge], [p["median_lead_steps"] for p in edge],
            color="tab:gray", drawstyle="steps-post", label="scalar baseline, best settings")  # fmt: skip
    shown = sorted((q for q in ours if q["median_lead_steps"] is not None),
                   key=lambda q: (q["median_lead_steps"], q["false_alarm_share"]))  # fmt: skip
    for p in shown:  # labels level with their point, to its right (points at one x differ in lead)
        default = p["setting"].endswith("(default)")
        ax.scatter(p["false_alarm_share"], p["median_lead_steps"], s=60 if default else 30,
                   color="tab:blue", marker="*" if default else "o", zorder=3)  # fmt: skip
        ax.annotate(f"{p['setting']} ({p['detected_by_onset']}/{p['collapsed_runs']})",
                    (p["false_alarm_share"], p["median_lead_steps"]), fontsize=7,
                    xytext=(6, 0), textcoords="offset points", va="center")  # fmt: skip
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("share of runs that never collapsed which were paged (false alarms)")
    ax.set_ylabel("median lead over the collapse onset (steps)")
    ax.set_title("Lead against false alarms (ours in blue; caught by onset in brackets)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center")
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--collapsing", nargs="+", default=["collapse"])
    ap.add_argument("--stable", nargs="+", default=["interleaved", "off-policy", "sync-sft"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--plot", default="", help="PNG path for the plot ('' for none)")
    ap.add_argument(
        "--probe-settings", action="store_true", help="also score the probe alternatives of rounds 7 and 8"
    )
    args = ap.parse_args()

    root = Path(args.root)
    found = {}
    for r, s in track([(r, s) for r in [*args.collapsing, *args.stable] for s in args.seeds], "reading runs"):
        run = read_run(root, r, s)  # its folder, or its feature archive
        if run is not None:
            found[run_dir(root, r, s).name] = run
    if not found:
        raise SystemExit(f"no runs under {root} for those recipes and seeds")
    collapsing = {n for n in found if n.rsplit("-s", 1)[0] in args.collapsing}

    tables, onsets, features, control_tokens = {}, {}, {}, {}
    for name, (inputs, run_features) in found.items():
        features[name] = run_features  # once per run: the table and every setting share it
        control_tokens[name] = inputs.run.control_tokens
        t = features_table(features[name])
        tables[name] = t
        onsets[name] = collapse_onset(t["step"].to_numpy(), success_of(t)[0])

    ours = []
    settings = OUR_SETTINGS | (PROBE_SETTINGS if args.probe_settings else {})
    for setting, overrides in track(settings.items(), description="our settings"):
        alarms = {
            n: first_critical_step(replay_features(features[n], control_tokens[n], overrides)[0])
            for n in found
        }
        ours.append({"setting": setting, **score(alarms, onsets, collapsing)})
    baseline = []
    for setting in track(BASELINE_SWEEP, description="baseline settings"):
        alarms = {n: baseline_alarm(t, WARMUP, **setting) for n, t in tables.items()}
        baseline.append({"setting": setting, **score(alarms, onsets, collapsing)})

    edge = frontier(baseline)
    if args.plot:
        plot(ours, baseline, edge, Path(args.plot))
    slid = sorted(n for n in found if n not in collapsing and onsets[n] is not None)
    print(json.dumps({
        "benchmark": "lead_vs_false_alarms",
        "root": str(root),
        "seeds": args.seeds,
        "stable_recipe_runs_that_slid": slid,
        "ours": ours,
        "baseline_frontier": edge,
        # each of our settings against the baseline at no more false alarms than it raises
        "matched_false_alarms": [m for o in ours if (m := matched_baseline(o, baseline)) is not None],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
