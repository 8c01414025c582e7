"""Background work of the dashboard server (turn classification, token prefetch).

A daemon thread killed by interpreter exit in the middle of a DuckDB or Arrow call aborts the
whole process ("terminate called ... exception not rethrown"). These jobs run on a pool whose
threads the interpreter joins at exit instead; long jobs check `shutting_down()` between chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cw-dashboard")


def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    return _POOL.submit(fn, *args)


def shutting_down() -> bool:
    """True once the interpreter has begun to exit (the main thread is marked stopped first)."""
    return not threading.main_thread().is_alive()
