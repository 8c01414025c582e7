"""The `collapsewatch` command: one entry point, a subcommand per job.

Each part adds its own subcommands through `collapsewatch.<part>.cli:register(subparsers)`;
a handler returns an exit status, and a `UserError` becomes one line on stderr and status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime

from collapsewatch.errors import UserError

_PARTS = ("trainer", "diagnostics", "dashboard", "demo")


def _cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from collapsewatch.store.reader import list_runs

    runs = list_runs(args.root)
    table = Table(title=f"runs in {args.root}")
    for column in ("run", "status", "steps", "last step", "last update", "alerts"):
        table.add_column(column)
    colours = {"running": "green", "finished": "blue", "crashed": "red"}
    for r in runs:
        when = datetime.fromtimestamp(r.last_update).strftime("%Y-%m-%d %H:%M:%S") if r.last_update else "-"
        table.add_row(
            r.name,
            f"[{colours.get(r.status, 'white')}]{r.status}",
            str(r.steps),
            "-" if r.last_step is None else str(r.last_step),
            when,
            str(r.alert_count),
        )
    Console().print(table)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from collapsewatch.store.reader import open_run

    run = open_run(args.run)
    console = Console()
    console.print(f"[bold]{run.name}[/]  {run.path}")
    console.print(
        f"schema version {run.meta.get('schema_version')}, status {run.status}, "
        f"capture {run.meta.get('capture')}, world size {run.meta.get('world_size')}"
    )
    console.print(f"control tokens: {', '.join(run.control_tokens) or '-'}")
    table = Table()
    for column in ("table", "files", "rows"):
        table.add_column(column)
    counts = run.row_counts()
    for name, rows in counts.items():
        table.add_row(name, str(len(run.files(name))), f"{rows:,}")
    console.print(table)
    failures = run.meta.get("failures") or {}
    for beat in run.heartbeats():
        for kind, n in (beat.get("failures") or {}).items():
            failures[f"rank {beat.get('rank')}: {kind}"] = n
    if failures:
        console.print(f"[yellow]hook failures: {failures}")
    for path in run.bad_files:
        console.print(f"[red]corrupt file skipped: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collapsewatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("runs", help="list the runs under ROOT", description="List the runs under ROOT.")
    p.add_argument("root", metavar="ROOT")
    p.set_defaults(handler=_cmd_runs)
    p = sub.add_parser(
        "inspect",
        help="tables, row counts and schema version of a run",
        description="Show a run's tables, row counts, schema version and failures.",
    )
    p.add_argument("run", metavar="RUN")
    p.set_defaults(handler=_cmd_inspect)
    for part in _PARTS:
        try:
            module = importlib.import_module(
                f"collapsewatch.{part}.cli" if part != "demo" else "collapsewatch.demo"
            )
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("collapsewatch"):
                continue  # that part is not installed
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
            return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"collapsewatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("collapsewatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
