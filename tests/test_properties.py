"""Property-based tests (hypothesis) on every parser and renderer.

- render → parse round-trips, in both call syntaxes, for generated calls (and for whole
  assistant messages with several calls and, where the syntax allows it, text around them);
- arbitrary text, and text built from the syntaxes' own fragments and from mangled calls, never
  raises and reads as literals only;
- arbitrary assistant messages, fed through `Episode` to the synthetic and the BFCL backend,
  never run anything but a declared (and, in BFCL's miss_func, visible) tool that the message
  named: a profiler watches every Python function the environment runs and every builtin;
- the helpers that read calls and arguments (`bfcl.parse_call_string`, `check_arguments`,
  `argument_problem`, `stringify`) and the tool-section renderers, on arbitrary input.

Deterministic (`derandomize=True`, no example database), so CI sees the same examples each run.
"""

from __future__ import annotations

import ast
import builtins
import copy
import importlib.util
import json
import keyword
import math
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, NamedTuple

import pytest
from hypothesis import (
    HealthCheck,
    currently_in_test_context,
    event,
    example,
    given,
    settings,
)
from hypothesis import strategies as st

from toolrl.core.diagnostics import STATES, output_state
from toolrl.core.episode import Episode
from toolrl.core.reflect import Deviation, first_deviation, rule_reflection
from toolrl.envs import bfcl, synthetic
from toolrl.envs.base import (
    MAX_ARGUMENT_CHARS,
    MAX_ARGUMENT_DEPTH,
    Call,
    Task,
    argument_problem,
)
from toolrl.formats import FORMATS, get_format

# ast.parse warns about invalid escapes ("\d") in the model's text; the parsers still answer.
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid escape sequence:DeprecationWarning", "ignore:invalid escape sequence:SyntaxWarning"
)
needs_bfcl = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None, reason="bfcl-eval is not installed")
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
JSON, PYTHON = get_format("json"), get_format("python")
ALL_FORMATS = [get_format(n, s) for n in FORMATS for s in ("compact", "full")]

# --- strategies -----------------------------------------------------------------------------

# Text that means something to one of the syntaxes, the chat template or the environments.
FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_call>\n",
    "\n</tool_call>",
    "<|im_end|>",
    "<|im_start|>",
    "<tool_response>",
    "[",
    "]",
    "](",
    "{",
    "}",
    '"',
    "'",
    '\\"',
    "\\",
    "(",
    ")",
    "=",
    ",",
    ":",
    ".",
    "*",
    "**",
    "\n",
    " ",
    "\t",
    "#",
    '{"name": ',
    '"arguments": ',
    '"name"',
    '"arguments"',
    "null",
    "true",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "10**10",
    "-",
    "0x1f",
    "1_000",
    "1j",
    "...",
    "b'x'",
    "{1}",
    "(1,)",
    "f'{1}'",
    "\\ud800",
    "\\u003c",
    "__import__",
    "__import__('os').system('echo pwned')",
    "os.system",
    "os.system('echo pwned')",
    "eval",
    "exec",
    "open",
    "getattr",
    "lambda: 1",
    "__class__",
    "__init__",
    "__dict__",
    "__globals__",
    "__subclasses__",
    "_private",
    "_tool_transfer",
    "_tools",
    "_init",
    "execute",
    "state",
    "schemas",
    "begin_turn",
    "SCHEMAS",
    "transfer",
    "lock_door",
    "amount",
    "to",
    "Ben",
    "front",
    "door",
    "5",
    "True",
    "None",
    "ls",
    "cd",
    "folder",
    "mkdir",
    "dir_name",
    "sort",
    "post_tweet",
    "_load_scenario",
    "a=",
    "=1",
]
FRAGMENT = st.sampled_from(FRAGMENTS)
FRAGMENT_TEXT = st.lists(FRAGMENT | st.text(max_size=3), max_size=8).map("".join)
TEXT = st.text(max_size=40) | FRAGMENT_TEXT

# Function and argument names the Python syntax can spell: ASCII identifiers that are not
# keywords (Python NFKC-normalises non-ASCII identifiers, so `ﬁle` reads back as `file`). No
# declared tool anywhere has another kind of name (the BFCL docs are checked in a test below).
IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(lambda s: not keyword.iskeyword(s))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4), max_leaves=8
)


def _calls(names: st.SearchStrategy[str], keys: st.SearchStrategy[str]) -> st.SearchStrategy[list[Call]]:
    call = st.builds(Call, names, st.dictionaries(keys, JSON_VALUES, max_size=4))
    return st.lists(call, min_size=1, max_size=4)


