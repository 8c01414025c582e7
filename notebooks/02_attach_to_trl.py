# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Attach collapsewatch to a TRL `GRPOTrainer`
#
# One call, `cw.attach(trainer, ...)`, before `trainer.train()`. collapsewatch then records, per
# step: every rollout (rewards per reward function, advantages, group ids, texts), per-token
# logprobs and entropies that TRL already computed (no second forward pass), the probability of
# every control token at every position (a gather on the LM-head output), TRL's own scalars, and
# live detector alerts.
#
# Here: a tiny Qwen2 and a ChatML tokenizer built locally (no hub), two GRPO steps on CPU with a
# tool, then a look at what was captured.

# %%
import os
import tempfile

import plotly.express as px
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

import collapsewatch as cw
from collapsewatch.hooks.tiny_models import chatml_tokenizer, teach, tiny_qwen2

torch.set_num_threads(1)
ROOT = os.environ.get("COLLAPSEWATCH_NB_ROOT") or tempfile.mkdtemp(prefix="cw-nb02-")


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def reward_used_tool(completions, **kwargs):
    return [1.0 if "add" in str(c) else 0.0 for c in completions]


# %% [markdown]
# A random tiny model would never emit a tool call; a few SFT steps teach it one, so GRPO has
# tool turns to work with.

# %%
tok = chatml_tokenizer()
model = tiny_qwen2(tok)
prompt = tok.apply_chat_template(
    [{"role": "user", "content": "What is 1 plus 2?"}],
    tools=[add],
    add_generation_prompt=True,
    tokenize=False,
)
teach(
    model,
    tok,
    prompt,
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>',
    steps=80,
)

data = Dataset.from_list(
    [{"prompt": [{"role": "user", "content": q}]} for q in ["What is 1 plus 2?", "Add 2 and 3."]]
)
args = GRPOConfig(
    output_dir=f"{ROOT}/trl",
    use_cpu=True,
    bf16=False,
    report_to="none",
    per_device_train_batch_size=4,
    num_generations=4,
    max_completion_length=24,
    max_steps=2,
    logging_steps=1,
    learning_rate=1e-3,
    save_strategy="no",
    seed=0,
    max_tool_calling_iterations=1,
)
trainer = GRPOTrainer(
    model=model,
    reward_funcs=[reward_used_tool],
    args=args,
    train_dataset=data,
    processing_class=tok,
    tools=[add],
)

# %% [markdown]
# The only collapsewatch line. `capture="all"` keeps every token (fine for small runs; the default
# `control` keeps control-token positions, suspicious positions and a sample of rollouts).

# %%
handle = cw.attach(trainer, root=ROOT, run_name="trl-demo", capture="all")
trainer.train()

# %%
run = cw.open_run(f"{ROOT}/trl-demo")
print(run.status, run.control_tokens)
run.steps().filter(regex=r"^(step|entropy|reward|kl|ctrl/<tool_call>/turn_start)").head()

# %% [markdown]
# Rollouts: one row per completion, with per-function rewards and the group they were normalised in.

# %%
seqs = run.sequences()
seqs[["step", "seq", "group", "reward", "advantage", "reward_components", "num_tool_calls", "text"]].head(8)

# %% [markdown]
# Tokens: the captured entropies average to exactly what TRL logged, and tool output is marked.

# %%
tokens = run.tokens()
trl_entropy = {int(h["step"]): h["entropy"] for h in trainer.state.log_history if "entropy" in h}
ours = tokens[~tokens["is_tool_output"]].groupby("step")["entropy"].mean()
for step, value in trl_entropy.items():
    print(f"step {step}: TRL entropy {value:.5f}  collapsewatch {ours.loc[step]:.5f}")
    assert abs(ours.loc[step] - value) <= 1e-3 * abs(value)
assert set(seqs["step"]) == set(trl_entropy)

# %% [markdown]
# Control-token probability per position type: the statistic the seed paper's collapse shows up in.

# %%
prob_cols = [c for c in tokens.columns if c.startswith("p(")]
assert prob_cols, "control-token probabilities were captured"
long = tokens.melt(id_vars=["step", "position_type"], value_vars=prob_cols, var_name="token", value_name="p")
fig = px.box(
    long[long["p"] > 0],
    x="token",
    y="p",
    color="position_type",
    log_y=True,
    title="control-token probabilities by position type",
)
fig.show()
