"""Small pieces of layout shared by the pages: header, status badge, banners, not-found."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from dash import dcc, html

from collapsewatch.dashboard import routes

STATUS_LABEL = {"running": "live", "finished": "finished", "crashed": "crashed"}


def status_badge(status: str, element_id: str | None = None) -> html.Span:
    label = STATUS_LABEL.get(status, status)
    kwargs = {"id": element_id} if element_id else {}
    return html.Span(label, className=f"badge status-{label}", **kwargs)


def ago(timestamp: float | None) -> str:
    """'12 s ago' style age of a unix time."""
    if not timestamp:
        return "never"
    age = max(0.0, time.time() - float(timestamp))
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= seconds:
            return f"{age / seconds:.0f} {unit} ago"
    return f"{age:.0f} s ago"


def utc(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    return datetime.fromtimestamp(float(timestamp), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def banner(messages: list[str]) -> list:
    """Warning banner children (empty list when all is well)."""
    if not messages:
        return []
    return [html.Div([html.Strong("Warning: "), html.Span("; ".join(messages))], className="banner warning")]


def run_tabs(run_id: str, active: str, step: int | None = None) -> html.Nav:
    """Breadcrumb + tabs of a run's pages."""
    tabs = [
        ("overview", "Overview", routes.run_href(run_id)),
        ("alerts", "Alerts", routes.alerts_href(run_id)),
        ("compare", "Compare", routes.compare_href([run_id])),
    ]
    items = [
        dcc.Link("Runs", href="/", className="crumb"),
        html.Span(" / "),
        dcc.Link(run_id, href=routes.run_href(run_id), className="crumb run-name"),
    ]
    if step is not None:
        items += [html.Span(" / "), html.Span(f"step {step}", className="crumb")]
    links = [
        dcc.Link(label, href=href, className="tab active" if key == active else "tab")
        for key, label, href in tabs
    ]
    return html.Nav(
        [html.Div(items, className="crumbs"), html.Div(links, className="tabs")], className="run-nav"
    )


def not_found(message: str = "No such page.") -> html.Div:
    return html.Div(
        [html.H2("Not found"), html.P(message), dcc.Link("Back to the runs", href="/")],
        className="not-found",
        id="not-found",
    )
