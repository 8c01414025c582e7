"""The KV cache's name in Hugging Face model calls: `cache` in newer transformers, `past_key_values` before.

The rename landed within transformers 5 (5.17 still says `past_key_values`; 5.24 says `cache` and keeps
the old keyword, deprecated, until 5.40). A user's CUDA image pins its own transformers, so the trainer
asks the installed one instead of assuming either.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def returned(output: Any) -> Any:
    """The KV cache a forward with `use_cache=True` returned."""
    return getattr(output, NAME)


def passed(cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand `cache` to the next forward."""
    return {NAME: cache}
