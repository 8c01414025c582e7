"""Build and run a real TRL GRPOTrainer on a tiny local Qwen2 (CPU, no hub) for the hook tests."""

from __future__ import annotations

import functools
from typing import Any

import torch

from collapsewatch.hooks.tiny_models import chatml_tokenizer, teach, tiny_qwen2

TOOL_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>'


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def reward_has_call(completions: list, **kwargs: Any) -> list[float]:
    return [1.0 if "add" in str(c) else 0.0 for c in completions]


def reward_length(completions: list, **kwargs: Any) -> list[float]:
    return [min(len(str(c)), 200) / 200.0 for c in completions]


@functools.lru_cache(maxsize=2)
def _taught_state(with_tools: bool) -> tuple[Any, dict]:
    torch.manual_seed(0)
    tok = chatml_tokenizer()
    model = tiny_qwen2(tok)
    msgs = [{"role": "user", "content": "What is 1 plus 2?"}]
    prompt = tok.apply_chat_template(
        msgs, tools=[add] if with_tools else None, add_generation_prompt=True, tokenize=False
    )
    teach(
        model,
        tok,
        prompt,
        TOOL_CALL if with_tools else "The answer is 3.<|im_end|>",
        steps=80 if with_tools else 40,
    )
    return tok, {k: v.clone() for k, v in model.state_dict().items()}


def make_trainer(
    out_dir: str,
    *,
    tools: bool = False,
    steps: int = 2,
    grad_accum: int = 1,
    num_iterations: int = 1,
    beta: float = 0.0,
    max_completion_length: int = 24,
    save_steps: int | None = None,
) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    tok, state = _taught_state(tools)
    model = tiny_qwen2(tok)
    model.load_state_dict(state)
    if beta != 0.0:  # TRL loads the reference model from the policy's path: give it a local one
        path = f"{out_dir}/tiny-qwen2"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        model.name_or_path = model.config._name_or_path = path
    data = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": q}]}
            for q in ["What is 1 plus 2?", "Add 2 and 3.", "What is 4 plus 5?", "Add 1 and 1."]
        ]
    )
    args = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=grad_accum,
        num_generations=4,
        max_completion_length=max_completion_length,
        max_steps=steps,
        logging_steps=1,
        learning_rate=1e-3,
        num_iterations=num_iterations,
        beta=beta,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        seed=0,
        temperature=1.0,
        max_tool_calling_iterations=1,
        dataloader_num_workers=0,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[reward_has_call, reward_length],
        args=args,
        train_dataset=data,
        processing_class=tok,
        tools=[add] if tools else None,
    )
