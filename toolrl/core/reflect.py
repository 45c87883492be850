"""PRS (process-reflection supervision): a written reflection of a failed RL rollout.

A failed trajectory alone teaches the model nothing about *where* it went wrong; PRS trains on a
reflection that names the first deviating step, the wrong call, the right call and why. The
reflection comes from a judge: `rule` (deterministic, from the diff against the ground truth, so
the sweep is reproducible on a CPU), `hf` (a local causal LM) or `openai` (an OpenAI-compatible
endpoint). Model output is only ever read through `Format.parse` (json / ast.literal_eval).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from toolrl.config import JudgeConfig
from toolrl.envs.base import Call, Task
from toolrl.formats import Format
from toolrl.models.llm import HFChat, OpenAIChat

Message = dict[str, str]

# Reason categories of a Deviation.
MALFORMED = "malformed_call"
WRONG_TOOL = "wrong_tool"
WRONG_ARGUMENT = "wrong_argument"
MISSING_ARGUMENT = "missing_argument"
EXTRA_ARGUMENT = "extra_argument"
EXTRA_CALL = "extra_call"
CALL_INSTEAD_OF_ANSWER = "call_instead_of_answer"
CALL_INSTEAD_OF_ASK_BACK = "call_instead_of_ask_back"
ANSWER_INSTEAD_OF_CALL = "answer_instead_of_call"
STOPPED_EARLY = "stopped_early"

ANSWER = "answer without calling a tool"
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass
class Deviation:
    """The first assistant message that leaves the ground-truth trajectory.

    `turn` and `step` are 0-based indices (task.turns[turn], the step-th assistant message of
    that turn); texts show them 1-based. `actual` is the model's raw text, None when the
    trajectory ended there. `expected_calls` empty means the right move was to answer (or ask
    back) without calling a tool; `expected` is that move rendered in the trajectory's format."""

    turn: int
    step: int
    reason: str
    detail: str
    actual: str | None
    expected: str
    actual_calls: list[Call] = field(default_factory=list)
    expected_calls: list[Call] = field(default_factory=list)


def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _argument_diff(want: Call, got: Call, chained_from: list[Call], question: str) -> tuple[str, str]:
    """(reason, sentence) for two calls of the same tool whose arguments differ; the first
    difference in the ground truth's argument order decides the reason, the sentence names all."""
    parts: list[tuple[str, str]] = []
    for k, v in want.arguments.items():
        if k not in got.arguments:
            parts.append((MISSING_ARGUMENT, f"the argument `{k}` is missing (it should be {_fmt_value(v)})"))
        elif got.arguments[k] != v:
            why = f"the argument `{k}` should be {_fmt_value(v)}, not {_fmt_value(got.arguments[k])}"
            if chained_from and str(v) not in question.split():
                names = ", ".join(f"`{c.name}`" for c in chained_from)
                why += f" (the user did not say it: it is the value the earlier {names} call returned)"
            parts.append((WRONG_ARGUMENT, why))
    for k, v in got.arguments.items():
        if k not in want.arguments:
            parts.append((EXTRA_ARGUMENT, f"the argument `{k}`={_fmt_value(v)} does not belong to `{want.name}`"))
    return parts[0][0], f"In the call to `{want.name}`, " + "; ".join(p for _, p in parts) + "."


def _compare_round(want: list[Call], got: list[Call], earlier: list[Call], question: str) -> tuple[str, str] | None:
    """None when every call of `got` is still owed in this round (a round may be split over
    several messages); else (reason, sentence) for the first call that is not."""
    remaining = list(want)
    unmatched = []
    for c in got:
        if c in remaining:
            remaining.remove(c)
        else:
            unmatched.append(c)
    if not unmatched:
        return None
    bad = unmatched[0]
    same_name = [c for c in remaining if c.name == bad.name]
    if same_name:
        return _argument_diff(same_name[0], bad, earlier, question)
    if remaining:
        return WRONG_TOOL, f"It called `{bad.name}`, but the right tool here is `{remaining[0].name}`."
    return EXTRA_CALL, f"The call to `{bad.name}` is not needed: every call of this step was already made."