# JSON: any string is a name or a key. Python: identifiers (nested dict keys are any string).
JSON_CALLS = _calls(st.text(max_size=20) | IDENT | FRAGMENT_TEXT, TEXT)
PYTHON_CALLS = _calls(IDENT, IDENT)

# Values a Python-literal call can carry that JSON cannot: tuples, sets, bytes, complex, Ellipsis,
# non-finite floats, integer keys, deep nesting.
PY_SCALARS = SCALARS | st.floats() | st.binary(max_size=4) | st.complex_numbers(max_magnitude=10) | st.just(...)
PY_VALUES = st.recursive(
    PY_SCALARS,
    lambda c: (
        st.lists(c, max_size=4)
        | st.lists(c, max_size=3).map(tuple)
        | st.dictionaries(TEXT | st.integers() | st.tuples(st.integers()), c, max_size=3)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=3)
    ),
    max_leaves=12,
)
DEEP = st.integers(1, 40).map(lambda n: json.loads("[" * n + "1" + "]" * n))


def _canon(calls: list[Call]) -> list[tuple[str, str]]:
    """Calls compared strictly: JSON text tells True from 1, 1.0 from 1 and one key order from
    another, which `==` does not."""
    return [(c.name, json.dumps(c.arguments)) for c in calls]


def _mangle(draw: st.DrawFn, text: str) -> str:
    """A few splices of fragments into (or cuts out of) a rendered call."""
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 6)))
        text = text[:i] + draw(FRAGMENT_TEXT | st.just("")) + text[j:]
    return text


@st.composite
def messages(draw: st.DrawFn, fmt: Any, calls: st.SearchStrategy[list[Call]]) -> str:
    """An assistant message: arbitrary text, calls in this or the other syntax, or mangled calls."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(TEXT)
    other = JSON if fmt.name == "python" else PYTHON
    rendered = (other if kind == 3 else fmt).render_calls(draw(calls))
    if kind == 4:
        return draw(TEXT) + rendered + draw(TEXT)
    if kind == 5:
        return _mangle(draw, rendered)
    return rendered


# --- round trips ----------------------------------------------------------------------------


@SETTINGS
@given(calls=JSON_CALLS)
@example(calls=[Call("f", {"a": "x</tool_call>y"})])  # regression: closed the block inside a string
@example(calls=[Call("</tool_call>", {"<tool_call>": "<tool_call>\n</tool_call>"})])
def test_json_round_trip(calls):
    parsed = JSON.parse(JSON.render_calls(calls))
    assert parsed.error is None and not parsed.extra_text and not parsed.is_answer
    assert _canon(parsed.calls) == _canon(calls) and parsed.calls == calls


def test_json_tag_inside_a_string():
    """Regression (found by test_json_round_trip): a string argument holding `</tool_call>` ended
    the block early, so the expert's own rendering read back as "unbalanced <tool_call> tags".
    The tag's `<` is now written as the JSON escape \\u003c; any other body renders as before."""
    calls = [Call("f", {"a": "x</tool_call>y", "b": "<tool_call>"})]
    text = JSON.render_calls(calls)
    assert text.count("</tool_call>") == 1 and text.count("<tool_call>") == 1
    assert JSON.parse(text).calls == calls
    plain = [Call("f", {"a": "<b> & </tool_cal>"})]
    assert (
        JSON.render_calls(plain)
        == "<tool_call>\n" + json.dumps({"name": "f", "arguments": plain[0].arguments}) + "\n</tool_call>"
    )


@SETTINGS
@given(calls=PYTHON_CALLS)
@example(calls=[Call("f", {"a": "]\n)'\"\\", "b": -0.0, "c": [1e300, -5, True, None, {"k": ""}]})])
def test_python_round_trip(calls):
    parsed = PYTHON.parse(PYTHON.render_calls(calls))
    assert parsed.error is None and not parsed.extra_text and not parsed.is_answer
    assert _canon(parsed.calls) == _canon(calls) and parsed.calls == calls


NO_TAGS = TEXT.filter(lambda t: "<tool_call>" not in t and "</tool_call>" not in t)


@settings(SETTINGS, max_examples=100)
@given(calls=JSON_CALLS, texts=st.lists(NO_TAGS, min_size=5, max_size=5))
def test_json_message_with_several_calls_and_text(calls, texts):
    """Text may surround and separate the blocks: the calls are read, the text is flagged."""
    gaps = texts[: len(calls) + 1] + [""] * (len(calls) + 1 - len(texts))
    message = gaps[0] + "".join(JSON.render_calls([c]) + g for c, g in zip(calls, gaps[1:], strict=True))
    parsed = JSON.parse(message)
    assert parsed.error is None and _canon(parsed.calls) == _canon(calls)
    assert parsed.extra_text == any(g.strip() for g in gaps)
    assert output_state(message, parsed, JSON) == ("text_pollution" if parsed.extra_text else "healthy_call")


