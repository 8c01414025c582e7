"""Only runs listed under ROOT are served: anything else is a 404 that reads nothing (real HTTP)."""

from __future__ import annotations

import http.client
import json
import sys
import threading
from pathlib import Path

import pytest

# Python-level file access (open, listdir, scandir) seen while a request is handled.
_SEEN: list[str] = []
_RECORDING = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if _RECORDING.is_set() and event in ("open", "os.listdir", "os.scandir") and args:
        _SEEN.append(str(args[0]))


sys.addaudithook(_audit)


def raw_get(base: str, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of dots or escapes)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", raw_path, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


BAD_PATHS = [
    "/run/../outside/secret",
    "/run/..",
    "/run/%2e%2e/outside/secret",
    "/run/..%2foutside%2fsecret",
    "/run/%2E%2E%2Foutside%2Fsecret",
    "/run/%252e%252e%252foutside%252fsecret",
    "/run//etc/passwd",
    "/run/%2Fetc%2Fpasswd",
    "/run/%2Fetc",
    "/run/secret",
    "/run/../outside/secret/step/1",
    "/run/..%2Foutside%2Fsecret/alerts",
    "/run/collapse-s0/../../outside/secret",
    "/run/collapse-s0/step/..%2F..%2Foutside",
    "/compare?runs=../outside/secret",
    "/compare?runs=collapse-s0,%2E%2E%2Foutside%2Fsecret",
    "/etc/passwd",
    "/outside/secret/run.json",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_request_outside_root_is_404_and_reads_nothing(served, secret_run: Path, path: str) -> None:
    served.app.catalog.runs(max_age_s=0)  # listing ready, so the request itself has no reason to list
    caches_before = set(served.app.catalog._caches)
    _SEEN.clear()
    _RECORDING.set()
    try:
        status, body = raw_get(served.base, path)
    finally:
        _RECORDING.clear()
    assert status == 404, (path, status)
    assert b"secret" not in body.replace(path.encode(), b"")
    touched = [p for p in _SEEN if str(secret_run.parent) in p]
    assert touched == [], f"{path} touched {touched}"
    assert set(served.app.catalog._caches) == caches_before  # no run was opened for it


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/run/collapse-s0",
        "/run/collapse-s0/alerts",
        "/run/collapse-s0/step/3",
        "/compare?runs=collapse-s0,stable-s0",
    ],
)
def test_listed_runs_are_served(served, path: str) -> None:
    status, body = raw_get(served.base, path)
    assert status == 200
    assert b"_dash-renderer" in body or b"dash_renderer" in body


def _post_callback(served, payload: dict) -> tuple[int, str]:
    """POST a Dash callback request as the browser would, recording file access meanwhile."""
    host, port = served.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    _SEEN.clear()
    _RECORDING.set()
    try:
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/_dash-update-component", body=json.dumps(payload), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        _RECORDING.clear()
        conn.close()


def test_callback_with_a_forged_pathname_renders_not_found_and_reads_nothing(
    served, secret_run: Path
) -> None:
    """The page router validates too: a forged pathname in a callback body gets the not-found page."""
    payload = {
        "output": "page.children",
        "outputs": {"id": "page", "property": "children"},
        "inputs": [{"id": "url", "property": "pathname", "value": "/run/..%2Foutside%2Fsecret"}],
        "state": [{"id": "url", "property": "search", "value": ""}],
        "changedPropIds": ["url.pathname"],
    }
    status, body = _post_callback(served, payload)
    assert status == 200, body[:300]
    assert "not-found" in body
    assert [p for p in _SEEN if str(secret_run.parent) in p] == []


def test_live_poll_with_a_forged_run_id_changes_nothing_and_reads_nothing(served, secret_run: Path) -> None:
    outputs = [
        "overview-graph.figure", "overview-state.data", "run-status.children", "run-status.className",
        "run-summary.children", "run-banner.children", "alerts-link.children", "overview-interval.interval",
    ]  # fmt: skip
    forged_state = {"run": "../outside/secret", "specs": [], "cursor": {}}
    payload = {
        "output": ".." + "...".join(outputs) + "..",
        "outputs": [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in outputs],
        "inputs": [{"id": "overview-interval", "property": "n_intervals", "value": 3}],
        "state": [{"id": "overview-state", "property": "data", "value": forged_state}],
        "changedPropIds": ["overview-interval.n_intervals"],
    }
    status, body = _post_callback(served, payload)
    assert status in (200, 204), body[:300]
    assert "secret" not in body
    assert [p for p in _SEEN if str(secret_run.parent) in p] == []