def first_deviation(task: Task, fmt: Format, messages: list[Message]) -> Deviation | None:
    """Walk the assistant messages against the ground truth (each turn's rounds, then an answer)
    and return the first one that deviates, or None if the trajectory follows the ground truth.

    Like `Episode`, a message without a call attempt ends the user turn; its text is not
    checked (the checker never checks it either). Calls of one round may be made in any order
    and over several messages; rounds must come in order, since a later round may need a value
    that an earlier lookup returned (the ground-truth Calls hold those true values)."""
    turn, step, rnd = 0, 0, 0
    owed: list[Call] = list(task.turns[0].rounds[0]) if task.turns and task.turns[0].rounds else []
    for m in messages:
        if m.get("role") != "assistant" or turn >= len(task.turns):
            continue
        t, text = task.turns[turn], m["content"]
        parsed = fmt.parse(text)
        reason = detail = ""
        if parsed.is_answer:
            if not owed:
                turn, step, rnd = turn + 1, 0, 0
                nxt = task.turns[turn].rounds if turn < len(task.turns) else []
                owed = list(nxt[0]) if nxt else []
                continue
            reason = ANSWER_INSTEAD_OF_CALL
            detail = f"It answered without calling a tool, but the request still needs `{owed[0].name}`."
        elif not owed:
            ask = not t.rounds
            reason = CALL_INSTEAD_OF_ASK_BACK if ask else CALL_INSTEAD_OF_ANSWER
            if ask:
                detail = (
                    f"It called a tool, but the user left out a parameter, so it should ask back "
                    f"({json.dumps(t.reply)}) and call nothing"
                )
            else:
                detail = "It called a tool, but every call of this turn was made, so it should answer"
            detail += f" (the call was also malformed: {parsed.error})." if parsed.error else "."
        elif parsed.error is not None:
            reason, detail = MALFORMED, f"The call cannot be parsed: {parsed.error}."
        else:
            bad = _compare_round(owed, parsed.calls, [c for r in t.rounds[:rnd] for c in r], t.question)
            if bad is None:
                for c in parsed.calls:
                    owed.remove(c)
                if not owed and rnd + 1 < len(t.rounds):
                    rnd += 1
                    owed = list(t.rounds[rnd])
                step += 1
                continue
            reason, detail = bad
        shown = fmt.render_calls(owed) if owed else ANSWER
        return Deviation(turn, step, reason, detail, text, shown, list(parsed.calls), list(owed))
    if turn >= len(task.turns):
        return None
    return Deviation(
        turn,
        step,
        STOPPED_EARLY,
        f"The attempt stopped here, before turn {turn + 1} of {len(task.turns)} was done.",
        None,
        fmt.render_calls(owed) if owed else ANSWER,
        [],
        list(owed),
    )


def render_transcript(messages: list[Message]) -> str:
    """The trajectory as readable plain text (the system prompt left out), one message a block."""
    return "\n".join(
        f"{_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages if m["role"] != "system"
    )


def rule_reflection(dev: Deviation) -> str:
    """The deterministic reflection: first deviating step, the wrong call, the right call with all
    its arguments, and why."""
    where = f"The first mistake is at turn {dev.turn + 1}, step {dev.step + 1}."
    if dev.actual is None:
        did = "The assistant stopped there without doing anything more."
    else:
        did = "The assistant wrote:\n" + (dev.actual if dev.actual.strip() else "(an empty message)")
    if dev.expected_calls:
        right = "The right call was:\n" + dev.expected
    elif dev.reason == CALL_INSTEAD_OF_ASK_BACK:
        right = "The right move was to answer without calling a tool: ask the user for the missing detail."
    else:
        right = "The right move was to answer without calling a tool."
    return f"{where}\n{did}\n{right}\nWhy: {dev.detail}"


