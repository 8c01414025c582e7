"""Does acting on a page save the run? Fork a bundled-trainer run at given steps, continue each fork
with or without a remedy, and compare how the copies end.

The trainer is deterministic on one machine at one thread: a run to step F reproduces the first F
steps of a longer run with the same seed (`--original` checks it). So a run's state at its page is
rebuilt without keeping every checkpoint: train the recipe to the fork step, copy the run folder once
per arm, and resume each copy with its own settings (`collapsewatch train --resume --set ...`). Arms
forked at one step share its weights, optimizer state and task stream, and the sampling stream from
there on (a resume reseeds it from the step), so they differ only by the remedy.

An arm is `NAME@STEP[:KEY=VALUE,...]`: `none@30` continues unchanged from step 30,
`sft@30:err_sft_every=1` adds erroneous-example SFT after every step from 31 (the bundled
`interleaved` supervision). Each arm's outcome: the issue's collapse onset over the whole run, whether
the 5-step success mean stood below half of its peak at the end (`below_line_at_end`), and the
success over the last 10 steps. Runs already finished are reused, so an interrupted call picks up
where it stopped. Prints one JSON line per arm, then one JSON object with every arm last.

Usage: .venv/bin/python benchmarks/act_on_page.py --out /work/runs/r42/s400 --seed 400 \
    --arm none@30 --arm sft@30:err_sft_every=1 --arm sft@40:err_sft_every=1 \
    [--original /work/runs/r40/collapse-s400] [--plot arms.png] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import collapsewatch as cw
from collapsewatch.diagnostics.onset import ONSET_FRACTION, ONSET_WINDOW
from collapsewatch.trainer.report import summarise

_ARM = re.compile(r"^(?P<name>[\w.-]+)@(?P<step>\d+)(?::(?P<sets>.+))?$")


@dataclass(frozen=True)
class Arm:
    name: str
    fork: int
    sets: tuple[str, ...]  # KEY=VALUE for `collapsewatch train --set`, applied from the fork on

    @classmethod
    def parse(cls, text: str) -> Arm:
        m = _ARM.match(text)
        if not m:
            raise SystemExit(f"error: --arm {text!r}: expected NAME@STEP[:KEY=VALUE,...]")
        sets = tuple(s for s in (m["sets"] or "").split(",") if s)
        if any("=" not in s for s in sets):
            raise SystemExit(f"error: --arm {text!r}: settings must be KEY=VALUE")
        return cls(m["name"], int(m["step"]), sets)


def finished_at(run_dir: Path) -> int | None:
    """The last step of a finished run folder, None if it is missing or did not finish."""
    try:
        run = cw.open_run(run_dir)
        return run.last_step if run.status == "finished" else None
    except Exception:  # noqa: BLE001 - a half-written folder is redone, not an error
        return None


def train(
    args: argparse.Namespace, root: Path, steps: int, sets: tuple[str, ...], resume: bool, log: Path
) -> None:
    cmd = [
        sys.executable, "-m", "collapsewatch", "train", "--recipe", args.recipe, "--seed", str(args.seed),
        "--steps", str(steps), "--out", str(root), "--threads", "1", "--no-progress",
        *(["--resume"] if resume else []), *[x for s in (*args.set, *sets) for x in ("--set", s)],
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"COLLAPSEWATCH_THREADS": "1"}
        )
    if done.returncode != 0:
        raise SystemExit(f"error: training failed ({' '.join(cmd[3:])}); see {log}")


def rl_steps(run_dir: Path) -> pd.DataFrame:
    """The run's per-step scalars from step 1 on (step 0 holds the warm start's), in step order."""
    steps = cw.open_run(run_dir).steps()
    return steps[steps["step"] >= 1].sort_values("step")


def reproduces(fork: Path, original: Path, step: int) -> bool:
    """Every scalar of steps 1..`step` (wall-clock times and evaluations aside) equal in both runs."""
    a, b = (t[t["step"] <= step] for t in (rl_steps(fork), rl_steps(original)))
    names = sorted(c for c in set(a) & set(b) if not c.startswith(("time/", "eval/")))
    if len(a) != step or len(b) != step or "success/rate" not in names:
        return False
    x, y = (t[names].to_numpy(dtype=float) for t in (a, b))
    return bool(np.array_equal(x, y, equal_nan=True))


def outcome(run_dir: Path, arm: Arm) -> dict:
    """The arm's onset, where its 5-step success mean ends against half of its peak, and its tail."""
    row = summarise(cw.open_run(run_dir))
    end, peak = float(rl_steps(run_dir)["success/rate"].tail(ONSET_WINDOW).mean()), row["peak_ma5"]
    return {
        "arm": arm.name, "fork": arm.fork, "sets": list(arm.sets), "run": str(run_dir), "steps": row["steps"],
        "onset": row["onset"], "peak_ma5": round(peak, 4), "ma5_at_end": round(end, 4),
        "below_line_at_end": bool(end < ONSET_FRACTION * peak), "success_last10": round(row["last10"], 4),
        "broken_last5": round(row["last5_text_pollution"] + row["last5_full_collapse"], 4),
    }  # fmt: skip