@settings(SETTINGS, max_examples=100)
@given(calls=PYTHON_CALLS, before=st.text(" \t\n\r", max_size=3), after=st.text(" \t\n\r", max_size=3))
def test_python_message_with_several_calls(calls, before, after):
    """The Python syntax allows nothing but whitespace around the list."""
    message = before + PYTHON.render_calls(calls) + after
    parsed = PYTHON.parse(message)
    assert parsed.error is None and _canon(parsed.calls) == _canon(calls)
    assert output_state(message, parsed, PYTHON) == "healthy_call"


@pytest.mark.parametrize("fmt", [JSON, PYTHON], ids=["json", "python"])
def test_no_calls_render_as_no_call(fmt):
    assert fmt.render_calls([]) in ("", "[]") and not fmt.parse(fmt.render_calls([])).calls


# --- arbitrary text -------------------------------------------------------------------------

_LITERAL_TYPES = (str, bytes, int, float, complex, bool, type(None), type(...), list, tuple, dict, set, frozenset)
_JSON_TYPES = (str, int, float, bool, type(None), list, dict)


def _values(v: Any) -> Iterator[Any]:
    yield v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _values(k)
            yield from _values(x)
    elif isinstance(v, (list, tuple, set, frozenset)):
        for x in v:
            yield from _values(x)


def _check_text(text: str) -> None:
    for fmt in ALL_FORMATS:
        with Guard(set()).watching() as guard:
            parsed = fmt.parse(text)  # must not raise
        assert guard.bad == [], guard.bad
        assert isinstance(parsed.calls, list) and (parsed.error is None or isinstance(parsed.error, str))
        assert not (parsed.calls and parsed.error), "calls and an error at once"
        assert output_state(text, parsed, fmt) in STATES
        if fmt.name == "json":
            if "<tool_call>" not in text and "</tool_call>" not in text:
                assert parsed.is_answer
            allowed = _JSON_TYPES
        else:
            if not text.strip().startswith("["):
                assert parsed.is_answer
            assert all(c.name.isidentifier() and all(k.isidentifier() for k in c.arguments) for c in parsed.calls)
            allowed = _LITERAL_TYPES
        for c in parsed.calls:
            assert isinstance(c.name, str) and isinstance(c.arguments, dict)
            assert all(isinstance(k, str) for k in c.arguments)
            assert all(isinstance(v, allowed) for v in _values(c.arguments))


@SETTINGS
@given(text=st.text() | messages(JSON, JSON_CALLS) | messages(PYTHON, PYTHON_CALLS))
def test_arbitrary_text_reads_as_literals_only(text):
    _check_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "[f(a=1)] trailing",
        "[" * 5000,
        "<tool_call>" * 3,
        "[\x00]",
        "[f(a='\ud800')]",
        "\ud800<tool_call>",
        "[f(a=1e999, b=..., c=b'x', d={1}, e=(1,), g=1j)]",
        '<tool_call>{"name": "f", "arguments": {"a": NaN}}</tool_call>',
    ],
)
def test_hard_texts_read_as_literals_only(text):
    _check_text(text)


# --- dispatch: nothing undeclared ever runs -------------------------------------------------

_FORBIDDEN_BUILTINS = {
    eval,
    exec,
    builtins.__import__,
    open,
    breakpoint,
    input,
    os.system,
    os.popen,
    os.execv,
    os.execve,
    os.fork,
    os.remove,
    os.unlink,
    os.rmdir,
    os.kill,
}
# Reflection that the standard library uses freely, but that our own parse / dispatch code must
# never apply (it would turn a name from the model into an attribute).
_REFLECTION = {getattr, setattr, delattr, globals, locals, vars}
_TOOLRL = str(Path(synthetic.__file__).parents[1]) + os.sep
# (importlib/__init__.py holds import_module; an import statement inside a tool runs
# <frozen importlib._bootstrap>, which is allowed.)
_FORBIDDEN_FILES = ("subprocess.py", "shutil.py", "pickle.py", "importlib/__init__.py", "runpy.py", "code.py", "pdb.py")


class Ran(NamedTuple):
    """One function of an environment module that ran, and who called it."""

    file: str
    qualname: str
    instance: Any
    caller_file: str
    caller: str


