"""collapsewatch.hooks: capture control-token probabilities, entropy and rollouts from a trainer.

`Recorder` is the plain API (any PyTorch loop); `attach` hooks a TRL GRPOTrainer; `ControlProbe`
scores fixed reference conversations after each step; `verl` and `openrlhf` hold adapters for
those frameworks. The capture math is importable on its own.
"""

from collapsewatch.hooks.capture import (
    TokenStats,
    control_logprobs_from_sampled,
    head_logits,
    token_stats_from_logits,
    top_alternatives,
)
from collapsewatch.hooks.control_tokens import (
    ControlTokenSet,
    default_control_strings,
    resolve_control_tokens,
)
from collapsewatch.hooks.positions import position_types
from collapsewatch.hooks.probe import ControlProbe
from collapsewatch.hooks.recorder import Recorder


def attach(trainer, root="runs", run_name=None, capture="control", stop_on=None, **recorder_kwargs):  # type: ignore[no-untyped-def]
    """Record a TRL GRPOTrainer (see collapsewatch.hooks.trl.attach); TRL is imported only here."""
    from collapsewatch.hooks.trl import attach as trl_attach

    return trl_attach(
        trainer, root=root, run_name=run_name, capture=capture, stop_on=stop_on, **recorder_kwargs
    )


__all__ = [
    "ControlProbe",
    "ControlTokenSet",
    "Recorder",
    "TokenStats",
    "attach",
    "control_logprobs_from_sampled",
    "default_control_strings",
    "head_logits",
    "position_types",
    "resolve_control_tokens",
    "token_stats_from_logits",
    "top_alternatives",
]
