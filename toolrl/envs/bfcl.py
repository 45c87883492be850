"""BFCL multi-turn (base, miss_param, miss_func, long_context) on the API classes that the
`bfcl-eval` package ships, executed without `eval`.

The package runs model output with `eval` after a regex rewrite, dispatches to every public
method, caches instances in module globals and never resets them (a second episode of a task
starts from the first one's end state), and some classes load module-level dicts into an instance
by reference (one episode's TravelAPI purchase changes the next episode's card balance). Here a
call is parsed by a `Format` (json/ast), looked up in a table built from the task's declared
function docs, checked against its doc, and called on instances that belong to this episode
alone (deep-copied after loading). Only the data files, the API classes and the class → module
table are imported from the package (`pip install --no-deps bfcl-eval mpmath`: its declared
dependencies pin an old numpy and dozens of SDKs that none of this needs).
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import inspect
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolrl.config import BFCL_CATEGORIES, BFCL_CLASSES, check
from toolrl.envs.base import Call, Task, Turn, argument_problem, time_limit
from toolrl.plugins import Backend

if TYPE_CHECKING:
    from toolrl.config import Config, WorldConfig

CATEGORIES = ("base", "miss_param", "miss_func", "long_context")
N_SCENARIOS = 200
# What the authors' data scripts append to every doc's description, and the message BFCL sends
# when miss_func's withheld functions become available.
DOC_NOTE = " Note that the provided function is in Python 3 syntax."
REVEAL = "I have updated some more functions you can choose from. What about now?"
REPLY_DONE = "The request has been completed."
REPLY_REFUSE = {
    "miss_param": "I cannot do that yet: a required parameter is missing. Could you provide it?",
    "miss_func": "None of the available functions can do that. Could you provide a function that can?",
}
REPLY_REFUSE_DEFAULT = "I cannot do that with the available functions."
# Limits on what a model's calls may cost, beyond envs.base's. Everything the ground truth does is
# far inside them (largest integer 987,654, precision at most 10, at most 35 calls per task);
# beyond them a single call can hang a job: `logarithm` with precision 100,000 takes 10 s in
# mpmath, and an integer power of two large integers does not finish.
MAX_ABS_NUMBER = 2**53
COST_PARAMETERS = {"precision": 1000}
MAX_CALLS_PER_EPISODE = 100


class BFCLUnavailable(ValueError):
    """bfcl-eval is not installed."""


def _package() -> Any:
    try:
        import bfcl_eval
    except ImportError:
        raise BFCLUnavailable(
            "world.backend 'bfcl' needs the bfcl-eval package: pip install --no-deps bfcl-eval mpmath"
        ) from None
    return bfcl_eval


@functools.cache
def _constants() -> Any:
    _package()
    return importlib.import_module("bfcl_eval.constants.executable_backend_config")


def data_dir() -> Path:
    return Path(_package().__file__).parent / "data"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """BFCL's files are JSON Lines despite their .json extension."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category '{category}' (choose from {', '.join(CATEGORIES)})")


def load_category(category: str) -> list[tuple[dict[str, Any], list[list[str]]]]:
    """(question entry, ground-truth call strings per turn) for each of the category's 200 tasks."""
    _check_category(category)
    name = f"BFCL_v4_multi_turn_{category}.json"
    questions = _jsonl(data_dir() / name)
    answers = _jsonl(data_dir() / "possible_answer" / name)
    for q, a in zip(questions, answers, strict=True):
        if q["id"] != a["id"]:
            raise ValueError(f"bfcl-eval data: question {q['id']} is paired with answer {a['id']}")
    return [(q, a["ground_truth"]) for q, a in zip(questions, answers, strict=True)]


@functools.cache
def class_docs(cls: str) -> tuple[dict[str, Any], ...]:
    """The function docs of one API class, as the package ships them."""
    mapping = _constants().MULTI_TURN_FUNC_DOC_FILE_MAPPING
    if cls not in mapping:
        raise ValueError(f"unknown BFCL API class '{cls}'")
    return tuple(_jsonl(data_dir() / "multi_turn_func_doc" / mapping[cls]))


@functools.cache
def api_class(cls: str) -> type:
    """The class itself, imported from the module the package's own table names."""
    module = importlib.import_module(_constants().CLASS_FILE_PATH_MAPPING[cls])
    return getattr(module, cls)


