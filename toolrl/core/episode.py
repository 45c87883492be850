"""One multi-turn episode between a model and a tool environment, as messages.

The same class drives GRPO sampling, greedy evaluation and the rendering of expert trajectories,
so the three cannot drift apart: an expert trajectory is just an episode whose messages come from
the ground truth.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Protocol

from toolrl.core.diagnostics import output_state
from toolrl.envs import make_env
from toolrl.envs.base import Call, Task, cap_observation
from toolrl.formats import Format

Message = dict[str, str]


class User(Protocol):
    """A simulated user (ACEBench's multi_turn): it opens the conversation, and answers every
    model message that calls no tool until it is satisfied."""

    def opening(self) -> str:
        """The first user message (the same text however often it is asked for)."""
        ...

    def reply(self, message: str) -> str | None:
        """The next user message, or None when the conversation is finished."""
        ...


class Episode:
    """Feeds model messages to the environment and scores each user turn when it closes.

    A turn is checked as BFCL's multi-turn checker does (and as DESIGN.md specifies): the
    environment state after the model's calls equals the state after the ground-truth calls, and
    every ground-truth result is among the model's results of that turn (of all turns so far,
    where the environment says so, as BFCL's check is). A turn whose ground truth is empty (an
    ask-back turn) passes only if the model called nothing: the irrelevance check that the
    authors' reward leaves out (`irrelevance_check=False` restores their looser reward). A turn
    with an `expected_state` (ACEBench) passes when the environment's state has those values.

    With a `user`, the user messages come from it instead of the turns' questions: a message
    without a call goes to the user, and the turn closes (and is scored) only when the user has
    finished. Each new user message gets a fresh `max_rounds_per_turn` budget.
    """

    def __init__(
        self,
        task: Task,
        fmt: Format,
        max_rounds_per_turn: int = 4,
        irrelevance_check: bool = True,
        user: User | None = None,
    ):
        self.task = task
        self.user = user
        self.fmt = fmt
        self.max_rounds_per_turn = max_rounds_per_turn
        self.irrelevance_check = irrelevance_check
        self.env = make_env(task)
        self._gt_env = make_env(task)
        self.env.begin_turn(0)
        self._gt_env.begin_turn(0)
        self.turn = 0
        self.turn_ok: list[bool] = []
        self.format_errors = 0
        self.states: list[str] = []
        # Messages that are neither a parsable call nor a final answer (SimpleTIR's void turns).
        self.voids = 0
        self.done = False
        self.truncated = False
        self._calls: list[Call] = []
        self._results: list[str] = []
        self._earlier_results: list[str] = []
        self._rounds = 0

    def initial_messages(self) -> list[Message]:
        question = self.task.turns[0].question if self.user is None else self.user.opening()
        return [
            {"role": "system", "content": self.fmt.render_tools(self.env.schemas())},
            {"role": "user", "content": question},
        ]

    def step(self, text: str) -> list[Message]:
        """Consume one assistant message; return the messages the environment answers with
        (tool results or the next user question), or [] when the episode has ended."""
        if self.done:
            raise RuntimeError("step() on a finished episode")
        parsed = self.fmt.parse(text)
        state = output_state(text, parsed, self.fmt)
        self.states.append(state)
        if parsed.error is not None or state == "full_collapse":
            self.voids += 1
        if parsed.is_answer:
            said = None if self.user is None else self.user.reply(text)
            if said is not None:
                self._rounds = 0
                return [{"role": "user", "content": said}]
            self._close_turn()
            if self.turn == len(self.task.turns):
                self.done = True
                return []
            self.env.begin_turn(self.turn)
            self._gt_env.begin_turn(self.turn)
            return [{"role": "user", "content": self.task.turns[self.turn].question}]
        self._rounds += 1
        if parsed.error is not None:
            self.format_errors += 1
            observations = [json.dumps({"error": parsed.error})]
        else:
            results = [self.env.execute(c) for c in parsed.calls]
            self._calls += parsed.calls
            self._results += results
            observations = results
        if self._rounds > self.max_rounds_per_turn:
            self.done = True
            return []
        # The checker compares the full results (self._results); only what the model sees is capped.
        return [{"role": "tool", "content": cap_observation(o)} for o in observations]

    def truncate(self) -> None:
        """The message or token budget ran out before the episode ended."""
        self.done = True
        self.truncated = True

    def _close_turn(self) -> None:
        turn = self.task.turns[self.turn]
        gt = turn.calls
        gt_results = [self._gt_env.execute(c) for c in gt]
        results = self._earlier_results + self._results if self.env.cumulative_responses else self._results
        if turn.expected_state is not None:
            ok = state_matches(self.env.state(), turn.expected_state)
        elif not gt:
            ok = not self._calls or not self.irrelevance_check
        else:
            ok = (
                bool(self._calls)
                and self.env.state() == self._gt_env.state()
                and not (Counter(gt_results) - Counter(results))
            )
        self.turn_ok.append(ok)
        self.turn += 1
        self._earlier_results += self._results
        self._calls, self._results, self._rounds = [], [], 0

    @property
    def success(self) -> bool:
        return not self.truncated and len(self.turn_ok) == len(self.task.turns) and all(self.turn_ok)

    def summary(self) -> dict[str, Any]:
        return {
            "task_id": self.task.id,
            "domain": self.task.domain,
            "success": self.success,
            "turns": len(self.task.turns),
            "turns_completed": len(self.turn_ok),
            "turns_ok": sum(self.turn_ok),
            "format_errors": self.format_errors,
            "messages": len(self.states),
            "truncated": self.truncated,
            "states": dict(Counter(self.states)),
        }


def state_matches(state: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Every value `expected` names equals the state's (nested one level: class → attribute)."""
    return all(
        isinstance(state.get(k), dict) and all(state[k].get(a, _MISSING) == v for a, v in want.items())
        if isinstance(want, dict)
        else state.get(k, _MISSING) == want
        for k, want in expected.items()
    )


_MISSING = object()


def expert_messages(task: Task, fmt: Format) -> list[Message]:
    """The ground-truth trajectory as chat messages, produced by running it through an Episode
    (so every expert trajectory is checked to succeed, and its tool results are real)."""
    ep = Episode(task, fmt, max_rounds_per_turn=max([4] + [len(t.rounds) for t in task.turns]))
    messages = ep.initial_messages()
    for turn in task.turns:
        for rnd in turn.rounds:
            text = fmt.render_calls(rnd)
            messages.append({"role": "assistant", "content": text})
            messages += ep.step(text)
        messages.append({"role": "assistant", "content": turn.reply})
        messages += ep.step(turn.reply)
    if not ep.success:
        raise AssertionError(f"expert trajectory of task {task.id} does not pass the checker")
    return messages
