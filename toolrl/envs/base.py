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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Task":
        turns = [
            Turn(t["question"], [[Call(c["name"], c["arguments"]) for c in r] for r in t["rounds"]], t["reply"])
            for t in d["turns"]
        ]
        return Task(d["id"], d["domain"], d["init"], turns, list(d.get("features", [])))


class ToolEnv(Protocol):
    """A fresh instance per episode; `execute` dispatches only to declared tools."""

    def schemas(self) -> list[dict[str, Any]]: ...

    def execute(self, call: Call) -> str: ...

    def state(self) -> dict[str, Any]: ...
