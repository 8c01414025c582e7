"""`collapsewatch scan RUN [--json] [--preset NAME] [--set KEY=VALUE ...]` and `collapsewatch report RUN -o FILE.html`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from collapsewatch.errors import UserError

# detector_base.PRESETS' names, spelled out so that building the parser imports no detector code
PRESET_NAMES = ("A", "L", "S", "LS", "LSF", "LSH", "LSFH")


def _config(pairs: list[str], preset: str = "A"):
    """The detectors' MonitorConfig: a named preset (docs/detection.md, "In short"), then the `--set
    KEY=VALUE` settings on top (docs/detectors.md), or a one-line UserError."""
    from collapsewatch.diagnostics.detector_base import PRESETS, MonitorConfig

    try:
        return MonitorConfig.from_any(
            {**PRESETS[preset], **dict(MonitorConfig.parse_setting(p) for p in pairs)}
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _scan_or_user_error(path: str, config=None):
    from collapsewatch.diagnostics.scan import scan

    try:
        return scan(path, config=config, progress=True)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not scan {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    except Exception as exc:  # duckdb/pyarrow errors on a damaged run: one line, no traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not scan {path}: {first}") from None


def _cmd_scan(args: argparse.Namespace) -> int:
    findings = _scan_or_user_error(args.run, _config(args.set, args.preset))
    if args.json:
        print(json.dumps(findings.to_dict(), indent=2, sort_keys=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{findings.run}[/]  {findings.steps} steps")
    for w in findings.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    onset = findings.collapse_onset_step
    console.print(
        f"collapse onset: {'none' if onset is None else f'step {onset}'} ({findings.onset_series or 'no success series'})"
        f"   first critical: {findings.first_critical_step if findings.first_critical_step is not None else 'none'}"
        f"   lead: {findings.lead_steps if findings.lead_steps is not None else '-'} steps"
    )
    if findings.onset_context:
        console.print(f"  at the onset: {findings.onset_context['message']}")
    fmt_onset = findings.format_onset_step
    console.print(
        f"format break (healthy turns below half their peak): {'none' if fmt_onset is None else f'step {fmt_onset}'}"
    )
    if findings.root_cause:
        top = findings.root_cause[0]
        console.print(f"[bold]root cause (first to move):[/] {top['evidence']}")
    table = Table(title="alerts (warning and critical)")
    for c in ("step", "severity", "detector", "message"):
        table.add_column(c, overflow="fold")
    colours = {"critical": "red", "warning": "yellow", "info": "cyan"}
    for a in findings.alerts:
        if a.rank >= 1:
            table.add_row(str(a.step), f"[{colours[a.severity]}]{a.severity}", a.detector, a.message)
    console.print(table)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from collapsewatch.diagnostics.html_report import report

    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise UserError(f"output {out} is a directory; give a file name such as report.html")
    if not out.parent.exists():
        raise UserError(f"output folder {out.parent} does not exist")
    findings = _scan_or_user_error(args.run, _config(args.set, args.preset))
    try:
        report(args.run, out, findings=findings)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"could not write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "scan",
        help="replay the detectors over a run: collapse onset, alerts, root cause",
        description="Replay the collapse detectors over a stored run and report onset, lead time and root cause.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    _add_set(p)
    p.set_defaults(handler=_cmd_scan)
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML post-mortem of a run",
        description="Write a self-contained HTML post-mortem (plotly inline) of a run.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="where to write the report")
    _add_set(p)
    p.set_defaults(handler=_cmd_report)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        type=str.upper,
        choices=PRESET_NAMES,
        default="A",
        help="a named setting from docs/detection.md: A (round 7's rule, the default), L (expert row in every "
        "group), S (SFT-supervised), LS, LSF (LS plus the success slide; recommended with supervision), "
        "LSH, LSFH (LS, LSF paging as soon as broken turns rise); --set applies on top",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a detector setting (docs/detectors.md), repeatable; e.g. with an expert row in every group: "
        "--set signal_mixed_max=0.6 --set verdict_requires_if_seen=signal",
    )
