"""Where live alerts go: the console (rich), a JSON-lines file, a Slack-compatible webhook.

A sink never raises into training: failures are counted in `failures`. The webhook posts from a
background thread so a slow endpoint costs the training loop nothing.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from pathlib import Path

from collapsewatch.diagnostics.alerts import SEVERITY_RANK, Alert


class Sink:
    def __init__(self, min_severity: str = "warning"):
        if min_severity not in SEVERITY_RANK:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITY_RANK)}")
        self.min_rank = SEVERITY_RANK[min_severity]
        self.failures = 0

    def emit(self, alerts: list[Alert]) -> None:
        for a in alerts:
            if a.rank < self.min_rank:
                continue
            try:
                self.write(a)
            except Exception:  # noqa: BLE001 - a sink must never stop training
                self.failures += 1

    def write(self, alert: Alert) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


class ConsoleSink(Sink):
    """Coloured one-paragraph alerts on stderr."""

    def __init__(self, min_severity: str = "warning", console=None):
        super().__init__(min_severity)
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console

    def write(self, alert: Alert) -> None:
        style = _STYLE.get(alert.severity, "")
        self.console.print(
            f"[{style}]collapsewatch {alert.severity.upper()}[/] step {alert.step} [bold]{alert.detector}[/]: ",
            alert.message,
            sep="",
            markup=True,
            highlight=False,
        )


class JsonlSink(Sink):
    """One JSON object per alert, appended and flushed (tail -f friendly)."""

    def __init__(self, path: str | Path, min_severity: str = "info"):
        super().__init__(min_severity)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, alert: Alert) -> None:
        self._fh.write(json.dumps(alert.to_dict(), sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def slack_payload(alert: Alert, run_name: str | None = None) -> dict:
    """Slack incoming-webhook body: `text` is what Slack shows; `alert` carries the structured record."""
    where = f" [{run_name}]" if run_name else ""
    icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(
        alert.severity, ":information_source:"
    )
    text = f"{icon} collapsewatch{where} *{alert.severity.upper()}* step {alert.step} `{alert.detector}`: {alert.message}"
    return {"text": text, "alert": alert.to_dict()}


class WebhookSink(Sink):
    """POSTs Slack-compatible JSON to `url` from a daemon thread; `flush()` waits for the queue."""

    def __init__(
        self, url: str, min_severity: str = "critical", run_name: str | None = None, timeout: float = 5.0
    ):
        super().__init__(min_severity)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://, got {url!r}")
        self.url = url
        self.run_name = run_name
        self.timeout = timeout
        self.sent = 0
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._loop, name="collapsewatch-webhook", daemon=True)
        self._thread.start()

    def write(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(slack_payload(alert, self.run_name))
        except queue.Full:
            self.failures += 1

    def _loop(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                req = urllib.request.Request(
                    self.url,
                    data=json.dumps(payload).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                self.sent += 1
            except Exception:  # noqa: BLE001 - network errors are counted, never raised
                self.failures += 1
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Block until every queued alert was posted (or failed)."""
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=self.timeout)
