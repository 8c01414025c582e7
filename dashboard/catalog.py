"""The runs the dashboard may show: ROOT's listing, and nothing else.

A run id is a directory name taken from `collapsewatch.list_runs(ROOT)`; anything not in that
listing (`..`, absolute paths, encoded tricks, symlinks out of ROOT) resolves to None and is never
opened. Runs are read only through `collapsewatch.open_run` / `collapsewatch.list_runs`.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np

import collapsewatch as cw
from collapsewatch.dashboard.runcache import RunCache


class RunCatalog:
    """Cached listing of ROOT plus one RunCache per run that has been looked at."""

    def __init__(self, root: str | Path, listing_ttl_s: float = 2.0) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise cw.UserError(f"no such runs folder: {root}")
        self.listing_ttl_s = listing_ttl_s
        self._lock = threading.Lock()
        self._listing: dict[str, cw.RunSummary] = {}
        self._listed_at = float("-inf")
        self._caches: dict[str, RunCache] = {}
        self.skipped: list[str] = []
        self._rewards: dict[str, tuple[int | None, np.ndarray]] = {}

    def runs(self, max_age_s: float | None = None) -> list[cw.RunSummary]:
        """Runs under ROOT, newest first (listing at most `listing_ttl_s` old)."""
        max_age = self.listing_ttl_s if max_age_s is None else max_age_s
        with self._lock:
            if time.monotonic() - self._listed_at > max_age:
                self._relist()
            return list(self._listing.values())

    def _relist(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summaries = cw.list_runs(self.root)
        # list_runs skips an unreadable run with a warning: keep the message for the runs page.
        self.skipped = [
            str(w.message).removeprefix("collapsewatch: ") for w in caught if "skipping" in str(w.message)
        ]
        listing = {}
        for summary in summaries:
            path = Path(summary.path)
            # A symlink under ROOT that points elsewhere is not "under ROOT".
            if path.parent.resolve() == self.root and path.resolve().is_relative_to(self.root):
                listing[summary.name] = summary
        self._listing = listing
        self._listed_at = time.monotonic()

    def resolve(self, run_id: object) -> cw.RunSummary | None:
        """The listed run with exactly this id, or None (no path is ever built from `run_id`)."""
        if not isinstance(run_id, str) or not run_id:
            return None
        # A listed id stays valid between listings (a deleted run then reads as an error banner);
        # only an unknown id triggers a fresh listing, at most twice a second.
        with self._lock:
            summary = self._listing.get(run_id)
            if summary is None and time.monotonic() - self._listed_at > 0.5:
                self._relist()  # a run created a moment ago; refresh at most twice a second
                summary = self._listing.get(run_id)
            return summary

    def cache(self, run_id: str) -> RunCache | None:
        """The per-run cache of a listed run (created on first use), else None."""
        summary = self.resolve(run_id)
        if summary is None:
            return None
        with self._lock:
            cache = self._caches.get(run_id)
            if cache is None:
                cache = self._caches[run_id] = RunCache(Path(summary.path))
            return cache

    def reward_series(self, run_id: str, name: str = "reward/mean") -> np.ndarray:
        """Reward per step for the runs-list sparkline: only that scalar is read, and only new steps."""
        summary = self.resolve(run_id)
        if summary is None:
            return np.array([])
        cache = self.cache(run_id)
        with self._lock:
            have_step, values = self._rewards.get(run_id, (None, np.array([])))
        if summary.last_step is None or summary.last_step == have_step:
            return values
        steps = None if have_step is None else range(have_step + 1, summary.last_step + 1)
        try:
            long = cache.run.scalars(names=[name], steps=steps)
        except cw.RunError:
            return values
        new = long.groupby("step")["value"].last().to_numpy(dtype=float) if len(long) else np.array([])
        values = np.concatenate([values, new])
        with self._lock:
            self._rewards[run_id] = (summary.last_step, values)
        return values
