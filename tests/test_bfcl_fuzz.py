"""Hostile model messages against the BFCL backend: nothing undeclared ever runs, a refused call
changes nothing, and no message crashes the episode."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
from typing import Any

import pytest

pytest.importorskip("bfcl_eval")

from toolrl.core.episode import Episode
from toolrl.envs import bfcl
from toolrl.envs.base import Task
from toolrl.formats import get_format

N_MESSAGES = 1200
HOSTILE_NAMES: list[Any] = [
    "__import__",
    "eval",
    "exec",
    "compile",
    "open",
    "getattr",
    "setattr",
    "globals",
    "breakpoint",
    "input",
    "os.system",
    "subprocess.run",
    "__class__",
    "__init__",
    "__dict__",
    "__reduce__",
    "__getattribute__",
    "_load_scenario",
    "_current_dir",
    "ls.__globals__",
    "ls()",
    "ls; rm -rf /",
    "",
    " ls",
    "LS",
    "x" * 5000,
    "kill",
    "exit",
    "quit",
    "remove",
    "unlink",
    "popen",
    "run",
    123,
    None,
    ["ls"],
    {"name": "ls"},
]
HOSTILE_VALUES: list[Any] = [
    "../" * 5000,
    "a" * 200_000,
    "$(rm -rf /)",
    "__import__('os').system('ls')",
    "\x00\x01",
    "🙂" * 100,
    [1] * 100_000,
    [[[[[[[[[[1]]]]]]]]]],
    {"__class__": "x"},
    {"k": [{"k": [{}]}]},
    10**20,
    -(10**20),
    1e308,
    float("inf"),
    float("nan"),
    True,
    None,
    [],
    {},
    10**6,
    -1,
    0.5,
    "",
    3,
]
RAW_MESSAGES = [
    "<tool_call>",
    "</tool_call>",
    "<tool_call>\n{not json}\n</tool_call>",
    "<tool_call>\n[]\n</tool_call>",
    '<tool_call>\n{"name": "ls"}\n<tool_call>',
    "<tool_call>\n" + "[" * 100_000 + "\n</tool_call>",
    '<tool_call>\n{"name": "ls", "arguments": {"a": ' + "1" * 5000 + "}}\n</tool_call>",
    '<tool_call>\n{"name": "ls", "arguments": {"a": NaN}}\n</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": "a=True"}\n</tool_call>',
    "[os.system('ls')]",
    "[__import__('os').system('ls')]",
    "[ls(**{'a': True})]",
    "[ls(*[True])]",
    "[(lambda: 1)()]",
    "[ls(a=__import__('os'))]",
    "[ls(a=().__class__.__bases__[0].__subclasses__())]",
    "[cd(folder='x')",
    "[" * 100_000,
    "[ls(a=" + "1" * 5000 + ")]",
    "[ls(True)]",
    "[ls(a=True)][0]",
    "[getattr(ls, '__globals__')]",
    "[ls.__call__(a=True)]",
    "[cd(folder=f'{1}')]",
    "[mean(numbers=[1]*10**9)]",
    "[power(base=10, exponent=10**9)]",
    "[logarithm(value=2, base=10, precision=10**8)]",
    "",
]


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    """One task per API class, plus a miss_func task (a withheld function is a hostile name too)."""
    out, seen = [], set()
    for cat in ("base", "long_context", "miss_func"):
        for q, gt in bfcl.load_category(cat):
            classes = frozenset(q["involved_classes"])
            if cat == "miss_func" and out and out[-1].domain == "miss_func":
                continue
            if cat == "miss_func" or not classes <= seen:
                out.append(bfcl.to_task(q, gt, cat))
                seen |= classes
    return out


def _typed(rng: random.Random, spec: dict[str, Any]) -> Any:
    if "enum" in spec:
        return rng.choice(spec["enum"])
    return {
        "string": rng.choice(["a", "x.txt", "..", "NVDA", "@bob", ""]),
        "integer": rng.randint(-3, 10**6),
        "float": rng.uniform(-1e6, 1e6),
        "boolean": rng.random() < 0.5,
        "array": ["a"] * rng.randint(0, 3),
        "dict": {},
    }.get(spec.get("type"), "a")


def _hostile_message(rng: random.Random, env: bfcl.BFCLEnv) -> str:
    declared = list(env._docs)
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(RAW_MESSAGES)
    name = rng.choice(HOSTILE_NAMES) if kind < 0.45 else rng.choice(declared)
    doc = env._docs.get(name) if isinstance(name, str) else None
    if doc is not None and kind > 0.7:  # well-typed: the call runs, whatever it does
        props = doc["parameters"]["properties"]
        args = {
            p: _typed(rng, spec)
            for p, spec in props.items()
            if p in doc["parameters"].get("required", []) or rng.random() < 0.5
        }
    else:
        params = list(doc["parameters"]["properties"]) if doc else ["a", "folder", "__class__"]
        args = {
            rng.choice(params + ["__class__", "self", "kwargs"]): rng.choice(HOSTILE_VALUES)
            for _ in range(rng.randint(0, 3))
        }
    if rng.random() < 0.5:
        body = json.dumps({"name": name, "arguments": args}, allow_nan=True)
        return f"<tool_call>\n{body}\n</tool_call>"
    rendered = ", ".join(f"{k}={v!r}" for k, v in args.items() if k.isidentifier())
    return f"[{name}({rendered})]"


def _record_calls(env: bfcl.BFCLEnv, executed: list[str]) -> None:
    """Wrap each of `env`'s methods: check that the call was allowed, then log its name in `executed`."""
    for name, method in list(env._methods.items()):

        def record(*a: Any, _name: str = name, _method: Any = method, **k: Any) -> Any:
            assert env._visible(_name), f"withheld function {_name} ran"
            assert bfcl.check_arguments(env._docs[_name], k)[1] is None and not a
            executed.append(_name)
            return _method(*a, **k)

        env._methods[name] = record


def test_hostile_messages_never_run_anything_undeclared(tasks, monkeypatch):
    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("a hostile message reached the operating system")

    for mod, attr in (
        (os, "system"),
        (os, "popen"),
        (os, "remove"),
        (os, "unlink"),
        (subprocess, "run"),
        (subprocess, "Popen"),
    ):
        monkeypatch.setattr(mod, attr, forbidden)
    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code import long_context

    constants = copy.deepcopy({k: v for k, v in vars(long_context).items() if k.isupper()})
    rng = random.Random(1234)
    fmts = [get_format("json", "full"), get_format("python", "full")]
    executed: list[str] = []
    sent = refused = 0
    while sent < N_MESSAGES:
        task = rng.choice(tasks)
        ep = Episode(task, rng.choice(fmts), max_rounds_per_turn=1000)
        env = ep.env
        assert isinstance(env, bfcl.BFCLEnv)
        _record_calls(env, executed)
        for _ in range(rng.randint(1, 8)):
            if ep.done:
                break
            before = repr(env.state())
            n_before = len(executed)
            replies = ep.step(_hostile_message(rng, env))  # must not raise
            sent += 1
            assert all(isinstance(r["content"], str) for r in replies)
            if len(executed) == n_before:
                refused += 1
                assert repr(env.state()) == before, "a refused message changed the state"
    assert sent >= 1000
    assert refused > 500 and len(executed) > 50  # both paths were exercised
    assert {k: v for k, v in vars(long_context).items() if k.isupper()} == constants