def plot(arms: list[dict], path: Path) -> Path:
    """Each arm's 5-step success mean and broken turns over the whole run, forks dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from detection_eval import save_figure  # this script's folder is on sys.path when it runs

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for arm in arms:
        steps = rl_steps(Path(arm["run"]))
        label = f"{arm['arm']} (from {arm['fork']})"
        (line,) = top.plot(steps["step"], steps["success/rate"].rolling(ONSET_WINDOW).mean(), label=label)
        if {"states/text_pollution", "states/full_collapse"} <= set(steps):
            broken = steps["states/text_pollution"] + steps["states/full_collapse"]
            bottom.plot(steps["step"], broken.rolling(3, min_periods=1).mean(), color=line.get_color())
        top.axvline(arm["fork"], color=line.get_color(), ls=":", lw=1)
    top.axhline(0.5 * max(a["peak_ma5"] for a in arms), color="black", ls="--", lw=1, label="onset line")
    top.set_ylabel("success (5-step mean)")
    bottom.set_ylabel("broken turns (3-step mean)")
    bottom.set_xlabel("step")
    top.legend(fontsize=7)
    return save_figure(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the forks, the arms and their logs")
    ap.add_argument("--recipe", default="collapse")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--steps", type=int, default=80, help="where every arm ends")
    ap.add_argument("--arm", action="append", required=True, metavar="NAME@STEP[:KEY=VALUE,...]")
    ap.add_argument(
        "--original", default=None, help="a longer run of the same seed: check each fork reproduces it"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every stage (tests)")
    ap.add_argument("--plot", default=None, metavar="PNG", help="each arm's success and broken turns")
    args = ap.parse_args()
    arms = [Arm.parse(a) for a in args.arm]
    if len({a.name for a in arms}) < len(arms) or any(not 0 < a.fork < args.steps for a in arms):
        raise SystemExit("error: arm names must differ and every fork step lie between 0 and --steps")
    root, run_name = Path(args.out), f"{args.recipe}-s{args.seed}"
    forks = {}
    for step in sorted({a.fork for a in arms}):
        fork = root / f"fork-{step}" / run_name
        if finished_at(fork) != step:
            shutil.rmtree(fork, ignore_errors=True)
            print(f"training {run_name} to step {step}", file=sys.stderr, flush=True)
            train(args, fork.parent, step, (), False, root / "logs" / f"fork-{step}.log")
        forks[step] = fork
        if args.original and not reproduces(fork, Path(args.original), step):
            raise SystemExit(
                f"error: the fork at {step} does not reproduce {args.original}'s first {step} steps"
            )
    results = []
    for arm in arms:
        run_dir = root / arm.name / run_name
        if finished_at(run_dir) != args.steps:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(forks[arm.fork], run_dir)
            print(f"arm {arm.name}: steps {arm.fork + 1}-{args.steps}", file=sys.stderr, flush=True)
            train(args, run_dir.parent, args.steps, arm.sets, True, root / "logs" / f"{arm.name}.log")
        results.append(outcome(run_dir, arm))
        print(json.dumps(results[-1]), flush=True)
    if args.plot:
        plot(results, Path(args.plot))
    print(json.dumps({
        "benchmark": "act_on_page", "recipe": args.recipe, "seed": args.seed, "steps": args.steps,
        "reproduced": args.original if args.original else None, "arms": results,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
