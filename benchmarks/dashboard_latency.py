"""Dashboard latency on a big run: first paint, live latency and drill-down, in real headless Chromium.

Generates (with the real RunWriter) a run of 5,000 steps and ~50M token rows in a temp folder,
serves the dashboard in its own process, and measures in Chromium:
  first_paint_s   click on the run in the runs list -> overview charts drawn, with a fresh server
                  process and browser each time (median of 3; the browser has just loaded "/")
  live_latency_s  RunWriter.write_step(...) called -> the new step drawn in the open overview (median of 3)
  drilldown_s     click on a rollout in the step page -> its tokens rendered (median of 5 rollouts)
Targets: <= 2 s, <= 3 s, <= 0.5 s. Prints a JSON object as its last line.

    .venv/bin/python benchmarks/dashboard_latency.py [--steps 5000] [--rows 50000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from collapsewatch.dashboard.screenshot import CHROMIUM, launch_chromium
from collapsewatch.dashboard.synthetic import SyntheticRun

GROUPS, SAMPLES = 8, 8
TRACES_DRAWN = "#overview-graph .js-plotly-plot .main-svg .scatterlayer .trace"


def generate(root: Path, steps: int, rows: int) -> dict:
    """Write the big run; returns how long it took and how big it is."""
    per_rollout = max(1, math.ceil(rows / steps / (GROUPS * SAMPLES)))
    started = time.perf_counter()
    run = SyntheticRun(
        root,
        "bench",
        collapse_at=int(steps * 0.7),
        groups=GROUPS,
        samples=SAMPLES,
        rows_per_rollout=per_rollout,
        seed=0,
    )
    columns = [
        TextColumn("writing {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("bench", total=steps)
        for step in range(steps):
            run.write_step(step)
            progress.advance(task)
    written = time.perf_counter()
    run.close("finished")
    closed = time.perf_counter()
    return {
        "steps": steps,
        "token_rows": steps * GROUPS * SAMPLES * per_rollout,
        "write_s": round(written - started, 1),
        "close_and_compact_s": round(closed - written, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(root: Path, port: int) -> subprocess.Popen:
    """The dashboard in its own process, as `collapsewatch dashboard ROOT` runs it."""
    code = (
        "import logging, sys; logging.getLogger('werkzeug').setLevel(logging.ERROR);"
        "from collapsewatch.dashboard.app import create_app;"
        f"create_app(sys.argv[1]).run(host='127.0.0.1', port={port}, debug=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("dashboard did not start: " + proc.stderr.read().decode()[-2000:])


def last_x_is(page, step: int, timeout_ms: int = 30_000) -> None:
    page.wait_for_function(
        "s => { const g = document.querySelector('#overview-graph .js-plotly-plot');"
        " if (!g || !g.data) return false; const x = g.data[0].x; return x.length && x[x.length - 1] === s; }",
        arg=step,
        timeout=timeout_ms,
    )


def cold_first_paint(p, root: Path, last_step: int) -> tuple[float, float]:
    """Fresh server process and fresh browser: open "/", then click the run (returns that time and
    the server's share of it: the page callback's request-to-response time)."""
    port = free_port()
    server = serve(root, port)
    profile = tempfile.mkdtemp(prefix="cw-bench-chromium-")
    try:
        ctx = launch_chromium(p, profile)
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("tr[data-run='bench'] img.spark", timeout=60_000)
        timing: dict[str, float] = {}

        def on_request(request) -> None:  # noqa: ANN001
            if "_dash-update-component" in request.url and '"page.children"' in (request.post_data or ""):
                timing["sent"] = time.perf_counter()

        def on_finished(request) -> None:  # noqa: ANN001
            if "sent" in timing and "done" not in timing and "_dash-update-component" in request.url:
                timing["done"] = time.perf_counter()

        page.on("request", on_request)
        page.on("requestfinished", on_finished)
        t0 = time.perf_counter()
        page.click("tr[data-run='bench'] a.run-link")
        page.wait_for_selector(TRACES_DRAWN, timeout=60_000)
        last_x_is(page, last_step)
        total = time.perf_counter() - t0
        ctx.close()
        return total, timing.get("done", 0.0) - timing.get("sent", 0.0)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def measure(root: Path, repeats: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    import collapsewatch as cw

    steps = cw.open_run(root / "bench").last_step + 1
    out: dict = {}
    live = None
    with sync_playwright() as p:
        paints = [cold_first_paint(p, root, steps - 1) for _ in range(repeats)]
        out["first_paint_s"] = round(statistics.median(t for t, _ in paints), 3)
        out["first_paint_all_s"] = [round(t, 3) for t, _ in paints]
        out["first_paint_server_s"] = round(statistics.median(s for _, s in paints), 3)

        port = free_port()
        server = serve(root, port)
        base = f"http://127.0.0.1:{port}"
        profile = tempfile.mkdtemp(prefix="cw-bench-chromium-")
        try:
            # The run resumes (status running again): a writer appends steps while the overview is open.
            live = SyntheticRun(
                root,
                "bench",
                collapse_at=int(steps * 0.7),
                groups=GROUPS,
                samples=SAMPLES,
                seed=1,
                tokenizer_path=root / "bench" / "tokenizer.json",
            )
            ctx = launch_chromium(p, profile)
            page = ctx.new_page()
            page.goto(base + "/run/bench")
            page.wait_for_selector(TRACES_DRAWN, timeout=60_000)
            t0 = time.perf_counter()
            page.reload()
            page.wait_for_selector(TRACES_DRAWN, timeout=60_000)
            last_x_is(page, steps - 1)
            out["reload_s"] = round(time.perf_counter() - t0, 3)
            out["points_drawn"] = page.evaluate(
                "() => document.querySelector('#overview-graph .js-plotly-plot').data"
                ".reduce((n, t) => n + (t.x ? t.x.length : 0), 0)"
            )

            latencies = []
            for step in range(steps, steps + 3):
                t0 = time.perf_counter()
                live.write_step(step)
                last_x_is(page, step)
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.5)
            out["live_latency_s"] = round(statistics.median(latencies), 3)
            out["live_latency_max_s"] = round(max(latencies), 3)

            step = int(steps * 0.8)
            page.goto(f"{base}/run/bench/step/{step}")
            page.wait_for_selector("#groups .chip", timeout=60_000)
            times = []
            for seq in (3, 17, 42, 8, 60):
                t0 = time.perf_counter()
                page.click(f"#groups .chip-wrap[data-seq='{seq}'] a")
                page.wait_for_selector(f"#rollout[data-seq='{seq}'] #rollout-frame", timeout=30_000)
                page.frame_locator("#rollout-frame").locator(".tok").first.wait_for(timeout=30_000)
                times.append(time.perf_counter() - t0)
            out["drilldown_s"] = round(statistics.median(times), 3)
            out["drilldown_max_s"] = round(max(times), 3)
            out["tokens_drawn"] = page.frame_locator("#rollout-frame").locator(".tok").count()
            ctx.close()
        finally:
            if live is not None:
                live.close("finished")
            server.terminate()
            server.wait(timeout=10)
            shutil.rmtree(profile, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=50_000_000, help="token rows in the run (approximately)")
    parser.add_argument(
        "--keep", type=Path, help="generate into (or reuse) this folder instead of a temp one"
    )
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit("needs Debian chromium: apt-get install -y chromium")
    root = args.keep or Path(tempfile.mkdtemp(prefix="cw-dashboard-bench-"))
    try:
        result: dict = {"benchmark": "dashboard_latency", "cpus": os.cpu_count()}
        if (root / "bench" / "run.json").exists():
            result["generation"] = "reused " + str(root)
        else:
            result["generation"] = generate(root, args.steps, args.rows)
        result.update(measure(root))
        result["targets"] = {"first_paint_s": 2.0, "live_latency_s": 3.0, "drilldown_s": 0.5}
        result["meets_targets"] = all(result[k] <= v for k, v in result["targets"].items())
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