class Guard:
    """A profiler over `Episode.step`: records every function of the environment modules that
    runs (qualified name, and the instance it ran on), and every forbidden builtin or module
    reached from anywhere. `compile` is allowed only as `ast.parse`'s (parse, not evaluate),
    `exec` only as the import system's."""

    # Our functions that may reflect: a state snapshot reads `vars` of the environment itself.
    reflection_ok: ClassVar[set[str]] = {"Domain.state", "BFCLEnv.state.<locals>.<dictcomp>"}

    def __init__(self, env_files: set[str]):
        self.env_files = env_files
        self.ran: list[Ran] = []
        self.bad: list[str] = []

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            file = code.co_filename
            if file in self.env_files or any(file.startswith(d) for d in self.env_files):
                back = frame.f_back.f_code if frame.f_back else None
                caller = back.co_qualname.split(".<locals>.")[0] if back else ""  # a comprehension's function
                self.ran.append(
                    Ran(file, code.co_qualname, frame.f_locals.get("self"), back.co_filename if back else "", caller)
                )
            if any(f in file for f in _FORBIDDEN_FILES):
                self.bad.append(f"{file}:{code.co_qualname}")
        elif event == "c_call":
            if arg is compile:
                if not (frame.f_code.co_filename == ast.__file__ and frame.f_code.co_name == "parse"):
                    self.bad.append(f"compile from {frame.f_code.co_filename}:{frame.f_code.co_name}")
            elif arg is exec and frame.f_code.co_filename == "<frozen importlib._bootstrap>":
                pass  # a module's first import (a tool's `strptime` loads `_strptime`)
            elif any(arg is f for f in _FORBIDDEN_BUILTINS) or (
                any(arg is f for f in _REFLECTION)
                and frame.f_code.co_filename.startswith(_TOOLRL)
                and frame.f_code.co_qualname not in self.reflection_ok
            ):
                self.bad.append(
                    f"{getattr(arg, '__name__', arg)} from {frame.f_code.co_filename}:{frame.f_code.co_qualname}"
                )

    @contextmanager
    def watching(self) -> Iterator[Guard]:
        previous = sys.getprofile()
        sys.setprofile(self)
        try:
            yield self
        finally:
            sys.setprofile(previous)


def _drive(
    ep: Episode, texts: list[str], env_files: set[str], check_step: Callable[[Episode, int, Guard, Any], None]
) -> None:
    """Each message through `ep.step` under a Guard watching `env_files`; `check_step(ep, turn,
    guard, parsed)` judges what ran during user turn `turn`. A message that ran no tool must
    leave the state as it was."""
    for text in texts:
        if ep.done:
            break
        parsed = ep.fmt.parse(text)
        turn = ep.turn
        before = repr(ep.env.state())
        guard = Guard(env_files)
        with guard.watching():
            replies = ep.step(text)  # must not raise
        assert guard.bad == [], guard.bad
        for r in replies:
            assert r["role"] in ("tool", "user") and isinstance(r["content"], str)
            r["content"].encode("utf-8")  # a lone surrogate would crash the tokenizer downstream
        check_step(ep, turn, guard, parsed)
        mine = [ep.env, *getattr(ep.env, "_instances", {}).values()]
        ran_here = [r for r in guard.ran if any(r.instance is m for m in mine)]
        if not any(_is_tool(r) for r in ran_here):
            assert repr(ep.env.state()) == before, "a message that ran no tool changed the state"
        if currently_in_test_context():  # --hypothesis-show-statistics tells how often each path ran
            event("a message ran a tool" if any(_is_tool(r) for r in ran_here) else "a message ran no tool")
            if parsed.calls and not any(_is_tool(r) for r in ran_here):
                event("a parsed call was refused")


def _is_tool(r: Ran) -> bool:
    """A tool ran: a `_tool_` method (synthetic), or an API-class method entered from BFCLEnv."""
    if r.file == synthetic.__file__:
        return "._tool_" in r.qualname
    return r.caller == "BFCLEnv.execute"


# Who may call what in synthetic.py (callee → caller); comprehensions run inside their function.
SYNTHETIC_CALLERS = {
    "Domain.execute": {"Episode.step", "Episode._close_turn"},
    "Domain.state": {"Episode._close_turn"},
    "Domain.begin_turn": {"Episode.step"},
    "Domain.schemas": set(),
    "check_arguments": {"Domain.execute"},
}
HOSTILE_NAMES = [
    "__import__",
    "eval",
    "exec",
    "open",
    "getattr",
    "os.system",
    "system",
    "__class__",
    "__init__",
    "__dict__",
    "__getattribute__",
    "__reduce__",
    "_private",
    "_tools",
    "_init",
    "execute",
    "state",
    "schemas",
    "begin_turn",
    "check_arguments",
    "SCHEMAS",
    "name",
    "cumulative_responses",
    "_load_scenario",
    "_instances",
    "_methods",
    "_docs",
    "_visible",
    "",
    " ls",
    "Transfer",
    "_tool_transfer",
    "_tool_lock_door",
]


