"""LiveMonitor end to end on constructed runs, the combined verdict, and the three sinks."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from collapsewatch.diagnostics import LiveMonitor
from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.sinks import ConsoleSink, JsonlSink, WebhookSink
from collapsewatch.diagnostics.synthetic import synthetic_run


def feed(monitor, **kwargs):
    for s in synthetic_run(**kwargs):
        monitor.update(s.step, s.scalars, s.sequences)
    return monitor.alerts


def test_collapsing_run_pages_before_success_falls_and_stable_run_stays_quiet():
    alerts = feed(LiveMonitor(), n_steps=90, collapse_at=60, seed=3)
    critical = [a for a in alerts if a.severity == "critical"]
    assert critical and critical[0].detector == "verdict"
    assert 52 <= critical[0].step <= 62
    assert len(critical[0].evidence["families"]) >= 2
    first_control = min(a.step for a in alerts if a.detector == "control_spike")
    assert first_control <= critical[0].step
    for seed in range(3):
        stable = feed(LiveMonitor(), n_steps=90, collapse_at=None, seed=seed)
        assert [a for a in stable if a.rank >= 1] == []


def test_one_family_alone_never_pages():
    mon = LiveMonitor()
    for step in range(60):
        mon.update(step, {"grad_norm": 50.0 if step >= 40 else 0.5 + 0.01 * (step % 3)})
    assert any(a.detector == "grad_norm_spike" for a in mon.alerts)
    assert not any(a.severity == "critical" for a in mon.alerts)
    assert mon.should_stop("warning") and not mon.should_stop("critical") and not mon.should_stop(None)


CALL = '<tool_call>{"name": "get", "arguments": {"a": 1}}</tool_call><|im_end|>'


def rollouts(rng, broken_share: float, n: int = 32) -> pd.DataFrame:
    """One step's rollouts: each a healthy call and answer, or (at `broken_share`) a bare tag."""
    broken = rng.random(n) < broken_share
    turns = [["<tool_call><|im_end|>"] if b else [CALL, "alice has 40."] for b in broken]
    return pd.DataFrame({"seq": range(n), "uid": [f"u{i}" for i in range(n)], "turn_texts": turns})


def test_page_comes_when_the_format_breaks_during_a_slide_that_alerted_long_before():
    """Success slides from step 30 (one warning); turns break from 45. The page comes on the step the
    structure family first warns, not when the slide would next have re-alerted."""
    rng = np.random.default_rng(4)
    mon = LiveMonitor(config={"warmup": 20})
    for step in range(70):
        seqs = rollouts(rng, 0.5 if step >= 45 else 0.03)
        rate = (0.2 if step >= 30 else 0.6) + 0.02 * rng.normal()
        mon.update(step, {"success/rate": rate}, seqs)
    success = [a.step for a in mon.alerts if a.detector == "success_collapse"]
    structure = [a.step for a in mon.alerts if a.family == "structure"]
    pages = [a.step for a in mon.alerts if a.severity == "critical"]
    assert len(success) == 1 and success[0] < 40
    assert structure and pages and pages[0] == structure[0]


def test_page_names_each_agreeing_detector_once_under_its_alert_name():
    """Entropy spikes (alerting as `entropy_spike`, a detector named `entropy`) while turns break:
    the page's evidence lists `entropy_spike` once, not also as `entropy`."""
    rng = np.random.default_rng(5)
    mon = LiveMonitor(config={"warmup": 20})
    for step in range(60):
        seqs = rollouts(rng, 0.5 if step >= 40 else 0.03)
        entropy = (0.6 if step >= 40 else 0.1) * (1 + 0.05 * rng.normal())
        mon.update(step, {"entropy/mean": entropy}, seqs)
    page = next(a for a in mon.alerts if a.severity == "critical")
    names = [d["detector"] for d in page.evidence["detectors"]]
    assert "entropy_spike" in names and "entropy" not in names
    assert len(names) == len(set(names))


def test_nan_pages_at_once_and_monitor_survives_garbage():
    mon = LiveMonitor()
    assert mon.update(0, {"loss": float("nan")})[0].severity == "critical"
    mon.update(1, {"loss": "not a number", "ctrl/x/y/mean": None}, sequences=None)
    import pandas as pd

    mon.update(2, {}, pd.DataFrame({"turn_texts": [None, 3, ["<tool_call>"]], "reward": ["a", None, 1]}))
    assert mon.steps_seen == 3


def test_console_and_jsonl_sinks(tmp_path):
    buf = io.StringIO()
    console = ConsoleSink("warning", console=Console(file=buf, width=200, color_system=None))
    path = tmp_path / "alerts" / "alerts.jsonl"
    jsonl = JsonlSink(path, "info")
    mon = LiveMonitor(sinks=[console, jsonl])
    feed(mon, n_steps=80, collapse_at=55, seed=1)
    mon.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == len(mon.alerts) > 0
    assert {"step", "detector", "severity", "message", "evidence"} <= set(lines[0])
    assert "CRITICAL" in buf.getvalue() and "verdict" in buf.getvalue()


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def test_webhook_posts_slack_json_for_critical_only(webhook_server):
    url, received = webhook_server
    sink = WebhookSink(url, "critical", run_name="exp1")
    mon = LiveMonitor(sinks=[sink])
    feed(mon, n_steps=80, collapse_at=55, seed=2)
    sink.flush()
    critical = [a for a in mon.alerts if a.severity == "critical"]
    assert len(received) == len(critical) > 0 and sink.sent == len(critical)
    ctype, payload = received[0]
    assert ctype == "application/json"
    assert payload["text"].startswith(":rotating_light: collapsewatch [exp1] *CRITICAL*")
    assert payload["alert"]["detector"] == "verdict"
    sink.close()


def test_webhook_failure_is_counted_not_raised():
    sink = WebhookSink("http://127.0.0.1:9/nothing-listens-here", "info", timeout=0.5)
    sink.emit([Alert(step=1, detector="x", severity="critical", message="m")])
    sink.flush()
    assert sink.failures == 1 and sink.sent == 0
    with pytest.raises(ValueError):
        WebhookSink("ftp://example", "info")


def test_plain_columns_judge_exactly_as_the_dataframe_of_them():
    """The hook feeds plain columns (no DataFrame per step); alerts, evidence included, must not change,
    and the frame an alert's evidence reads is built only on demand."""
    by_columns, by_frame = LiveMonitor(), LiveMonitor()
    for s in synthetic_run(n_steps=90, collapse_at=55, seed=5):
        columns = {c: s.sequences[c].tolist() for c in s.sequences.columns}
        by_columns.update(s.step, s.scalars, columns)
        by_frame.update(s.step, s.scalars, pd.DataFrame(columns))
        assert by_columns.last_features.derived == by_frame.last_features.derived
    assert any(a.severity == "critical" for a in by_frame.alerts)
    assert [a.to_dict() for a in by_columns.alerts] == [a.to_dict() for a in by_frame.alerts]
    last = by_columns.last_features
    assert last.rows is columns  # kept as given: no frame was built for the step up front
    assert list(last.sequences.columns) == list(columns)
