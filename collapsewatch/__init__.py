"""collapsewatch: catch the moment RL training of an LLM agent starts to collapse.

Public surface (kept stable): `Recorder`, `attach`, `open_run`, `list_runs`, `RunError`.
Torch is imported only when a hook is used, so reading runs stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collapsewatch.errors import RunError, UserError
from collapsewatch.store.reader import Run, RunSummary, list_runs, open_run

__version__ = "0.1.0"
__all__ = ["Recorder", "Run", "RunError", "RunSummary", "UserError", "attach", "list_runs", "open_run"]

if TYPE_CHECKING:
    from collapsewatch.hooks import Recorder, attach


def __getattr__(name: str) -> Any:
    if name in ("Recorder", "attach"):
        from collapsewatch import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'collapsewatch' has no attribute {name!r}")
