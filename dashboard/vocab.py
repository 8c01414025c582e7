"""Token id -> text for drawing a rollout token by token, from the tokenizer named in run.json.

Loaded with the `tokenizers` library from a local `tokenizer.json` (a file, or a folder holding one;
relative paths are tried against the run folder, then the working directory). Nothing is downloaded:
without a local tokenizer, ids show as ⟨id⟩ and control tokens by their text from run.json.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any


class Vocab:
    """Decodes single token ids, cached; never raises."""

    def __init__(self, tokenizer: Any | None, special: dict[int, str]) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._cache: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    def text(self, token_id: int) -> str:
        token_id = int(token_id)
        with self._lock:
            cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        if token_id in self._special:
            text = self._special[token_id]
        elif self._tokenizer is not None:
            try:
                text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            except Exception:  # noqa: BLE001 - an id outside the vocabulary just shows as its number
                text = f"⟨{token_id}⟩"
        else:
            text = f"⟨{token_id}⟩"
        with self._lock:
            self._cache[token_id] = text
        return text


def _tokenizer_file(name: str, run_path: Path) -> Path | None:
    candidates = [Path(name)] if Path(name).is_absolute() else [run_path / name, Path.cwd() / name]
    for base in candidates:
        for path in (base, base / "tokenizer.json"):
            if path.is_file() and path.suffix == ".json":
                return path
    return None


@lru_cache(maxsize=32)
def _load_tokenizer(path: str, mtime: float) -> Any | None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        return Tokenizer.from_file(path)
    except Exception:  # noqa: BLE001 - a broken tokenizer file degrades to ids
        return None


def vocab_for_run(meta: dict[str, Any], run_path: Path) -> Vocab:
    """The Vocab of a run (its control tokens always decode, the rest when a local tokenizer exists)."""
    special = {}
    for entry in meta.get("control_tokens") or []:
        if isinstance(entry, dict) and entry.get("token_id") is not None:
            special[int(entry["token_id"])] = str(entry.get("text", ""))
    tokenizer = None
    name = meta.get("tokenizer")
    if isinstance(name, str) and name:
        path = _tokenizer_file(name, run_path)
        if path is not None:
            tokenizer = _load_tokenizer(str(path), path.stat().st_mtime)
    return Vocab(tokenizer, special)
