"""A multi-step tool-use environment with real, stateful tools and a checker.

Three training domains (bank accounts, files, messages; message search often returns `[]`),
tasks of 1-4 dependent calls and a final answer, generated from seeds. Two out-of-distribution
splits: `format_ood` (same tasks, but the system prompt declares `"parameters"` instead of
`"arguments"`) and `content_ood` (an unseen inventory domain). Every task has an expert trajectory.
"""

from __future__ import annotations

import copy
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

NAMES = ["alice", "bob", "carol", "dave"]
FILES = ["notes.txt", "todo.txt", "memo.txt"]
WORDS = ["hello", "lunch", "thanks"]
ITEMS = ["apples", "pens", "chairs", "lamps", "cups"]
SPLITS = ("train", "test", "format_ood", "content_ood")

TOOL_SPECS: dict[str, dict[str, Any]] = {
    "get_balance": {"description": "Balance of an account.", "arguments": ["account"]},
    "transfer": {"description": "Move money between accounts.", "arguments": ["source", "target", "amount"]},
    "read_file": {"description": "Content of a file.", "arguments": ["path"]},
    "write_file": {"description": "Replace a file's content.", "arguments": ["path", "content"]},
    "search_messages": {"description": "Messages whose text matches a word.", "arguments": ["query"]},
    "send_message": {"description": "Send a message to a person.", "arguments": ["to", "text"]},
}
OOD_TOOL_SPECS: dict[str, dict[str, Any]] = {
    "get_stock": {"description": "Units of an item in stock.", "arguments": ["item"]},
    "order_item": {"description": "Order more units of an item.", "arguments": ["item", "quantity"]},
}

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def tools_json(split: str) -> list[dict[str, Any]]:
    """Tool list in the `tools=` shape chat templates expect (compact: names and argument names)."""
    specs = OOD_TOOL_SPECS if split == "content_ood" else TOOL_SPECS
    return [{"name": n, "arguments": list(s["arguments"])} for n, s in specs.items()]


def arguments_key(split: str) -> str:
    """The JSON key that holds call arguments: the format-OOD split declares a different one."""
    return "parameters" if split == "format_ood" else "arguments"


@dataclass
class Task:
    """One episode's question, initial world state and the expert's solution."""

    uid: str
    split: str
    question: str
    state: dict[str, Any]
    expert_calls: list[tuple[str, dict[str, Any]]]
    answer: str
    kind: str

    @property
    def num_calls(self) -> int:
        return len(self.expert_calls)

    def hint(self, style: str = "names") -> str:
        """An offline summary of the expert trajectory, for hinted rollouts (no final answer leaked):
        the tools to call in order ("names"), or the expert's calls themselves ("calls", the paper's
        example calls; on this environment the names alone tell the warm start nothing it lacks)."""
        if style == "calls":
            key = arguments_key(self.split)
            steps = "; then ".join(json.dumps({"name": n, key: a}) for n, a in self.expert_calls)
            return f"Hint: the calls are {steps}. One call per turn, then answer in one short sentence."
        names = ", then ".join(name for name, _ in self.expert_calls)
        return f"Hint: call {names}, one call per turn, then answer in one short sentence."


@dataclass
class Transition:
    """What the environment says after one assistant turn."""

    done: bool
    response: str | None = None  # tool-response text (without the turn markup) when not done
    calls: list[dict[str, Any]] = field(default_factory=list)
    parse_failures: int = 0
    tool_errors: int = 0


# --------------------------------------------------------------------------------------------
# tools


