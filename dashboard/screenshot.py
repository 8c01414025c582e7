"""Save a screenshot of a dashboard page with headless Chromium (for the README and docs/img).

    python -m collapsewatch.dashboard.screenshot ROOT RUN docs/img/dashboard-overview.png [--page overview|step:N|alerts]

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` Python package (dev extra); no
browser download. The app is served in-process on a free localhost port for the shot.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from collapsewatch.dashboard import routes
from collapsewatch.errors import UserError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def launch_chromium(playwright: Any, profile: str, width: int = 1400, height: int = 1000) -> Any:
    """Debian's headless Chromium through Playwright, with a persistent profile (no browser download)."""
    return playwright.chromium.launch_persistent_context(
        profile,
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height},
    )


def take(root: Path, run_id: str, out: Path, page_name: str = "overview", width: int = 1400) -> Path:
    """Serve ROOT, open one page of RUN, wait until it is drawn, save a full-page PNG to `out`."""
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from collapsewatch.dashboard.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = create_app(root)
    if app.catalog.resolve(run_id) is None:
        raise UserError(f"no run {run_id!r} under {root}")
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    profile = tempfile.mkdtemp(prefix="cw-shot-")
    try:
        with sync_playwright() as p:
            ctx = launch_chromium(p, profile, width, 900)
            page = ctx.new_page()
            if page_name.startswith("step:"):
                page.goto(base + routes.step_href(run_id, int(page_name.split(":", 1)[1])))
                page.wait_for_selector("#groups .chip", timeout=60_000)
                page.click("#groups .chip-wrap a")
                page.frame_locator("#rollout-frame").locator(".tok").first.wait_for(timeout=60_000)
            elif page_name == "alerts":
                page.goto(base + routes.alerts_href(run_id))
                page.wait_for_selector("#alerts-graph .main-svg", timeout=60_000)
            else:
                page.goto(base + routes.run_href(run_id))
                page.wait_for_selector("#overview-graph .main-svg .scatterlayer .trace", timeout=60_000)
                time.sleep(3)  # let the background state classification land in the chart
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            ctx.close()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("run")
    parser.add_argument("out", type=Path)
    parser.add_argument("--page", default="overview", help="overview, alerts or step:N")
    args = parser.parse_args()
    try:
        print(take(args.root, args.run, args.out, args.page))
    except UserError as exc:
        raise SystemExit(f"collapsewatch: {exc}") from None


if __name__ == "__main__":
    main()
