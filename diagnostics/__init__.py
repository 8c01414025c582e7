"""collapsewatch.diagnostics: judge a run, live or after the fact.

`classify_turn` gives a turn's structural state; `LiveMonitor` runs every detector once per step
(inside training, via the Recorder); `scan` replays the same detectors over a stored run and adds the
collapse onset, lead time and control-token root cause; `report` writes an HTML post-mortem.
"""

from collapsewatch.diagnostics.alerts import Alert
from collapsewatch.diagnostics.detector_base import MonitorConfig
from collapsewatch.diagnostics.live import LiveMonitor
from collapsewatch.diagnostics.onset import collapse_onset
from collapsewatch.diagnostics.scan import Findings, scan
from collapsewatch.diagnostics.structure import (
    RolloutSummary,
    StructuralState,
    classify_turn,
    summarize_rollout,
)


def report(run, out_html, findings=None):
    """Write the self-contained HTML post-mortem of a run (imports plotly only when called)."""
    from collapsewatch.diagnostics.html_report import report as _report

    return _report(run, out_html, findings=findings)


__all__ = [
    "Alert",
    "Findings",
    "LiveMonitor",
    "MonitorConfig",
    "RolloutSummary",
    "StructuralState",
    "classify_turn",
    "collapse_onset",
    "report",
    "scan",
    "summarize_rollout",
]
