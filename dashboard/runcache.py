"""Per-run summaries kept in server memory and extended with only what is new.

One RunCache holds a run's scalars (one row per step), its structural-state shares and its alerts.
`refresh()` reads steps after the last one seen (file pruning by step in the store), so a poll of a
5,000-step run costs a directory listing and one small file, not the whole history.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import collapsewatch as cw
from collapsewatch.dashboard import background
from collapsewatch.dashboard import states as state_shares
from collapsewatch.schema import STRUCTURAL_STATES

# Steps whose turn texts a background thread classifies per chunk (each chunk is one DuckDB read).
STATE_STEPS_PER_CHUNK = 250
STATES_START_DELAY_S = 1.0


@dataclass
class RunSnapshot:
    """What the pages draw from: immutable frames, replaced (never mutated) on refresh."""

    name: str
    status: str = "running"
    control_tokens: list[str] = field(default_factory=list)
    steps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"step": pd.Series([], dtype="int64")}))
    states: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["step", *STRUCTURAL_STATES]))
    states_source: str = "none"  # scalars | turns | none
    alerts: pd.DataFrame = field(default_factory=pd.DataFrame)
    last_step: int | None = None
    last_update: float | None = None
    warnings: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


class RunCache:
    """Server-side cache of one run; thread-safe; `snapshot()` refreshes incrementally."""

    def __init__(self, path: Path, min_refresh_interval_s: float = 0.25) -> None:
        self.path = path
        self.min_refresh_interval_s = min_refresh_interval_s
        self._lock = threading.Lock()
        self._run: cw.Run | None = None
        self._snap = RunSnapshot(name=path.name)
        self._refreshed_at = float("-inf")
        self._alert_files: tuple | None = None
        self._classify = state_shares.load_classifier()
        self._states_lock = threading.Lock()
        self._states = pd.DataFrame(columns=["step", *STRUCTURAL_STATES])
        self._states_target: int | None = None
        self._states_generation = 0  # bumped when a resume rewrote steps: older chunks are dropped
        self._states_job: Future[None] | None = None

    @property
    def run(self) -> cw.Run:
        if self._run is None:
            self._run = cw.open_run(self.path)
        return self._run

    def snapshot(self, refresh: bool = True) -> RunSnapshot:
        with self._lock:
            if refresh and time.monotonic() - self._refreshed_at >= self.min_refresh_interval_s:
                self._refresh()
                self._refreshed_at = time.monotonic()
            return self._snap

    # ------------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        snap = self._snap
        problems: list[str] = []
        try:
            run = self.run
            status = run.status  # re-reads run.json
            meta = dict(run.meta)
            # A resume (store/resume.py) may have replaced steps this cache holds: read them afresh.
            rewritten = meta.get("resumes") != snap.meta.get("resumes")
            last_step = run.last_step
            steps = self._new_steps(run, snap, last_step, rewritten)
            states, states_source = self._new_states(run, snap, steps, last_step, rewritten)
            alerts = self._alerts(run, snap)
            last_update = run.last_update
            tokens = run.control_tokens
        except cw.RunError as exc:
            self._snap = _replace(snap, warnings=[str(exc)])
            return
        except Exception as exc:  # a half-broken run must show a banner, never an error page
            self._snap = _replace(
                snap, warnings=[f"could not read {self.path.name}: {type(exc).__name__}: {exc}"]
            )
            return
        problems += [f"corrupt file skipped: {p.relative_to(run.path)}" for p in run.bad_files]
        # The last step that has data here (a corrupt file's name alone does not make a step).
        seen = [int(f["step"].iloc[-1]) for f in (steps, states) if f is not None and len(f)]
        shown_last = max(seen) if seen else last_step
        self._snap = RunSnapshot(
            name=snap.name,
            status=status,
            control_tokens=tokens,
            steps=steps,
            states=states,
            states_source=states_source,
            alerts=alerts,
            last_step=shown_last,
            last_update=last_update,
            warnings=problems,
            meta=meta,
        )

    def _new_steps(
        self, run: cw.Run, snap: RunSnapshot, last_step: int | None, rewritten: bool
    ) -> pd.DataFrame:
        old = snap.steps
        if last_step is None:
            return old
        if rewritten or old.empty or "step" not in old or len(old.columns) <= 1:
            return wide_scalars(run, None)
        have = int(old["step"].iloc[-1])
        if last_step < have:
            return wide_scalars(run, None)  # the run was rewritten under us
        if last_step == have:
            return old
        # Re-read the last known step too: a late part file may have added scalars to it.
        new = wide_scalars(run, range(have, last_step + 1))
        if new.empty:
            return old
        kept = old[old["step"] < have]
        return pd.concat([kept, new], ignore_index=True, sort=False)

    def _new_states(
        self, run: cw.Run, snap: RunSnapshot, steps: pd.DataFrame, last_step: int | None, rewritten: bool
    ):
        scalar_cols = state_shares.state_columns_from_scalars(steps.columns)
        if scalar_cols:
            return state_shares.shares_from_scalars(steps, scalar_cols), "scalars"
        if self._classify is None or last_step is None:
            return snap.states, "none"
        with self._states_lock:
            if rewritten:
                self._states = self._states.iloc[:0]
                self._states_generation += 1
            self._states_target = last_step
            if self._states_job is None or self._states_job.done():
                self._states_job = background.submit(self._classify_turns, run)
            return self._states, "turns"

    def _classify_turns(self, run: cw.Run) -> None:
        """Background: classify the turn texts of steps not yet classified, a chunk at a time.

        Requests never wait on this; the overview's polls pick up each finished chunk as new states.
        It starts a moment late so it does not compete with the page being served.
        """
        if not len(self._states):
            time.sleep(STATES_START_DELAY_S)
        try:
            first = run.query("sequences", "ORDER BY step LIMIT 1", columns=["step"])
        except Exception:  # noqa: BLE001 - an unreadable table leaves the states panel empty
            return
        if first.empty:
            return
        while not background.shutting_down():
            with self._states_lock:
                done, target, generation = self._states, self._states_target, self._states_generation
            start = int(done["step"].iloc[-1]) + 1 if len(done) else int(first["step"].iloc[0])
            if target is None or start > target:
                return
            stop = min(target, start + STATE_STEPS_PER_CHUNK - 1)
            try:
                seqs = run.query("sequences", steps=range(start, stop + 1), columns=["step", "turn_texts"])
            except Exception:  # noqa: BLE001
                return
            new = state_shares.shares_from_turns(seqs, self._classify) if not seqs.empty else None
            if new is None or new.empty:  # no rollouts in this range: remember it as done with NaN shares
                new = pd.DataFrame({"step": [stop], **{s: [np.nan] for s in STRUCTURAL_STATES}})
            merged = pd.concat([done, new], ignore_index=True) if len(done) else new
            with self._states_lock:
                if generation != self._states_generation:
                    continue  # a resume rewrote steps meanwhile: start again from what is kept
                self._states = merged.drop_duplicates("step", keep="last").reset_index(drop=True)
            time.sleep(0.02)  # hand the GIL to page requests between chunks

    def _alerts(self, run: cw.Run, snap: RunSnapshot) -> pd.DataFrame:
        files = tuple(run.files("alerts"))
        if files == self._alert_files:
            return snap.alerts  # alert files are immutable: same list, same rows
        alerts = run.alerts()
        self._alert_files = files
        return alerts.reset_index(drop=True)


def wide_scalars(run: cw.Run, steps: range | None) -> pd.DataFrame:
    """One row per step, one column per scalar name (the latest value logged wins).

    Same result as `Run.steps()`, pivoted with numpy: on a 5,000-step run pandas' groupby/unstack
    cost more than the read itself.
    """
    long = run.query("steps", "ORDER BY step, time", steps=steps, columns=["step", "name", "value"])
    if long.empty:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")})
    codes, names = pd.factorize(long["name"], sort=True)
    step_values, rows = np.unique(long["step"].to_numpy(dtype=np.int64), return_inverse=True)
    grid = np.full((len(step_values), len(names)), np.nan)
    # rows are sorted by (step, time): for repeated (step, name) pairs keep the last one explicitly
    flat = rows * len(names) + codes
    last = len(flat) - 1 - np.unique(flat[::-1], return_index=True)[1]
    grid.ravel()[flat[last]] = long["value"].to_numpy(dtype=np.float64)[last]
    out = pd.DataFrame(grid, columns=[str(n) for n in names])
    out.insert(0, "step", step_values)
    return out


def _replace(snap: RunSnapshot, **changes) -> RunSnapshot:
    values = {k: getattr(snap, k) for k in snap.__dataclass_fields__}
    values.update(changes)
    return RunSnapshot(**values)


def series(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one column without NaN rows, as float64 arrays."""
    if column not in frame.columns:
        return np.array([], dtype=np.int64), np.array([], dtype=np.float64)
    x = frame["step"].to_numpy(dtype=np.int64)
    y = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    keep = ~np.isnan(y)
    return x[keep], y[keep]
