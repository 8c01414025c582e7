"""Glue between the Recorder and the live detectors (collapsewatch.diagnostics.live.LiveMonitor).

The detectors are optional: when diagnostics is not importable the Recorder simply runs none.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from collapsewatch import schema

SEVERITY_LEVEL = {name: level for level, name in enumerate(schema.SEVERITIES)}  # info 0 ... critical 2
STOP_LEVELS = {name: level for name, level in SEVERITY_LEVEL.items() if level > 0}  # what stop_on accepts


def detector_config(settings: Mapping[str, Any] | None) -> Any:
    """The detectors' MonitorConfig for these settings (ValueError for one the diagnostics do not
    know), or None when there are none or diagnostics is unavailable."""
    if not settings:
        return None
    try:
        from collapsewatch.diagnostics.detector_base import MonitorConfig
    except Exception:
        return None
    return MonitorConfig.from_any(settings)


def make_monitor(
    control_texts: list[str],
    sinks: Sequence[Any] | None,
    on_failure: Callable[[str, BaseException], None],
    config: Any = None,
) -> Any:
    """A LiveMonitor for these control tokens and detector config (`detector_config`), or None when
    diagnostics is unavailable."""
    try:
        from collapsewatch.diagnostics.live import LiveMonitor
    except Exception:
        return None
    try:
        return LiveMonitor(control_tokens=control_texts, sinks=list(sinks or []), config=config)
    except Exception as exc:
        on_failure("live_monitor", exc)
        return None


def trips_stop(rows: list[dict[str, Any]], stop_on: str | None) -> bool:
    """True when an alert row reaches the `stop_on` severity ("warning" or "critical")."""
    if stop_on is None:
        return False
    return any(SEVERITY_LEVEL.get(r["severity"], 0) >= STOP_LEVELS[stop_on] for r in rows)


def alert_row(alert: Any, step: int) -> dict[str, Any]:
    """An alerts-table row from a diagnostics Alert (or anything with the same fields)."""
    if hasattr(alert, "to_row"):
        row = dict(alert.to_row())
        row["source"] = "live"
        return {k: row.get(k) for k in schema.ALERTS_SCHEMA.names}
    get = alert.get if isinstance(alert, Mapping) else lambda k, d=None: getattr(alert, k, d)
    evidence = get("evidence", None)
    return {
        "step": int(get("step", step) if get("step", None) is not None else step),
        "detector": str(get("detector", "unknown")),
        "severity": str(get("severity", "info")),
        "message": str(get("message", "")),
        "value": float(get("value", math.nan) if get("value", None) is not None else math.nan),
        "baseline": float(get("baseline", math.nan) if get("baseline", None) is not None else math.nan),
        "evidence": evidence
        if isinstance(evidence, str) or evidence is None
        else json.dumps(evidence, default=str),
        "time": float(get("time", None) or time.time()),
        "source": "live",
    }