def _synthetic_tasks() -> list[Task]:
    rng = random.Random(7)
    return [
        synthetic.make_task(rng, f"{d}-{i}", d, [1, 2], [1, 2], 0.3, 0.3) for d in synthetic.DOMAINS for i in range(2)
    ]


SYNTHETIC_TASKS = _synthetic_tasks()


def _typed_value(spec: dict[str, Any], strict: bool) -> st.SearchStrategy[Any]:
    """A value of the parameter's type (`strict`: one its doc accepts), else often anything."""
    if "enum" in spec:
        return st.sampled_from(spec["enum"]) if strict else st.sampled_from(spec["enum"]) | JSON_VALUES
    typed = {
        "integer": st.integers(spec.get("minimum", -3), spec.get("maximum", 12)),
        "float": st.floats(-1e6, 1e6),
        "boolean": st.booleans(),
        "string": st.sampled_from(["a", "x.txt", "..", "document", "\ud800", "\udc80x", ""]),
        "array": st.lists(st.sampled_from(["a", "b"]) | st.integers(0, 5), max_size=3),
        "dict": st.just({}),
    }.get(spec.get("type"), JSON_VALUES)
    return typed if strict else typed | TEXT | JSON_VALUES


def _call_for(
    docs: list[dict[str, Any]],
    own: list[dict[str, Any]],
    classes: Sequence[type] = (),
    withheld: Sequence[dict[str, Any]] = (),
) -> st.SearchStrategy[Call]:
    """A call: well-typed, of one of the environment's `own` tools (the likeliest kind) or of a
    `withheld` one (declared, not yet revealed); loosely typed, of any of `docs`; of a hostile
    name; or of a method of the environment's `classes` that no doc declares, mostly with no
    arguments (`_generate_id()` would run if it were dispatched)."""

    def of(tools: list[dict[str, Any]], strict: bool) -> st.SearchStrategy[Call]:
        def args(doc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
            props, required = doc["parameters"]["properties"], doc["parameters"].get("required", [])
            return st.fixed_dictionaries(
                {p: _typed_value(s, strict) for p, s in props.items() if p in required},
                optional={p: _typed_value(s, strict) for p, s in props.items() if p not in required},
            )

        return st.sampled_from(tools).flatmap(lambda d: st.builds(Call, st.just(d["name"]), args(d)))

    names = st.sampled_from(HOSTILE_NAMES) | IDENT | st.text(max_size=10)
    keys = st.sampled_from(["amount", "to", "door", "folder", "__class__", "self", "kwargs"]) | IDENT
    kinds = [
        of(own, True),
        of(own, True),
        of(docs, False),
        st.builds(Call, names, st.dictionaries(keys, JSON_VALUES, max_size=3)),
    ]
    if withheld:
        kinds.append(of(list(withheld), True))
    declared = {d["name"] for d in docs}
    undeclared = sorted({n for c in classes for n in dir(c) if callable(getattr(c, n))} - declared)
    if undeclared:
        kinds.append(st.builds(Call, st.sampled_from(undeclared), st.just({}) | st.dictionaries(keys, JSON_VALUES)))
    return st.one_of(kinds)


def _synthetic_check(ep: Episode, turn: int, guard: Guard, parsed: Any) -> None:
    declared = {s["name"] for s in synthetic.DOMAINS[ep.task.domain].SCHEMAS}
    named = {c.name for c in parsed.calls}
    for r in guard.ran:
        qualname, inst = r.qualname, r.instance
        if ".<locals>." in qualname:
            assert r.caller == qualname.split(".<locals>.")[0], r
            continue
        if qualname in SYNTHETIC_CALLERS:
            assert r.caller in SYNTHETIC_CALLERS[qualname], f"{qualname} ran, called by {r.caller}"
            continue
        cls, _, method = qualname.partition("._tool_")
        assert method and r.caller == "Domain.execute", f"{qualname} ran, called by {r.caller}"
        assert method in declared and cls == type(ep.env).__name__, f"undeclared {qualname} ran"
        if inst is ep.env:
            assert method in named, f"{qualname} ran but the message named {named}"
        else:  # the checker's ground-truth environment, at the close of a turn
            assert inst is ep._gt_env and method in {c.name for t in ep.task.turns for c in t.calls}


@SETTINGS
@given(data=st.data())
def test_synthetic_dispatch_runs_only_declared_tools(data):
    task = data.draw(st.sampled_from(SYNTHETIC_TASKS))
    fmt = data.draw(st.sampled_from(ALL_FORMATS))
    docs = [s for d in synthetic.DOMAINS.values() for s in d.SCHEMAS]  # other domains' tools too
    domain = synthetic.DOMAINS[task.domain]
    calls = st.lists(_call_for(docs, domain.SCHEMAS, [domain]), min_size=1, max_size=3)
    texts = data.draw(st.lists(messages(fmt, calls), min_size=1, max_size=6))
    ep = Episode(task, fmt, max_rounds_per_turn=4)
    _drive(ep, texts, {synthetic.__file__}, _synthetic_check)
    assert set(ep.env._tools) == {s["name"] for s in ep.env.schemas()}


@pytest.fixture(scope="module")
def bfcl_tasks() -> list[Task]:
    """A miss_func task (a withheld tool is undeclared until revealed) and one base task per
    further API class."""
    out = [bfcl.to_task(*bfcl.load_category("miss_func")[0], "miss_func")]
    seen = set(out[0].init["involved_classes"])
    for q, gt in bfcl.load_category("base"):
        if not set(q["involved_classes"]) <= seen:
            out.append(bfcl.to_task(q, gt, "base"))
            seen |= set(q["involved_classes"])
    return out


def _bfcl_setup(task: Task) -> tuple[list[dict[str, Any]], list[type], list[dict[str, Any]], set[str], Any]:
    """The task's docs, API classes, withheld docs, the API modules' folder, and the check of
    what ran in a step: only API methods that BFCLEnv.execute entered, each declared, visible at
    that turn (from the task, not from the environment) and named by the message; at the close
    of a turn, the ground truth's calls on the checker's own instances."""
    docs = [d for c in task.init["involved_classes"] for d in bfcl.class_docs(c)]
    classes = [bfcl.api_class(c) for c in task.init["involved_classes"]]
    withheld = [d for d in docs if any(d["name"] in names for names in task.init["hidden"].values())]
    api_dir = str(Path(sys.modules[classes[0].__module__].__file__).parent) + os.sep  # all API modules
    declared = {d["name"] for d in docs}
    gt_names = {c.name for t in task.turns for c in t.calls}

    def check(ep: Episode, turn: int, guard: Guard, parsed: Any) -> None:
        visible = declared - {n for k, names in task.init["hidden"].items() if int(k) > turn for n in names}
        named = {c.name for c in parsed.calls}
        model = list(ep.env._instances.values())
        for r in guard.ran:
            if r.caller_file.startswith(api_dir):  # a tool's own helpers
                continue
            qualname, inst, method = r.qualname, r.instance, r.qualname.rpartition(".")[2]
            if r.caller == "Episode._close_turn" and method in ("__eq__", "__ne__"):
                continue  # the checker compares the two environments' states
            assert r.caller == "BFCLEnv.execute", f"{qualname} ran, called by {r.caller}"
            if any(inst is m for m in model):  # `is`: the API classes compare equal by state
                assert method in visible and method in named, f"{qualname} ran (visible {sorted(visible)})"
            else:
                assert any(inst is g for g in ep._gt_env._instances.values()) and method in gt_names, qualname

    return docs, classes, withheld, {api_dir}, check


@needs_bfcl
@SETTINGS
@given(data=st.data())
def test_bfcl_dispatch_runs_only_visible_declared_tools(bfcl_tasks, data):
    task = data.draw(st.sampled_from(bfcl_tasks))
    fmt = data.draw(st.sampled_from([get_format("json", "full"), get_format("python", "full")]))
    docs, classes, withheld, env_files, check = _bfcl_setup(task)
    calls = st.lists(_call_for(docs, docs, classes, withheld), min_size=1, max_size=3)
    texts = data.draw(st.lists(messages(fmt, calls), min_size=1, max_size=5))
    _drive(Episode(task, fmt, max_rounds_per_turn=50), texts, env_files, check)


def _plain_args(doc: dict[str, Any]) -> dict[str, Any]:
    """Arguments the doc accepts: its required parameters, each a plain value of its type."""
    out = {}
    for p in doc["parameters"].get("required", []):
        spec = doc["parameters"]["properties"][p]
        out[p] = (
            spec["enum"][0]
            if "enum" in spec
            else {
                "integer": spec.get("minimum", 1),
                "float": 1.0,
                "boolean": True,
                "array": [],
                "dict": {},
            }.get(spec.get("type"), "a")
        )
    return out


def _sweep(
    task: Task,
    docs: list[dict[str, Any]],
    names: list[str],
    env_files: set[str],
    check: Callable[[Episode, int, Guard, Any], None],
) -> set[str]:
    """Every name as a call in its own fresh episode, in both syntaxes, with no arguments and
    (for a documented name) with arguments its doc accepts; returns the names that ran a tool."""
    by_name = {d["name"]: d for d in docs}
    ran: set[str] = set()
    for name in names:
        for args in [{}] + ([_plain_args(by_name[name])] if name in by_name else []):
            for fmt in (JSON, PYTHON):
                if fmt is PYTHON and not (name.isidentifier() and not keyword.iskeyword(name)):
                    continue
                ep = Episode(task, fmt, max_rounds_per_turn=50)
                text = fmt.render_calls([Call(name, args)])
                assert ep.fmt.parse(text).calls == [Call(name, args)]

                def record(ep: Episode, turn: int, guard: Guard, parsed: Any, _name: str = name) -> None:
                    check(ep, turn, guard, parsed)
                    if any(_is_tool(r) for r in guard.ran if r.caller != "Episode._close_turn"):
                        ran.add(_name)

                _drive(ep, [text], env_files, record)
    return ran


def test_every_undeclared_name_is_refused_synthetic():
    """Deterministic, beside the searches above (which find a given rare name only by luck):
    every attribute of the domain class, every hostile name and every other domain's tool,
    called with no arguments and with valid ones; only the domain's own tools run, each does."""
    for domain in synthetic.DOMAINS.values():
        task = next(t for t in SYNTHETIC_TASKS if t.domain == domain.name)
        all_docs = [s for d in synthetic.DOMAINS.values() for s in d.SCHEMAS]
        names = sorted(set(dir(domain)) | set(HOSTILE_NAMES) | {d["name"] for d in all_docs})
        ran = _sweep(task, all_docs, names, {synthetic.__file__}, _synthetic_check)
        assert ran == {s["name"] for s in domain.SCHEMAS}


@needs_bfcl
def test_every_undeclared_name_is_refused_bfcl(bfcl_tasks):
    """The same for BFCL: every attribute of the task's API classes (`_generate_id`,
    `_load_scenario`, `__init__`, ...), every hostile name, and every withheld tool before it is
    revealed; only visible declared tools run, and most of them do."""
    for task in bfcl_tasks:
        docs, classes, withheld, env_files, check = _bfcl_setup(task)
        names = sorted({n for c in classes for n in dir(c)} | set(HOSTILE_NAMES) | {d["name"] for d in docs})
        ran = _sweep(task, docs, names, env_files, check)
        assert ran <= {d["name"] for d in docs} - {d["name"] for d in withheld} and len(ran) > len(docs) // 2


# --- the reflection judge reads arbitrary trajectories --------------------------------------


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_first_deviation_on_arbitrary_messages(data):
    task = data.draw(st.sampled_from(SYNTHETIC_TASKS))
    fmt = data.draw(st.sampled_from([JSON, PYTHON]))
    docs = synthetic.DOMAINS[task.domain].SCHEMAS
    texts = data.draw(st.lists(messages(fmt, st.lists(_call_for(docs, docs), min_size=1, max_size=2)), max_size=6))
    dev = first_deviation(task, fmt, [{"role": "assistant", "content": t} for t in texts])
    if dev is not None:
        assert isinstance(dev, Deviation) and isinstance(rule_reflection(dev), str)


# --- argument helpers -----------------------------------------------------------------------


@SETTINGS
@given(args=PY_VALUES | st.dictionaries(TEXT | st.integers(), PY_VALUES | DEEP, max_size=4))
@example(args={"a": json.loads("[" * (MAX_ARGUMENT_DEPTH + 1) + "]" * (MAX_ARGUMENT_DEPTH + 1))})
@example(args={"a": "x" * MAX_ARGUMENT_CHARS})
@example(args={"a": {(1,): 2}})
def test_argument_problem_never_raises(args):
    problem = argument_problem(args)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert isinstance(args, dict) and len(json.dumps(args)) <= MAX_ARGUMENT_CHARS


def _ok_type(kind: str | None, v: Any) -> bool:
    want = {
        "string": str,
        "integer": int,
        "float": float,
        "boolean": bool,
        "array": list,
        "dict": dict,
        "object": dict,
    }.get(kind)
    return want is None or (isinstance(v, want) and (kind == "boolean" or not isinstance(v, bool)))


def _all_bfcl_docs() -> list[dict[str, Any]]:
    from bfcl_eval.constants.executable_backend_config import (
        MULTI_TURN_FUNC_DOC_FILE_MAPPING as classes,
    )

    return [d for c in sorted(classes) for d in bfcl.class_docs(c)]


@needs_bfcl
@SETTINGS
@given(data=st.data())
def test_bfcl_check_arguments_never_raises(data):
    doc = data.draw(st.sampled_from(_all_bfcl_docs()))
    props = doc["parameters"]["properties"]
    keys = st.sampled_from(list(props) + ["__class__", "self"]) if props else st.sampled_from(["__class__", "self"])
    args = data.draw(
        st.dictionaries(keys, PY_VALUES | st.sampled_from([10**20, 2**53 + 1, math.nan]), max_size=4)
        | st.fixed_dictionaries({p: _typed_value(s, False) for p, s in props.items()})
        | PY_VALUES
    )
    out, error = bfcl.check_arguments(doc, args)
    if error is None:
        assert set(out) == set(args) and set(doc["parameters"].get("required", [])) <= set(out)
        assert all(_ok_type(props[k].get("type"), v) for k, v in out.items())
    else:
        assert out == {} and isinstance(error, str)


@SETTINGS
@given(args=PY_VALUES | st.dictionaries(IDENT | st.sampled_from(["amount", "to", "door"]), PY_VALUES, max_size=3))
def test_synthetic_check_arguments_never_raises(args):
    for schema in synthetic.Bank.SCHEMAS + synthetic.Home.SCHEMAS:
        error = synthetic.check_arguments(schema, args)
        assert error is None or isinstance(error, str)


@SETTINGS
@given(name=IDENT, args=st.lists(JSON_VALUES, max_size=3), kwargs=st.dictionaries(IDENT, JSON_VALUES, max_size=3))
def test_bfcl_call_string_round_trip(name, args, kwargs):
    text = f"{name}(" + ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]) + ")"
    got_name, got_args, got_kwargs = bfcl.parse_call_string(text)
    assert (
        got_name == name and json.dumps(got_args) == json.dumps(args) and json.dumps(got_kwargs) == json.dumps(kwargs)
    )


