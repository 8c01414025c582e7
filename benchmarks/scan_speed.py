"""How fast `scan` replays a large run, and what the live detectors cost per training step.

Generates (once, cached under --root) a constructed 1,000-step run with 10M token rows through the
real RunWriter, then times:
  * scan_s:         `scan(run)` as the CLI runs it (steps + sequences; ctrl/... scalars from the hook)
  * scan_tokens_s:  `scan(run, use_tokens=True)`: also recomputes every control-token statistic from
                    the 10M token rows with DuckDB (what happens for runs without ctrl/... scalars)
  * live_ms_per_step: LiveMonitor.update per step with 64 and 256 rollouts, fed plain columns as the
                    hook feeds it (budget: 5 ms); fed a DataFrame, as the hook did before; with
                    the expert-row gate on, as the bundled `off-policy` recipe runs it; with
                    round 24's SFT window on, in a run that logs an SFT loss; and with LSF on
Prints a JSON object as its last line. Usage: .venv/bin/python benchmarks/scan_speed.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def live_cost(rollouts: int, steps: int = 120) -> dict[str, float]:
    """Median ms per step of the live detectors fed as the hook feeds them (the step's sequences as
    plain columns), and, interleaved step by step, fed a DataFrame built from those columns (what
    the hook did before; the frame's construction is counted, as the hook paid it), and fed columns
    with the expert-row gate on (what the bundled `off-policy` recipe runs), and fed columns of a run
    that logs an SFT loss with round 24's SFT window on (rule S, an option), and with LSF on (rounds
    26-28: the gate, the SFT window and the success slide)."""
    import pandas as pd

    from collapsewatch.diagnostics.detector_base import PRESETS
    from collapsewatch.diagnostics.live import LiveMonitor
    from collapsewatch.diagnostics.synthetic import synthetic_run

    data = list(synthetic_run(steps, collapse_at=90, rollouts=rollouts, group_size=8, seed=11))
    # distinct texts per rollout, so the classifier's cache does not flatter the figure
    for s in data:
        s.sequences["turn_texts"] = [
            [t.replace("alice", f"acct{s.step}_{i}") for t in turns]
            for i, turns in enumerate(s.sequences["turn_texts"])
        ]
    columns = [{c: s.sequences[c].tolist() for c in s.sequences.columns} for s in data]
    monitors = {
        "columns": LiveMonitor(),
        "frame": LiveMonitor(),
        "gated": LiveMonitor(config=PRESETS["L"]),
        "sft window": LiveMonitor(config=PRESETS["S"]),
        # LSF (docs/detection.md, rounds 26-28): the gate, the SFT window and the success slide
        "lsf": LiveMonitor(config=PRESETS["LSF"]),
    }
    times: dict[str, list[float]] = {path: [] for path in monitors}
    order = list(monitors)
    for i, (s, cols) in enumerate(zip(data, columns, strict=True)):
        k = i % len(order)
        for path in order[k:] + order[:k]:  # each path goes first on an equal share of the steps
            scalars = {**s.scalars, "sft/loss": 0.05} if path == "sft window" else s.scalars
            t0 = time.perf_counter()
            rows = pd.DataFrame(cols) if path == "frame" else cols
            monitors[path].update(s.step, scalars, rows)
            times[path].append(time.perf_counter() - t0)
    return {path: float(np.median(t) * 1000) for path, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--token-rows", type=int, default=10_000_000)
    ap.add_argument(
        "--root", default=None, help="where to keep the generated run (default: a temp dir, removed)"
    )
    args = ap.parse_args()

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from collapsewatch import open_run
    from collapsewatch.diagnostics.scan import scan
    from collapsewatch.diagnostics.synthetic import write_synthetic_run

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="cw-scan-speed-"))
    name = f"synthetic-{args.steps}-{args.token_rows}"
    run_dir = root / name
    gen_s = None
    if not (run_dir / "run.json").exists() or open_run(run_dir).status != "finished":
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic_run(
            root,
            name,
            n_steps=args.steps,
            collapse_at=int(args.steps * 0.7),
            tokens_per_step=args.token_rows // args.steps,
            rollouts=64,
            group_size=8,
        )
        gen_s = time.perf_counter() - t0
    run = open_run(run_dir)
    rows = run.row_counts()

    t0 = time.perf_counter()
    findings = scan(run_dir)
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    findings_tok = scan(run_dir, use_tokens=True)
    scan_tokens_s = time.perf_counter() - t0

    live64, live256 = live_cost(64), live_cost(256)
    result = {
        "benchmark": "scan_speed",
        "cpu_count": os.cpu_count(),
        "steps": findings.steps,
        "token_rows": rows["tokens"],
        "sequence_rows": rows["sequences"],
        "run_bytes": _dir_bytes(run_dir),
        "generate_s": None if gen_s is None else round(gen_s, 1),
        "scan_s": round(scan_s, 2),
        "scan_tokens_s": round(scan_tokens_s, 2),
        "target_s": 10.0,
        "alerts": len(findings.alerts),
        "collapse_onset_step": findings.collapse_onset_step,
        "first_critical_step": findings.first_critical_step,
        "root_cause_from_tokens": findings_tok.root_cause[0]["evidence"] if findings_tok.root_cause else None,
        "live_ms_per_step_64_rollouts": round(live64["columns"], 2),
        "live_ms_per_step_256_rollouts": round(live256["columns"], 2),
        "live_budget_ms": 5.0,
        "live_ms_per_step_via_dataframe_64_256": [round(live64["frame"], 2), round(live256["frame"], 2)],
        "live_ms_per_step_expert_row_gate_64_256": [round(live64["gated"], 2), round(live256["gated"], 2)],
        "live_ms_per_step_sft_window_64_256": [
            round(live64["sft window"], 2),
            round(live256["sft window"], 2),
        ],
        "live_ms_per_step_lsf_64_256": [round(live64["lsf"], 2), round(live256["lsf"], 2)],
    }
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