class World:
    """The mutable state the tools act on; `execute` runs one call and returns a JSON-able result."""

    def __init__(self, state: dict[str, Any]):
        self.state = copy.deepcopy(state)

    def execute(self, name: str, args: dict[str, Any]) -> Any:
        s = self.state
        try:
            if name == "get_balance":
                acct = str(args["account"])
                if acct not in s["balances"]:
                    return {"error": f"unknown account {acct}"}
                return {"balance": s["balances"][acct]}
            if name == "transfer":
                src, dst, amount = str(args["source"]), str(args["target"]), int(args["amount"])
                for acct in (src, dst):
                    if acct not in s["balances"]:
                        return {"error": f"unknown account {acct}"}
                if amount <= 0 or s["balances"][src] < amount:
                    return {"error": "insufficient funds"}
                s["balances"][src] -= amount
                s["balances"][dst] += amount
                return {"ok": True}
            if name == "read_file":
                path = str(args["path"])
                if path not in s["files"]:
                    return {"error": f"no such file {path}"}
                return {"content": s["files"][path]}
            if name == "write_file":
                s["files"][str(args["path"])] = str(args["content"])
                return {"ok": True}
            if name == "search_messages":
                q = str(args["query"])
                return [m for m in s["inbox"] if m["text"] == q]
            if name == "send_message":
                to = str(args["to"])
                if to not in NAMES:
                    return {"error": f"unknown person {to}"}
                s["sent"].append({"to": to, "text": str(args["text"])})
                return {"ok": True}
            if name == "get_stock":
                item = str(args["item"])
                if item not in s["stock"]:
                    return {"error": f"unknown item {item}"}
                return {"stock": s["stock"][item]}
            if name == "order_item":
                item, qty = str(args["item"]), int(args["quantity"])
                if item not in s["stock"] or qty <= 0:
                    return {"error": f"cannot order {item}"}
                s["stock"][item] += qty
                return {"ok": True}
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": f"bad arguments for {name}: {exc.__class__.__name__}"}
        return {"error": f"unknown tool {name}"}


def format_call(name: str, args: dict[str, Any], split: str = "train") -> str:
    """The call text an expert writes (Qwen2.5 layout: tags on their own lines)."""
    body = json.dumps({"name": name, arguments_key(split): args})
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def parse_calls(text: str, split: str) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Closed, JSON-valid calls in a turn, and how many call blocks failed to parse."""
    key = arguments_key(split)
    calls, failures = [], 0
    blocks = _CALL_RE.findall(text)
    unclosed = text.count(CALL_OPEN) - len(blocks)
    for body in blocks:
        try:
            obj = json.loads(body.strip())
            if not isinstance(obj, dict) or not isinstance(obj.get(key), dict) or "name" not in obj:
                raise ValueError
            calls.append((str(obj["name"]), obj[key]))
        except ValueError:
            failures += 1
    return calls, failures + max(unclosed, 0)


class Episode:
    """A running episode: feed it assistant turns, it executes calls and finally checks the answer."""

    def __init__(self, task: Task, max_turns: int):
        self.task = task
        self.world = World(task.state)
        self.max_turns = max_turns
        self.turns = 0
        self.calls: list[dict[str, Any]] = []
        self.parse_failures = 0
        self.tool_errors = 0
        self.answer: str | None = None
        self.done = False

    def step(self, turn_text: str) -> Transition:
        """One assistant turn (text without the end-of-turn token) -> tool response or episode end."""
        self.turns += 1
        calls, failures = parse_calls(turn_text, self.task.split)
        self.parse_failures += failures
        if not calls and not failures and CALL_OPEN not in turn_text:
            self.answer = turn_text.strip()
            self.done = True
            return Transition(done=True)
        results, made = [], []
        for name, args in calls:
            result = self.world.execute(name, args)
            if isinstance(result, dict) and "error" in result:
                self.tool_errors += 1
            made.append({"name": name, "arguments": args, "result": result})
            results.append(json.dumps(result))
        for _ in range(failures):
            self.tool_errors += 1
            results.append(json.dumps({"error": "invalid tool call: expected JSON with name and arguments"}))
        self.calls += made
        if self.turns >= self.max_turns:
            self.done = True
            return Transition(done=True, calls=made, parse_failures=failures)
        return Transition(done=False, response="\n".join(results), calls=made, parse_failures=failures)

    def success(self) -> bool:
        return check(self.task, self.world.state, self.answer)

    def truth(self) -> dict[str, Any]:
        """Environment truth for the run's `info` column."""
        return {
            "task": self.task.uid,
            "kind": self.task.kind,
            "split": self.task.split,
            "expert_calls": self.task.num_calls,
            "calls": self.calls,
            "parse_failures": self.parse_failures,
            "tool_errors": self.tool_errors,
            "answer": self.answer,
            "expected_answer": self.task.answer,
            "state_ok": self.world.state == expected_state(self.task),
        }