@SETTINGS
@given(text=st.text() | FRAGMENT_TEXT | messages(PYTHON, PYTHON_CALLS).map(lambda t: t.strip("[] \n")))
def test_bfcl_call_string_on_arbitrary_text(text):
    """Ground-truth strings are trusted data, but the reader still only reads literals: any text
    gives a plain call or a parse error, never an evaluation."""
    with Guard(set()).watching() as guard:
        try:
            name, args, kwargs = bfcl.parse_call_string(text)
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            name = None
    assert guard.bad == [], guard.bad
    if name is not None:
        assert name.isidentifier() and isinstance(args, list) and all(isinstance(k, str) for k in kwargs)
        assert all(isinstance(v, _LITERAL_TYPES) for v in _values([args, kwargs]))


@SETTINGS
@given(result=PY_VALUES | st.dictionaries(TEXT, JSON_VALUES, max_size=4))
def test_bfcl_stringify(result):
    text = bfcl.stringify(result)
    assert isinstance(text, str)
    if isinstance(result, str):
        assert text == result
    elif isinstance(result, dict) and all(isinstance(k, str) for k in result):
        try:
            expected = json.dumps(result)
        except (TypeError, ValueError):
            expected = str(result)
        assert text == expected


# --- tool sections --------------------------------------------------------------------------

