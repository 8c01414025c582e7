"""Held-out figures pooled over archived rounds: one setting replayed on every round's feature archive.

Each round keeps its runs' detector inputs in docs/data/features/<round>/ and its held-out result in
docs/data/deteval<N>-heldout.json, which names the round's seeds and recipes. This replays
`detection_eval.py` with one preset (and --set overrides) on each round and pools the runs, as the
issue's figures are defined (`detection_eval.issue_figures`, the same code as each round's own
figures). Stable runs are split into supervised recipes
and the unsupervised control (`low-lr`). Prints one line per round, then the pooled JSON last.

    .venv/bin/python benchmarks/pooled_eval.py --preset LSF --rounds r27 r28 r29 r29lr r30 r31 r32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from detection_eval import issue_figures  # this script's folder is on sys.path when it runs

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data"
UNSUPERVISED = ("low-lr",)  # stable recipes with no supervisory signal: the runs that hold on their own


def round_definition(name: str) -> dict:
    """Seeds and recipes of a round, from its held-out JSON (round 7's rule, the one every round ran)."""
    number = name.removeprefix("r")
    candidates = [DATA / f"deteval{number}-heldout.json"]
    if number.endswith("lr"):
        candidates.insert(0, DATA / f"deteval{number.removesuffix('lr')}lowlr-A.json")
    for path in candidates:
        if path.exists():
            d = json.loads(path.read_text())
            return {"seeds": d["seeds"], "collapsing": d["collapsing_recipes"], "stable": d["stable_recipes"]}
    raise SystemExit(f"error: no held-out JSON for round {name} in {DATA}")


def replay(name: str, archive_root: Path, preset: str, overrides: list[str], as_collapsing=()) -> dict:
    d = round_definition(name)
    moved = [r for r in d["stable"] if r in as_collapsing]
    d["collapsing"] += moved
    d["stable"] = [r for r in d["stable"] if r not in moved] or ["none"]
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "detection_eval.py"), "--root", str(archive_root / name),
        "--seeds", *map(str, d["seeds"]), "--collapsing", *d["collapsing"], "--stable", *d["stable"],
        "--plots", "", "--preset", preset, *[x for o in overrides for x in ("--set", o)],
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise SystemExit(
            f"error: detection_eval failed on {name}: {(out.stderr or out.stdout).strip()[-400:]}"
        )
    return json.loads(lines[-1])


def pool(per_round: dict[str, dict]) -> dict:
    """detection_eval's issue figures over every round's runs, stable runs split by supervision."""
    runs = [r for d in per_round.values() for r in d["runs"]]
    figures = issue_figures(runs)
    stable = [r for r in runs if r["kind"] == "stable"]
    control = [r for r in stable if r["run"].rsplit("-s", 1)[0] in UNSUPERVISED]
    paged_control = sum(r["first_critical"] is not None for r in control)
    return {
        key: figures[key]
        for key in ("collapsing_runs", "detected_by_onset", "detected_by_onset_fraction", "median_lead_steps")
    } | {
        "supervised_runs": figures["stable_runs"] - len(control),
        "supervised_runs_with_critical": figures["stable_runs_with_critical"] - paged_control,
        "unsupervised_stable_runs": len(control),
        "unsupervised_stable_runs_with_critical": paged_control,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", nargs="+", required=True, help="archive folders under --archives, e.g. r30")
    ap.add_argument("--preset", default="A", help="a MonitorConfig preset (A, L, LS, LSF, S)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="further overrides")
    ap.add_argument("--archives", default=str(DATA / "features"), help="folder of the rounds' archives")
    ap.add_argument(
        "--as-collapsing", nargs="*", default=["hint"],
        help="recipes pooled as collapsing wherever a round ran them as stable (default: hint, which "
        "round 25 found does not hold a run; the pooled figures of docs/detection.md count its collapses)",
    )  # fmt: skip
    args = ap.parse_args()
    per_round = {}
    for name in args.rounds:
        per_round[name] = replay(name, Path(args.archives), args.preset, args.set, args.as_collapsing)
        print(json.dumps({"round": name} | pool({name: per_round[name]})), flush=True)
    print(json.dumps({"benchmark": "pooled_eval", "preset": args.preset, "overrides": args.set,
                      "as_collapsing": args.as_collapsing, "rounds": args.rounds} | pool(per_round)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