def normalise_answer(text: str | None) -> str:
    return re.sub(r"[\s.!]+$", "", (text or "").strip().lower())


def expected_state(task: Task) -> dict[str, Any]:
    world = World(task.state)
    for name, args in task.expert_calls:
        world.execute(name, args)
    return world.state


def check(task: Task, final_state: dict[str, Any], answer: str | None) -> bool:
    """Success = the final state equals the expert's and the answer matches (case, trailing dot aside)."""
    return final_state == expected_state(task) and normalise_answer(answer) == normalise_answer(task.answer)


# --------------------------------------------------------------------------------------------
# task generation


def _initial_state(rng: random.Random) -> dict[str, Any]:
    files = {f: rng.choice(NAMES) for f in rng.sample(FILES, 2)}
    inbox = [{"from": rng.choice(NAMES), "text": w} for w in rng.sample(WORDS, rng.randint(0, 2))]
    return {
        "balances": {n: rng.randint(10, 49) for n in NAMES},
        "files": files,
        "inbox": inbox,
        "sent": [],
        "stock": {i: rng.randint(1, 50) for i in ITEMS},
    }


def make_task(split: str, index: int, kind: int | None = None) -> Task:
    """Task `index` of a split; deterministic. Train and test draw from disjoint seed streams.

    `kind` (an index into KINDS) fixes the task kind instead of drawing it from the seed.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    stream = "train" if split == "train" else "test"
    rng = random.Random(f"{stream}:{index}")
    state = _initial_state(rng)
    if split == "content_ood":
        return _content_ood_task(rng, state, index)
    drawn = rng.choice(KINDS)  # drawn even when `kind` is given, so the rest of the seed's draws match
    kind_fn = drawn if kind is None else KINDS[kind]
    question, calls, answer = kind_fn(rng, state)
    uid = f"{split}-{index}" if kind is None else f"{split}-{index}-k{kind}"
    return Task(uid, split, question, state, calls, answer, kind_fn.__name__.lstrip("_"))


def _other(rng: random.Random, *exclude: str) -> str:
    return rng.choice([n for n in NAMES if n not in exclude])


def _balance(rng, s):
    a = rng.choice(NAMES)
    return f"What is {a}'s balance?", [("get_balance", {"account": a})], f"{a} has {s['balances'][a]}."


def _send(rng, s):
    b, w = rng.choice(NAMES), rng.choice(WORDS)
    return f"Send {b} the message {w}.", [("send_message", {"to": b, "text": w})], "Done."


def _search(rng, s):
    w = rng.choice(WORDS) if not s["inbox"] or rng.random() < 0.5 else rng.choice(s["inbox"])["text"]
    hits = [m for m in s["inbox"] if m["text"] == w]
    answer = f"{hits[0]['from']}." if hits else "Nobody."
    return f"Who wrote {w}?", [("search_messages", {"query": w})], answer


def _transfer_balance(rng, s):
    a = rng.choice(NAMES)
    b = _other(rng, a)
    k = rng.randint(1, 9)
    q = f"Transfer {k} from {a} to {b}, then tell me {b}'s balance."
    calls = [("transfer", {"source": a, "target": b, "amount": k}), ("get_balance", {"account": b})]
    return q, calls, f"{b} has {s['balances'][b] + k}."


def _read_send(rng, s):
    f, b = rng.choice(sorted(s["files"])), rng.choice(NAMES)
    content = s["files"][f]
    calls = [("read_file", {"path": f}), ("send_message", {"to": b, "text": content})]
    return f"Send {b} the content of {f}.", calls, "Done."


def _read_balance(rng, s):
    f = rng.choice(sorted(s["files"]))
    who = s["files"][f]
    calls = [("read_file", {"path": f}), ("get_balance", {"account": who})]
    return f"{f} names an account. What is its balance?", calls, f"{who} has {s['balances'][who]}."


def _read_transfer_balance(rng, s):
    f = rng.choice(sorted(s["files"]))
    who = s["files"][f]
    b = _other(rng, who)
    k = rng.randint(1, 9)
    q = f"{f} names an account. Transfer {k} from it to {b}, then tell me {b}'s balance."
    calls = [
        ("read_file", {"path": f}),
        ("transfer", {"source": who, "target": b, "amount": k}),
        ("get_balance", {"account": b}),
    ]
    return q, calls, f"{b} has {s['balances'][b] + k}."


def _read_balance_write_send(rng, s):
    f = rng.choice(sorted(s["files"]))
    f2 = rng.choice([x for x in FILES if x != f])
    who, w = s["files"][f], rng.choice(WORDS)
    q = f"{f} names an account. Write its balance to {f2}, then send its owner the message {w}."
    calls = [
        ("read_file", {"path": f}),
        ("get_balance", {"account": who}),
        ("write_file", {"path": f2, "content": str(s["balances"][who])}),
        ("send_message", {"to": who, "text": w}),
    ]
    return q, calls, "Done."


KINDS = [
    _balance,
    _send,
    _search,
    _transfer_balance,
    _read_send,
    _read_balance,
    _read_transfer_balance,
    _read_balance_write_send,
]


def _content_ood_task(rng: random.Random, state: dict[str, Any], index: int) -> Task:
    item = rng.choice(ITEMS)
    if rng.random() < 0.5:
        q, calls = f"How many {item} are in stock?", [("get_stock", {"item": item})]
        answer = f"There are {state['stock'][item]} {item}."
        kind = "stock"
    else:
        k = rng.randint(1, 20)
        q = f"Order {k} {item}, then tell me the stock."
        calls = [("order_item", {"item": item, "quantity": k}), ("get_stock", {"item": item})]
        answer = f"There are {state['stock'][item] + k} {item}."
        kind = "order_stock"
    return Task(f"content_ood-{index}", "content_ood", q, state, calls, answer, kind)


TRAIN_TASKS = 5000  # task indices the training samplers (RL and SFT) draw from


def sample_train_tasks(rng: random.Random, count: int) -> list[Task]:
    """`count` training tasks that cover the kinds evenly (every kind once per len(KINDS) tasks).

    Kinds differ a lot in difficulty; drawing them at random makes a step's success rate swing with
    the mix of kinds rather than with the policy, and the collapse onset is defined on that rate.
    """
    kinds: list[int] = []
    while len(kinds) < count:
        cycle = list(range(len(KINDS)))
        rng.shuffle(cycle)
        kinds += cycle
    return [make_task("train", rng.randrange(TRAIN_TASKS), kind=k) for k in kinds[:count]]


def tasks(split: str, count: int, start: int = 0) -> list[Task]:
    return [make_task(split, i) for i in range(start, start + count)]


def expert_messages(task: Task) -> list[dict[str, str]]:
    """The expert's turns as chat messages (assistant calls, tool responses, final answer)."""
    world = World(task.state)
    messages = []
    for name, args in task.expert_calls:
        messages.append({"role": "assistant", "content": format_call(name, args, task.split)})
        messages.append({"role": "tool", "content": json.dumps(world.execute(name, args))})
    messages.append({"role": "assistant", "content": task.answer})
    return messages


SYSTEM_PROMPT = "Use the tools, then answer briefly."


def system_prompt(split: str, hint: str | None = None) -> str:
    """System text with the declared call syntax (the format-OOD split declares another key)."""
    syntax = f'Call: <tool_call>{{"name": ..., "{arguments_key(split)}": {{...}}}}</tool_call>'
    return SYSTEM_PROMPT + "\n" + syntax + (f"\n{hint}" if hint else "")


def initial_messages(task: Task, hint: str | None = None) -> list[dict[str, str]]:
    """System and user messages; `hint`: the hint style (Task.hint), None for the plain prompt."""
    return [
        {"role": "system", "content": system_prompt(task.split, task.hint(hint) if hint else None)},
        {"role": "user", "content": task.question},
    ]