def judge_prompt(task: Task, fmt: Format, messages: list[Message]) -> list[Message]:
    """The prompt of the model judges: the tools, the failed attempt, the ground truth, and the
    four items the rule judge writes."""
    truth = []
    for i, t in enumerate(task.turns, 1):
        steps = [fmt.render_calls(r) for r in t.rounds] + [ANSWER if t.rounds else f"ask back, {ANSWER}"]
        truth.append(f"Turn {i} (user: {t.question}):\n" + "\n".join(f"Step {j}: {x}" for j, x in enumerate(steps, 1)))
    tools = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    user = (
        f"The assistant had these tools:\n{tools}\n\n"
        f"Its failed attempt:\n{render_transcript(messages)}\n\n"
        "The correct steps, turn by turn:\n" + "\n\n".join(truth) + "\n\n"
        "Write a short reflection that gives: the first step where the attempt deviates (turn and "
        "step), the wrong call it made there, the right call with all its arguments, and why."
    )
    return [
        {"role": "system", "content": "You review failed tool-use attempts and explain the first mistake."},
        {"role": "user", "content": user},
    ]


class Judge(Protocol):
    def reflect(self, task: Task, fmt: Format, messages: list[Message]) -> str: ...


class RuleJudge:
    """Deterministic: the reflection is built from `first_deviation`."""

    def reflect(self, task: Task, fmt: Format, messages: list[Message]) -> str:
        dev = first_deviation(task, fmt, messages)
        if dev is None:
            return "The attempt follows the correct steps; there is no mistake to point out."
        return rule_reflection(dev)


class HFJudge(HFChat):
    """A local causal LM as the judge; greedy, so a rerun writes the same reflections."""

    def reflect(self, task: Task, fmt: Format, messages: list[Message]) -> str:
        return self.chat(judge_prompt(task, fmt, messages), cue="Reflection:")


class OpenAIJudge(OpenAIChat):
    """An OpenAI-compatible endpoint as the judge, at temperature 0."""

    def reflect(self, task: Task, fmt: Format, messages: list[Message]) -> str:
        return self.chat(judge_prompt(task, fmt, messages))


def make_judge(cfg: JudgeConfig) -> Judge:
    """Build the judge once per PRS phase, so a bad path or a missing key fails before any RL."""
    if cfg.kind == "rule":
        return RuleJudge()
    if cfg.kind == "hf":
        return HFJudge(cfg)
    if cfg.kind == "openai":
        return OpenAIJudge(cfg)
    raise ValueError(f"signals.prs.judge.kind: choose from rule, hf, openai, got '{cfg.kind}'")


def reflection_example(task: Task, fmt: Format, messages: list[Message], reflection: str) -> list[Message]:
    """The SFT example: the trajectory's own tool list, the failed attempt as plain text with the
    request to find its first mistake, and the reflection as the assistant's answer. Contents
    are plain strings, for the model's chat template."""
    if not messages or messages[0]["role"] != "system":
        raise ValueError(f"task {task.id}: a trajectory starts with the system message (the tool list)")
    user = (
        "Here is a failed attempt at a task:\n\n" + render_transcript(messages) + "\n\n"
        "Find the first mistake in it: say at which turn and step it is, what the wrong call was, "
        "what the right call is with all its arguments, and why."
    )
    return [
        {"role": "system", "content": str(messages[0]["content"])},
        {"role": "user", "content": user},
        {"role": "assistant", "content": str(reflection)},
    ]


__all__ = [
    "ANSWER",
    "Deviation",
    "HFJudge",
    "Judge",
    "OpenAIJudge",
    "RuleJudge",
    "first_deviation",
    "judge_prompt",
    "make_judge",
    "reflection_example",
    "render_transcript",
    "rule_reflection",
]
