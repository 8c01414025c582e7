"""A reader polling a run while something rewrites its files: what every row count it saw was."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def row_counts_during(run: Any, action: Callable[[], Any]) -> tuple[list[int], Any]:
    """Count `run`'s sequences rows over and over while `action` runs; (counts, action's result)."""
    counts: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            counts.append(len(run.sequences()))

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        result = action()
    finally:
        stop.set()
        thread.join()
    counts.append(len(run.sequences()))  # at least one read after the action
    return counts, result
