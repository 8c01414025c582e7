"""Fixtures for the dashboard tests: small real runs written with RunWriter, the app served over real
HTTP in a thread, and a real headless Chromium driven by Playwright."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from collapsewatch.dashboard.screenshot import CHROMIUM, launch_chromium
from collapsewatch.dashboard.synthetic import write_run

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT with a collapsing run, a stable one, a crashed one and one with a corrupt file."""
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "collapse-s0", 40, collapse_at=24, seed=0)
    write_run(root, "stable-s0", 30, seed=1)
    write_run(root, "crashed-s0", 8, seed=2, status="crashed")
    write_run(root, "corrupt-s0", 6, seed=3)
    bad = root / "corrupt-s0" / "steps" / "rank=0" / "step-00000099.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    write_run(root, "badmeta-s0", 2, seed=4)
    (root / "badmeta-s0" / "run.json").write_text("{not json")
    return root


@pytest.fixture(scope="session")
def secret_run(runs_root: Path) -> Path:
    """A perfectly valid run OUTSIDE ROOT (a sibling): the dashboard must never read it."""
    outside = runs_root.parent / "outside"
    write_run(outside, "secret", 3, seed=9)
    return outside / "secret"


class Served:
    def __init__(self, app) -> None:  # noqa: ANN001
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.app = app
        self.server = make_server("127.0.0.1", 0, app.server, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def served(runs_root: Path) -> Iterator[Served]:
    from collapsewatch.dashboard.app import create_app

    served = Served(create_app(runs_root))
    yield served
    served.close()


@pytest.fixture(scope="session")
def browser_context():
    """One headless Chromium (Debian's, via Playwright's executable_path) with a fresh profile."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="cw-chromium-")
    with sync_playwright() as p:
        context = launch_chromium(p, profile)
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # type: ignore[attr-defined]
    yield page
    page.close()


@pytest.fixture(scope="session")
def screenshot():
    """save(page, name): a full-page screenshot as a test artifact (tests/artifacts/dashboard/, gitignored)."""

    def save(page, name: str) -> Path:  # noqa: ANN001
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
