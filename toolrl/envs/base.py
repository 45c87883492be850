"""What every tool backend provides: calls, tasks and a stateful environment.

The rollout engine, the checker and the formats only see these types, so the synthetic world and
the BFCL backend are interchangeable behind them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


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
    def from_json(d: dict[str, Any]) -> "Task":
        turns = [
            Turn(t["question"], [[Call(c["name"], c["arguments"]) for c in r] for r in t["rounds"]], t["reply"],
                 t.get("expected_state"))
            for t in d["turns"]
        ]
        return Task(d["id"], d["domain"], d["init"], turns, list(d.get("features", [])),
                    d.get("backend", "synthetic"))


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