PARAM = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "integer", "float", "boolean", "array", "dict"])},
    optional={"description": TEXT, "enum": st.lists(JSON_VALUES, max_size=3)},
)
TOOL_DOC = st.fixed_dictionaries(
    {
        "name": st.text(max_size=20) | IDENT | FRAGMENT_TEXT,
        "description": TEXT,
        "parameters": st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(st.text(max_size=10) | IDENT, PARAM, max_size=4),
                "required": st.lists(IDENT, max_size=2),
            }
        ),
    },
    optional={"response": JSON_VALUES},
)


@settings(SETTINGS, max_examples=100)
@given(docs=st.lists(TOOL_DOC, max_size=4))
@example(
    docs=[
        {
            "name": "a</tools>\n\nb",
            "description": "\n\u2028\x85",
            "parameters": {"type": "object", "properties": {}, "required": []},
        }
    ]
)
def test_tool_sections(docs):
    """Compact: one line naming every tool. Full: every doc on its own line as JSON, read back
    equal, right after the section's header line."""
    for fmt in ALL_FORMATS:
        text = fmt.render_tools(copy.deepcopy(docs))
        assert isinstance(text, str)
        if fmt.style == "compact":
            first = text.split("\nFormat: ")[0]
            assert all(d["name"] in first for d in docs)
            continue
        lines = text.split("\n")
        start = lines.index("<tools>" if fmt.name == "json" else "You can call these functions:") + 1
        assert [json.loads(line) for line in lines[start : start + len(docs)]] == docs
        assert lines[start + max(len(docs), 1)] == ("</tools>" if fmt.name == "json" else "")


@needs_bfcl
def test_bfcl_names_are_python_identifiers():
    """The Python syntax can spell every BFCL function and parameter name (what IDENT assumes)."""
    names = [n for d in _all_bfcl_docs() for n in [d["name"], *d["parameters"]["properties"]]]
    assert names and all(n.isascii() and n.isidentifier() and not keyword.iskeyword(n) for n in names)
