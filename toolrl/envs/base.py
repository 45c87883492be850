"""What every tool backend provides: calls, tasks and a stateful environment.

The rollout engine, the checker and the formats only see these types, so the synthetic world and
the BFCL backend are interchangeable behind them.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# Limits on what one call may cost, for every backend. The benchmarks' ground truth lies far
# inside them (BFCL: at most 6,690 characters in an argument, nesting depth 3).
MAX_ARGUMENT_CHARS = 100_000
MAX_ARGUMENT_DEPTH = 16
TOOL_SECONDS = 2.0
# What one observation may show the model. BFCL's longest ground-truth result is 31,706 characters
# (long_context's get_stock_info; the 99th percentile of all 4,625 is 12,690), so this cuts only a
# tool that floods, before its output is tokenised into every later prompt of the episode.
MAX_OBSERVATION_CHARS = 65_536


def cap_observation(text: str) -> str:
    """`text`, or its head with a note saying how much was cut: the model learns the output was
    cut, instead of the whole episode failing on a context that no longer fits."""
    if len(text) <= MAX_OBSERVATION_CHARS:
        return text
    return (
        text[:MAX_OBSERVATION_CHARS]
        + f"\n[output cut: {len(text):,} characters, the limit is {MAX_OBSERVATION_CHARS:,}]"
    )


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]

    def key(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments}, sort_keys=True)


@dataclass
class Turn:
    """One user turn. `rounds` are the ground-truth assistant messages that call tools, in order
    (a later round may need a value from an earlier round's result). No rounds: the right move is
    to answer without any call (an ask-back turn)."""

    question: str
    rounds: list[list[Call]]
    reply: str = "Done."
    # Set where a benchmark scores a turn by its end state instead of by ground-truth calls
    # (ACEBench): {class name: {attribute: value}}, compared on the attributes given.
    expected_state: dict[str, Any] | None = None

    @property
    def calls(self) -> list[Call]:
        return [c for r in self.rounds for c in r]


@dataclass
class Task:
    id: str
    domain: str
    init: dict[str, Any]
    turns: list[Turn]
    features: list[str] = field(default_factory=list)
    # Which environment runs the task: synthetic, bfcl or acebench (see toolrl.envs.make_env).
    backend: str = "synthetic"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> Task:
        turns = [
            Turn(
                t["question"],
                [[Call(c["name"], c["arguments"]) for c in r] for r in t["rounds"]],
                t["reply"],
                t.get("expected_state"),
            )
            for t in d["turns"]
        ]
        return Task(d["id"], d["domain"], d["init"], turns, list(d.get("features", [])), d.get("backend", "synthetic"))


class ToolEnv(Protocol):
    """A fresh instance per episode; `execute` dispatches only to declared tools.

    `cumulative_responses`: a turn's ground-truth results must be among the model's results of
    *all* turns so far (BFCL's response check) rather than of this turn only."""

    cumulative_responses: bool

    def schemas(self) -> list[dict[str, Any]]:
        """The tools the model may call now (a withheld tool appears once revealed)."""
        ...

    def execute(self, call: Call) -> str: ...

    def state(self) -> dict[str, Any]: ...

    def begin_turn(self, index: int) -> None:
        """User turn `index` opens: BFCL's miss_func reveals its withheld tools here."""
        ...


def argument_problem(args: Any) -> str | None:
    """Why a call's arguments are refused before its doc is consulted, or None: they must be a
    JSON object, at most MAX_ARGUMENT_DEPTH deep and MAX_ARGUMENT_CHARS long. The Python-call
    syntax can spell values JSON cannot (tuple keys, sets, bytes) and nesting deep enough to
    overflow the encoder; both are refused here rather than crash a job."""
    if not isinstance(args, dict):
        return "arguments must be an object"
    stack = [(args, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            return f"arguments nested deeper than {MAX_ARGUMENT_DEPTH} levels"
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            stack += [(v, depth + 1) for v in value]
    try:
        size = len(json.dumps(args))
    except (TypeError, ValueError, RecursionError):
        return "arguments must be JSON values (strings, numbers, booleans, null, lists, objects)"
    if size > MAX_ARGUMENT_CHARS:
        return f"arguments longer than {MAX_ARGUMENT_CHARS} characters"
    return None


class ToolTimeout(Exception):
    """A tool call ran past TOOL_SECONDS."""


@contextmanager
def time_limit(seconds: float | None = None) -> Iterator[None]:
    """Interrupt a tool call that runs too long, as an exception the episode turns into an error
    observation. Legal calls can still be costly: BFCL's `cp` copies folders shallowly, so a few
    dozen well-formed calls build a tree whose `du()` takes minutes. SIGALRM interrupts pure-Python
    loops (all such tools are); it works only in the main thread, elsewhere there is no limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seconds = TOOL_SECONDS if seconds is None else seconds

    def expire(signum: int, frame: Any) -> None:
        raise ToolTimeout(f"the call ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
