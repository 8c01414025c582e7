"""URL scheme of the dashboard, parsed in one place so the server guard and the page router agree.

Runs are referred to by id (their directory name under ROOT), never by a path: a request whose id is
not in ROOT's listing is answered 404 before anything under it is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlencode

# Paths Dash itself serves (scripts, layout, callbacks); everything else must be one of our pages.
DASH_INTERNAL_PREFIXES = ("/_dash-", "/_reload-hash", "/_favicon.ico", "/assets/")

_STEP_RE = re.compile(r"^[0-9]{1,12}$")


@dataclass(frozen=True)
class Route:
    """A parsed page address: `page` is runs | run | step | alerts | compare | not_found."""

    page: str
    run_ids: tuple[str, ...] = ()
    step: int | None = None

    @property
    def run_id(self) -> str | None:
        return self.run_ids[0] if self.run_ids else None


NOT_FOUND = Route("not_found")


def parse_route(pathname: str | None, search: str | None = None) -> Route:
    """Split a (decoded) URL path into a Route; shape only, run ids are checked by the caller."""
    path = pathname or "/"
    if path in ("/", ""):
        return Route("runs")
    if path.rstrip("/") == "/compare":
        return Route("compare", tuple(compare_ids_from_search(search)))
    parts = path.split("/")
    # "/run/<id>[/...]" splits into ["", "run", id, ...]; empty ids (absolute-path tricks) stay empty.
    if len(parts) < 3 or parts[0] != "" or parts[1] != "run":
        return NOT_FOUND
    run_id, rest = parts[2], parts[3:]
    if rest and rest[-1] == "":
        rest = rest[:-1]
    if not run_id:
        return NOT_FOUND
    if not rest:
        return Route("run", (run_id,))
    if rest == ["alerts"]:
        return Route("alerts", (run_id,))
    if len(rest) == 2 and rest[0] == "step" and _STEP_RE.match(rest[1]):
        return Route("step", (run_id,), int(rest[1]))
    return NOT_FOUND


def compare_ids_from_search(search: str | None) -> list[str]:
    """`?runs=a,b` or `?runs=a&runs=b` -> ["a", "b"] (order kept, duplicates dropped)."""
    values = parse_qs((search or "").lstrip("?")).get("runs", [])
    ids: list[str] = []
    for value in values:
        for run_id in value.split(","):
            if run_id and run_id not in ids:
                ids.append(run_id)
    return ids


def query_int(search: str | None, key: str) -> int | None:
    """An integer query parameter, or None when absent or not an integer."""
    values = parse_qs((search or "").lstrip("?")).get(key, [])
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


def _quoted(run_id: str) -> str:
    return quote(run_id, safe="")


def run_href(run_id: str) -> str:
    return f"/run/{_quoted(run_id)}"


def alerts_href(run_id: str) -> str:
    return f"/run/{_quoted(run_id)}/alerts"


def step_href(run_id: str, step: int, seq: int | None = None, rank: int | None = None) -> str:
    href = f"/run/{_quoted(run_id)}/step/{int(step)}"
    if seq is not None:
        href += "?" + urlencode({"rank": int(rank or 0), "seq": int(seq)})
    return href


def compare_href(run_ids: list[str]) -> str:
    return "/compare?" + urlencode({"runs": ",".join(run_ids)}) if run_ids else "/compare"
