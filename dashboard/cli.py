"""`collapsewatch dashboard ROOT [--host 127.0.0.1] [--port 8050]`."""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

from collapsewatch.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="serve a live dashboard of the runs under ROOT",
        description="Serve a live dashboard of the runs under ROOT (localhost only by default).",
    )
    parser.add_argument("root", metavar="ROOT", help="folder whose subfolders are runs")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.set_defaults(handler=run_dashboard)


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line (not Werkzeug's exit 1) when the address is taken or not ours to bind."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        hint = "pick another with --port" if exc.errno == errno.EADDRINUSE else "check --host"
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc} ({hint})") from None


def run_dashboard(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"no such runs folder: {root}")
    if not 0 < args.port < 65536:
        raise UserError(f"port must be 1-65535, got {args.port}")
    try:
        from collapsewatch.dashboard.app import create_app
    except ImportError as exc:
        raise UserError(
            f"the dashboard needs its extra: pip install 'collapsewatch[dashboard]' ({exc.name} missing)"
        ) from None
    _check_port_free(args.host, args.port)
    app = create_app(root)
    print(
        f"collapsewatch dashboard: http://{args.host}:{args.port}/  (runs under {root.resolve()}; Ctrl-C stops)"
    )
    try:
        app.run(host=args.host, port=args.port, debug=False)
    except OSError as exc:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