def shown_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """A doc as the model sees it (the authors' prompt appends the Python-syntax note)."""
    return {**doc, "description": doc["description"] + DOC_NOTE}


def split_indices(seed: int = 42) -> tuple[list[int], list[int]]:
    """The paper's split: the shuffled scenario indices, first half train, second half test (in
    shuffle order). The same indices hold in every category, so no variant of a test scenario is
    ever trained on. seed 42 reproduces the authors' list exactly."""
    idx = list(range(N_SCENARIOS))
    random.Random(seed).shuffle(idx)
    half = N_SCENARIOS // 2
    return idx[:half], idx[half:]


def parse_call_string(text: str) -> tuple[str, list[Any], dict[str, Any]]:
    """A ground-truth call string, `name(arg, key=value)`, read with `ast` (literals only)."""
    node = ast.parse(text, mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain call: {text!r}")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise ValueError(f"*args/**kwargs in a ground-truth call: {text!r}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    return node.func.id, args, kwargs


def _owner(classes: list[str]) -> dict[str, str]:
    """function name → the involved class that declares it (names are unique across classes)."""
    return {doc["name"]: cls for cls in classes for doc in class_docs(cls)}


def gt_call(text: str, owner: dict[str, str]) -> Call:
    """A ground-truth call with every argument named. About 40 calls per category pass
    positional arguments; they are bound by the method's real signature (the doc's property
    order differs from it for `purchase_insurance`)."""
    name, args, kwargs = parse_call_string(text)
    if name not in owner:
        raise ValueError(f"ground-truth call {text!r} names no function of the task's classes")
    if args:
        sig = inspect.signature(getattr(api_class(owner[name]), name))
        bound = sig.bind(None, *args, **kwargs).arguments
        bound.pop(next(iter(sig.parameters)))
        kwargs = dict(bound)
    return Call(name, kwargs)


def to_task(entry: dict[str, Any], gt: list[list[str]], category: str) -> Task:
    """One BFCL entry as a Task: one call per expert message (a later call may need an earlier
    result, as in the authors' expert data), and a refusal as the expert's answer on a turn whose
    ground truth is empty."""
    classes = list(entry["involved_classes"])
    owner = _owner(classes)
    docs = {d["name"]: d for c in classes for d in class_docs(c)}
    turns_calls = [[gt_call(c, owner) for c in turn] for turn in gt]
    hidden: dict[str, list[str]] = {}
    for k, names in entry.get("missed_function", {}).items():
        # A withheld function the ground truth calls before it is revealed (miss_func_49 calls
        # `tail` at turn 1, revealed at turn 3) stays visible: no model could match that turn.
        early = {c.name for turn in turns_calls[: int(k)] for c in turn}
        kept = [n for n in names if n not in early]
        if kept:
            hidden[k] = kept
    turns = []
    for i, (messages, calls) in enumerate(zip(entry["question"], turns_calls, strict=True)):
        if messages:
            question = "\n".join(m["content"] for m in messages)
        else:
            revealed = hidden.get(str(i), [])
            question = "\n".join(json.dumps(shown_doc(docs[n])) for n in revealed) + "\n" + REVEAL
        reply = REPLY_DONE if calls else REPLY_REFUSE.get(category, REPLY_REFUSE_DEFAULT)
        turns.append(Turn(question, [[c] for c in calls], reply))
    init = {
        "initial_config": entry.get("initial_config", {}),
        "involved_classes": classes,
        "long_context": category == "long_context",
        "hidden": hidden,
    }
    return Task(entry["id"], category, init, turns, [category], backend="bfcl")


def make_splits(
    categories_train: list[str],
    categories_test: list[str],
    seed: int,
    n_train: int,
    n_test: int,
    held_out_classes: list[str],
) -> dict[str, list[Task]]:
    """rl: the train indices of the train categories; id: the test indices of the test
    categories. With `held_out_classes`, a task that involves one of them leaves rl and id and
    its test variants form content_ood (a split by API class for runs without ACEBench)."""
    train_idx, test_idx = split_indices(seed)
    train_idx, test_idx = train_idx[:n_train], test_idx[:n_test]
    held = set(held_out_classes)
    out: dict[str, list[Task]] = {"rl": [], "id": [], "content_ood": []}
    for cat in dict.fromkeys(categories_train + categories_test):
        data = load_category(cat)
        if cat in categories_train:
            out["rl"] += [to_task(*data[i], cat) for i in train_idx if not held & set(data[i][0]["involved_classes"])]
        if cat in categories_test:
            for i in test_idx:
                key = "content_ood" if held & set(data[i][0]["involved_classes"]) else "id"
                out[key].append(to_task(*data[i], cat))
    return out


class BFCLEnv:
    """One episode's instances of the task's API classes.

    `execute` answers every call with a string, as BFCL's executor does: a result dict as JSON,
    an exception as "Error during execution: ...", and an undeclared, withheld or ill-typed call as
    an error that runs nothing."""

    cumulative_responses = True

    def __init__(self, task: Task):
        init = task.init
        stateless = set(_constants().STATELESS_CLASSES)
        self._instances: dict[str, Any] = {}
        for cls in init["involved_classes"]:
            inst = api_class(cls)()
            if cls not in stateless:
                inst._load_scenario(
                    copy.deepcopy(init["initial_config"].get(cls, {})), long_context=init["long_context"]
                )
            # Loading puts module-level dicts into the instance by reference; the copy makes
            # every later change this episode's alone.
            self._instances[cls] = copy.deepcopy(inst)
        self._docs: dict[str, dict[str, Any]] = {}
        self._methods: dict[str, Callable[..., Any]] = {}
        for cls in init["involved_classes"]:
            for doc in class_docs(cls):
                self._docs[doc["name"]] = doc
                self._methods[doc["name"]] = getattr(self._instances[cls], doc["name"])
        self._revealed_at = {n: int(k) for k, names in init["hidden"].items() for n in names}
        self._turn = 0
        self._calls = 0

    def _visible(self, name: str) -> bool:
        return name in self._docs and self._revealed_at.get(name, 0) <= self._turn

    def begin_turn(self, index: int) -> None:
        self._turn = index

    def schemas(self) -> list[dict[str, Any]]:
        return [shown_doc(d) for n, d in self._docs.items() if self._visible(n)]

    def execute(self, call: Call) -> str:
        if not isinstance(call.name, str) or not self._visible(call.name):
            return json.dumps({"error": f"no function named {str(call.name)[:80]!r} is available"})
        args, error = check_arguments(self._docs[call.name], call.arguments)
        if error is not None:
            return json.dumps({"error": f"{call.name}: {error}"})
        self._calls += 1
        if self._calls > MAX_CALLS_PER_EPISODE:
            return json.dumps({"error": f"this episode has used its {MAX_CALLS_PER_EPISODE} calls"})
        try:
            with time_limit():
                return stringify(self._methods[call.name](**args))
        except Exception as e:  # a tool's own failure is an observation, as in BFCL
            return f"Error during execution: {e}"

    def state(self) -> dict[str, Any]:
        """Public attributes per class: what BFCL's state checker compares (with `!=`)."""
        return {
            cls: {a: v for a, v in vars(inst).items() if not a.startswith("_")} for cls, inst in self._instances.items()
        }


def stringify(result: Any) -> str:
    """BFCL's result → observation rule, applied at once so no live object aliases the state."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError, RecursionError):
            return str(result)
    return str(result)


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "float": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "dict": (dict,),
    "object": (dict,),
}


def check_arguments(doc: dict[str, Any], args: Any) -> tuple[dict[str, Any], str | None]:
    """Arguments checked against a function doc: (the arguments to pass, an error or None).

    A float parameter given an integer gets the float: the methods compute with what they get,
    and an integer `power` of two large integers never returns."""
    problem = argument_problem(args)
    if problem is not None:
        return {}, problem
    params = doc["parameters"]
    props = params.get("properties", {})
    for name in params.get("required", []):
        if name not in args:
            return {}, f"missing required argument '{name}'"
    out = {}
    for name, value in args.items():
        if name not in props:
            return {}, f"unexpected argument '{str(name)[:80]}'"
        checked, error = _check_value(props[name], value, name)
        if error is not None:
            return {}, error
        if name in COST_PARAMETERS and isinstance(checked, (int, float)) and abs(checked) > COST_PARAMETERS[name]:
            return {}, f"'{name}' must be at most {COST_PARAMETERS[name]}"
        out[name] = checked
    return out, None


def _check_value(spec: dict[str, Any], value: Any, name: str) -> tuple[Any, str | None]:
    kind = spec.get("type")
    allowed = _TYPES.get(kind)
    if allowed is not None and (not isinstance(value, allowed) or (isinstance(value, bool) and kind != "boolean")):
        return None, f"'{name}' must be of type {kind}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > MAX_ABS_NUMBER:
            return None, f"'{name}' is out of range"
        if kind == "float":
            value = float(value)
    if "enum" in spec and value not in spec["enum"]:
        return None, f"'{name}' must be one of {spec['enum']}"
    if kind == "array" and "items" in spec:
        items = []
        for i, item in enumerate(value):
            checked, error = _check_value(spec["items"], item, f"{name}[{i}]")
            if error is not None:
                return None, error
            items.append(checked)
        value = items
    return value, None


class BFCL(Backend):
    """BFCL multi-turn from the installed `bfcl-eval` package, the paper's split; content_ood is
    ACEBench where a checkout is given, else the test tasks of held-out API classes."""

    name = "bfcl"
    summary = "BFCL multi-turn from the bfcl-eval package (the paper's split)"
    settings = "world.bfcl"

    @classmethod
    def validate(cls, cfg: Config) -> None:
        b = cfg.world.bfcl
        check(
            cfg.world.prompt_style == "full",
            "world.prompt_style",
            "the bfcl backend shows the function docs as they are: set it to full",
        )
        for key, cats in (
            ("world.bfcl.train_categories", b.train_categories),
            ("world.bfcl.test_categories", b.test_categories),
        ):
            check(len(cats) > 0, key, "must not be empty")
            for c in cats:
                check(c in BFCL_CATEGORIES, key, f"unknown category '{c}' (choose from {', '.join(BFCL_CATEGORIES)})")
        for key, n in (("world.bfcl.n_train", b.n_train), ("world.bfcl.n_test", b.n_test)):
            check(0 < n <= 100, key, f"must be in [1, 100] (each half of the 200 scenarios), got {n}")
        for c in b.held_out_classes:
            check(
                c in BFCL_CLASSES,
                "world.bfcl.held_out_classes",
                f"unknown API class '{c}' (choose from {', '.join(BFCL_CLASSES)})",
            )
        a = b.acebench
        check(
            a.path is not None or bool(b.held_out_classes),
            "world.bfcl.acebench.path",
            "content_ood for the bfcl backend needs an ACEBench checkout (world.bfcl.acebench.path) "
            "or held-out API classes (world.bfcl.held_out_classes)",
        )
        if a.path is not None:
            check(Path(a.path).is_dir(), "world.bfcl.acebench.path", f"folder '{a.path}' does not exist")
        for c in a.categories:
            check(
                c in ("multi_step", "multi_turn"),
                "world.bfcl.acebench.categories",
                f"unknown category '{c}' (choose from multi_step, multi_turn)",
            )
        if a.user is not None:
            check(
                a.path is not None,
                "world.bfcl.acebench.user",
                "a simulated user needs ACEBench tasks: set world.bfcl.acebench.path",
            )
            check(
                a.user.kind in ("hf", "openai"),
                "world.bfcl.acebench.user.kind",
                f"a simulated user is an LLM: choose from hf, openai, got '{a.user.kind}'",
            )

    @classmethod
    def rl_task_count(cls, world: WorldConfig) -> int:
        return len(world.bfcl.train_categories) * world.bfcl.n_train

    @classmethod
    def make_splits(cls, world: WorldConfig) -> dict[str, list[Task]]:
        """The warm-up (SFT before RL, if any) sees the training tasks only."""
        b = world.bfcl
        splits = make_splits(
            b.train_categories, b.test_categories, b.split_seed, b.n_train, b.n_test, b.held_out_classes
        )
        if b.acebench.path is not None:
            from toolrl.envs import acebench

            splits["content_ood"] = acebench.load_tasks(b.acebench)
        return {"warmup": splits["rl"], **splits}

    @classmethod
    def make_env(cls, task: Task) -> BFCLEnv:
        return BFCLEnv(task)
