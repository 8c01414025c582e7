"""The Alert record every detector emits; its fields are the alerts table's columns (docs/run-format.md)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from collapsewatch.schema import SEVERITIES

SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}  # info 0, warning 1, critical 2


def _json_safe(value: Any) -> Any:
    """Evidence goes to JSON: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclass
class Alert:
    """One finding about one step. `family` groups detectors that see the same evidence, so the
    combined verdict can demand agreement between *independent* families before paging."""

    step: int
    detector: str
    severity: str
    message: str
    value: float = float("nan")
    baseline: float = float("nan")
    evidence: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    time: float = field(default_factory=time.time)
    source: str = "live"

    @property
    def rank(self) -> int:
        return SEVERITY_RANK.get(self.severity, 0)

    def evidence_json(self) -> str:
        return json.dumps(_json_safe(self.evidence), sort_keys=True)

    def to_row(self) -> dict[str, Any]:
        """A row of the alerts table (evidence as a JSON string)."""
        return {
            "step": int(self.step),
            "detector": self.detector,
            "severity": self.severity,
            "message": self.message,
            "value": float(self.value),
            "baseline": float(self.baseline),
            "evidence": self.evidence_json(),
            "time": float(self.time),
            "source": self.source,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (findings, JSON-lines sink, webhook)."""
        return {
            "step": int(self.step),
            "detector": self.detector,
            "severity": self.severity,
            "family": self.family,
            "message": self.message,
            "value": _json_safe(float(self.value)),
            "baseline": _json_safe(float(self.baseline)),
            "evidence": _json_safe(self.evidence),
        }
