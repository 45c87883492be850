"""ACEBench's English agent tasks (the content-OOD split of the BFCL setup), run on the
scenario classes of a user-supplied ACEBench checkout.

The checkout is used as it is (nothing is downloaded): `cfg.path` is the folder that holds
`data_all/` and `model_inference/`. What is read from it:

* `data_all/data_en/data_agent_{multi_step,multi_turn}.json` (JSON Lines): `id`, `question`,
  `initial_config` ({class: settings for `_load_scenario`}), `function` (the tool docs),
  `involved_classes`; and `data_all/data_en/possible_answer/` files of the same names: `id`,
  `ground_truth` (a list of {class: {attribute: expected value}}) and `mile_stone`.
* the scenario classes, one file per class under
  `model_inference/{multi_step,multi_turn}/scenariosen/` (the tree of the task's category):
  BaseApi `phone_platform/base_api.py`, MessageApi `phone_platform/message.py`, ReminderApi
  `phone_platform/reminder.py`, FoodPlatform `phone_platform/food_services.py`, Travel
  `travel.py`. They import each other by package path (`model_inference.multi_turn...`), so the
  checkout root is on `sys.path` while a file is imported, and the imports it made are removed
  from `sys.modules` afterwards (two checkouts in one process never share a module). No bytecode
  is written: the checkout is read, never written to.

How a task runs, as ACEBench runs it (`multi_*_utils.execute_agent_func_call`): one fresh
instance per involved class, loaded with `_load_scenario(initial_config[class])` and then with
`_load_scenario(initial_config["BaseApi"])` (every phone class inherits BaseApi and keeps its
own wifi/logged_in flags); a call goes to every involved instance that has the method (so
`turn_on_wifi` reaches MessageApi too), and the last result is the observation. Unlike ACEBench,
nothing is evaluated: a call is looked up by name in a table built from the task's docs, and
its arguments are checked against the doc first.

Scoring is by end state, as `model_eval/checker.py::agent_checker` does. A ground-truth class key
that names no involved class (`ReminderAPI`, `Reminderpi`, `BaseAPI`) is not checked, as in
ACEBench, with a warning: checked, the reminder lists of multi_step 0 and 1 under `ReminderAPI`
cannot be reached with the tools given (verified on the real data: they renumber a built-in
reminder), so mapping the keys would make those tasks unpassable. One difference: a dict
attribute (an inbox, a reminder list) must equal the expected one, where ACEBench checks only the
keys the ground truth lists (so an extra message would pass there).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from toolrl.config import ACEBenchConfig, WorldConfig
from toolrl.envs.base import Call, Task, Turn, argument_problem, time_limit
from toolrl.plugins import Backend

log = logging.getLogger(__name__)

CATEGORIES = ("multi_step", "multi_turn")
DATA_DIR = Path("data_all", "data_en")
CLASS_FILES = {
    "BaseApi": "phone_platform/base_api.py",
    "MessageApi": "phone_platform/message.py",
    "ReminderApi": "phone_platform/reminder.py",
    "FoodPlatform": "phone_platform/food_services.py",
    "Travel": "travel.py",
}
TASK_KEYS = ("id", "question", "initial_config", "function", "involved_classes")
# The user simulator ends the conversation with this line (ACEBench's convention).
FINISH = "finish conversation"
# ACEBench's simulated user starts from this agent greeting.
GREETING = "Is there anything you need help with today?"


# --- loading the tasks ------------------------------------------------------------------------


def load_tasks(cfg: ACEBenchConfig) -> list[Task]:
    """ACEBench's English agent tasks of `cfg.categories`, one single-turn Task each, scored by
    the end state of the possible answer. multi_turn tasks need a simulated user, so without
    `cfg.user` they are left out (with a warning) rather than played with nobody to talk to."""
    if not cfg.path:
        raise ValueError("world.bfcl.acebench.path: the ACEBench checkout is not set")
    root = Path(cfg.path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"world.bfcl.acebench.path: {root} is not a folder (an ACEBench checkout)")
    unknown = [c for c in cfg.categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"world.bfcl.acebench.categories: unknown {unknown} (choose from {', '.join(CATEGORIES)})")
    tasks: list[Task] = []
    for category in cfg.categories:
        if category == "multi_turn" and cfg.user is None:
            log.warning(
                "ACEBench multi_turn tasks skipped: they need a simulated user "
                "(set world.bfcl.acebench.user to an hf or openai LLM)"
            )
            continue
        tasks += _category_tasks(root, category)
    return tasks


def scenario_dir(category: str) -> Path:
    """The category's tree of scenario classes, relative to the checkout."""
    return Path("model_inference", category, "scenariosen")


def _category_tasks(root: Path, category: str) -> list[Task]:
    name = f"data_agent_{category}.json"
    items = _read_jsonl(root / DATA_DIR / name)
    answers_path = root / DATA_DIR / "possible_answer" / name
    answers = {}
    for i, a in enumerate(_read_jsonl(answers_path), 1):
        _require(a, ("id", "ground_truth"), f"{answers_path}:{i}")
        answers[a["id"]] = a
    tasks = []
    typos: set[tuple[str, str]] = set()
    for i, item in enumerate(items, 1):
        where = f"{root / DATA_DIR / name}:{i}"
        _require(item, TASK_KEYS, where)
        if item["id"] not in answers:
            raise ValueError(f"{answers_path}: no possible answer for '{item['id']}'")
        classes = list(item["involved_classes"])
        for cls in classes:
            _class_file(root, category, cls, where)
        expected = merged_ground_truth(answers[item["id"]]["ground_truth"], classes, item["id"])
        init = {
            "checkout": str(root),
            "category": category,
            "initial_config": item["initial_config"],
            "involved_classes": classes,
            "functions": _callable_docs(item["function"], where, typos),
        }
        tasks.append(
            Task(
                item["id"],
                "acebench",
                init,
                [Turn(item["question"], [], expected_state=expected)],
                [category],
                "acebench",
            )
        )
    return tasks


def _callable_docs(docs: list[dict[str, Any]], where: str, warned: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """The task's function docs with every `required` name that is not among the `properties`
    dropped (warned about once per function and name). The real data has such a typo in a Travel
    function; kept, the strict argument check would make that function uncallable whatever the
    model writes (the name is required, and unknown if given). The docs are copies: the shown
    doc and the checked doc are the same, and the checkout's data stay as they are."""
    fixed = []
    for doc in docs:
        params = doc.get("parameters") if isinstance(doc, dict) else None
        if not isinstance(params, dict) or not isinstance(params.get("required"), list):
            fixed.append(doc)
            continue
        props = params.get("properties") or {}
        absent = [p for p in params["required"] if p not in props]
        for p in absent:
            if (str(doc.get("name")), p) not in warned:
                warned.add((str(doc.get("name")), p))
                log.warning(
                    "%s: function '%s' requires '%s', which is not among its properties; not required",
                    where,
                    doc.get("name"),
                    p,
                )
        if absent:
            doc = {**doc, "parameters": {**params, "required": [p for p in params["required"] if p in props]}}
        fixed.append(doc)
    return fixed


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ValueError(f"ACEBench checkout incomplete: {path} is missing")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON Lines ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: a line must hold a JSON object")
        rows.append(row)
    return rows


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: the key '{missing[0]}' is missing")


def _class_file(root: Path, category: str, cls: str, where: str) -> Path:
    if cls not in CLASS_FILES:
        raise ValueError(f"{where}: unknown involved class '{cls}' (known: {', '.join(CLASS_FILES)})")
    path = root / scenario_dir(category) / CLASS_FILES[cls]
    if not path.is_file():
        raise ValueError(f"ACEBench checkout incomplete: {path} (class {cls}) is missing")
    return path


def merged_ground_truth(ground_truth: list[dict[str, Any]], classes: list[str], task_id: str) -> dict[str, Any]:
    """The possible answer's per-class entries as one {class: {attribute: value}}; a key that
    names no involved class is left out, as ACEBench's checker leaves it (see the module
    docstring), and named in a warning."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in ground_truth:
        for key, attributes in entry.items():
            if key in classes:
                merged.setdefault(key, {}).update(attributes)
            else:
                log.warning(
                    "%s: the possible answer's class '%s' is none of %s; not checked, as in ACEBench",
                    task_id,
                    key,
                    classes,
                )
    return merged


# --- the environment --------------------------------------------------------------------------


class ACEBenchEnv:
    """One episode's instances of the task's scenario classes; only the documented functions
    can be called (see the module docstring for how a call is dispatched)."""

    cumulative_responses = False

    def __init__(self, task: Task):
        init = task.init
        self._docs: dict[str, dict[str, Any]] = {d["name"]: d for d in init["functions"]}
        self._instances = {
            cls: fresh_instance(scenario_class(init["checkout"], init["category"], cls), cls, init["initial_config"])
            for cls in init["involved_classes"]
        }
        self._tools = {name: self._targets(name) for name in self._docs if name.isidentifier() and name[0] != "_"}

    def _targets(self, name: str) -> list[Callable[..., Any]]:
        """The bound methods a call of `name` runs, in involved-class order. `name` comes from
        the task's docs, never from model output."""
        return [m for m in (_method(inst, name) for inst in self._instances.values()) if m is not None]

    def schemas(self) -> list[dict[str, Any]]:
        return list(self._docs.values())

    def execute(self, call: Call) -> str:
        targets = self._tools.get(call.name)
        if targets is None:
            return _error(f"unknown function '{call.name}'")
        problem = check_arguments(self._docs[call.name], call.arguments)
        if problem:
            return _error(f"{call.name}: {problem}")
        if not targets:
            return _error(f"'{call.name}' is not available: no class of this task implements it")
        try:
            with time_limit():
                for method in targets:
                    # a copy per instance: no instance keeps a reference into the call (or another instance)
                    result = method(**copy.deepcopy(call.arguments))
        except Exception as e:  # a tool's failure is an observation, as in ACEBench
            return _error(f"{call.name} failed: {type(e).__name__}: {e}")
        return _text(result)

    def state(self) -> dict[str, Any]:
        """{class: {public attribute: value}}, JSON-normalised (integer keys become strings)
        because the possible answers were written as JSON, like ACEBench's saved snapshots."""
        snapshot = {
            cls: {k: v for k, v in vars(inst).items() if not k.startswith("_")} for cls, inst in self._instances.items()
        }
        return json.loads(json.dumps(snapshot, default=str))

    def begin_turn(self, index: int) -> None:
        """ACEBench shows every documented function from the start."""


def _method(inst: Any, name: str) -> Callable[..., Any] | None:
    """`inst`'s method `name` if a scenario class (not `object`) defines it as a plain function;
    properties, data and static or class methods are not tools. The function is bound from the
    class itself, so an instance attribute of the same name cannot stand in for it."""
    for klass in type(inst).__mro__[:-1]:
        if name in vars(klass):
            func = vars(klass)[name]
            return types.MethodType(func, inst) if inspect.isfunction(func) else None
    return None


def fresh_instance(cls: type, name: str, initial_config: dict[str, Any]) -> Any:
    """A new, loaded instance that shares no mutable data with its class or with another
    instance: loaded from copies of the config, deep-copied afterwards (an `__init__` may
    alias class-level data), and class-level mutable attributes shadowed by instance copies
    (a method may mutate `self.X` where X lives on the class)."""
    inst = cls()
    inst._load_scenario(copy.deepcopy(initial_config.get(name, {})))
    inst._load_scenario(copy.deepcopy(initial_config.get("BaseApi", {})))
    inst = copy.deepcopy(inst)
    for klass in type(inst).__mro__[:-1]:
        for attr, value in vars(klass).items():
            if not attr.startswith("_") and isinstance(value, (list, dict, set)) and attr not in vars(inst):
                setattr(inst, attr, copy.deepcopy(value))
    return inst


def scenario_class(checkout: str, category: str, name: str) -> type:
    """The checkout's class `name` for the category's tree (its module imported once)."""
    path = _class_file(Path(checkout), category, name, f"task class {name}")
    cls = getattr(_module(checkout, str(path)), name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{path} defines no class {name}")
    return cls


@functools.cache
def _module(checkout: str, path: str) -> types.ModuleType:
    """Import one scenario file by its path (cached: modules are shared, instances never are)."""
    name = "_acebench_" + hashlib.sha1(path.encode()).hexdigest()[:12] + "_" + Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.path.insert(0, checkout)
    # Importing would write __pycache__ folders into the user's checkout.
    write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = write_bytecode
        sys.path.remove(checkout)
        for added in set(sys.modules) - before:
            if added.split(".")[0] == "model_inference":
                del sys.modules[added]
    return module


# JSON-schema types of ACEBench's docs → the Python types a value may have.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "int": (int,),
    "number": (int, float),
    "float": (int, float),
    "boolean": (bool,),
    "bool": (bool,),
    "list": (list,),
    "array": (list,),
    "tuple": (list,),
    "dict": (dict,),
    "object": (dict,),
}


def check_arguments(doc: dict[str, Any], args: Any) -> str | None:
    """Why the arguments do not fit the doc (required, unknown, basic type), or None. A type
    the table does not know is not checked; an optional argument may be null (= left out)."""
    problem = argument_problem(args)
    if problem is not None:
        return problem
    params = doc.get("parameters") or {}
    props = params.get("properties") or {}
    required = params.get("required") or []
    missing = [p for p in required if p not in args]
    if missing:
        return f"missing required argument '{missing[0]}'"
    for k, v in args.items():
        if k not in props:
            return f"unknown argument '{k}'"
        want = _TYPES.get(str(props[k].get("type")))
        if want is None or (v is None and k not in required):
            continue
        if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
            return f"argument '{k}' must be of type {props[k]['type']}, not {type(v).__name__}"
    return None


def _text(result: Any) -> str:
    """The observation, fixed now: a later call cannot change it through a shared object."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result)
    except (TypeError, ValueError, RecursionError):
        return str(result)


def _error(message: str) -> str:
    return json.dumps({"error": message})


# --- the simulated user (multi_turn) ----------------------------------------------------------


class Chat(Protocol):
    """The LLM behind the user: `toolrl.models.llm.HFChat` or `OpenAIChat`."""

    def chat(self, messages: list[dict[str, str]]) -> str: ...


_RULES = [
    "Write one line per message, as the user would.",
    "Give the task step by step: only what the current step needs, never the whole instruction at once.",
    "Never make up anything the instruction does not say; if the agent asks for it, say you do not "
    "know or do not have it.",
    "Use your own words instead of repeating the instruction, and keep the personality it describes.",
    f"When everything the instruction asks for is done, reply with the single line '{FINISH}'.",
]
_DOMAIN_RULES = {
    "phone": [
        "When a step needs details (a reminder's title, description and time, say), give all of them.",
        "When the agent asks whether you need more help, check that every task of the instruction is "
        "done; if one is not, ask for it.",
        "The names in the instruction are full user names.",
        "When the agent asks which message to delete, answer as the instruction says.",
        "Do not offer the agent help; answer its questions as the instruction says.",
    ],
    "travel": [
        "Confirm something only if the instruction says you would.",
        "If the instruction asks for a round-trip flight, say at the start that you want to book a round trip.",
    ],
}


def user_prompt(instruction: str, classes: list[str]) -> str:
    """The simulator's system prompt: ACEBench's rules for its user, in our words (the phone
    rules where BaseApi is involved, else the travel rules, as ACEBench chooses)."""
    domain = "phone" if "BaseApi" in classes or "Travel" not in classes else "travel"
    rules = "\n".join(f"- {r}" for r in _RULES + _DOMAIN_RULES[domain])
    return f"You are a user talking to an agent.\n\nInstruction: {instruction}\n\nRules:\n{rules}\n"


class SimulatedUser:
    """ACEBench's multi_turn user for one conversation: an LLM given the task's instruction,
    which sees the agent's messages as the other side of its chat and says FINISH when done."""

    def __init__(self, llm: Chat, instruction: str, classes: list[str]):
        self._llm = llm
        self._history = [
            {"role": "system", "content": user_prompt(instruction, classes)},
            {"role": "user", "content": GREETING},
        ]
        self._opening: str | None = None

    def opening(self) -> str:
        if self._opening is None:
            self._opening = self._say()
        return self._opening

    def reply(self, message: str) -> str | None:
        self._history.append({"role": "user", "content": message})
        said = self._say()
        return None if FINISH in said.lower() else said

    def _say(self) -> str:
        said = self._llm.chat(self._history)
        self._history.append({"role": "assistant", "content": said})
        return said


class SimulatedUsers:
    """Hands each ACEBench multi_turn episode a fresh SimulatedUser; the LLM is shared."""

    def __init__(self, llm: Chat):
        self.llm = llm

    def __call__(self, task: Task) -> SimulatedUser | None:
        if task.backend != "acebench" or "multi_turn" not in task.features:
            return None
        return SimulatedUser(self.llm, task.turns[0].question, task.init["involved_classes"])


def make_user(cfg: ACEBenchConfig) -> SimulatedUsers | None:
    """The users of the multi_turn episodes (None without `cfg.user`: load_tasks then leaves
    those tasks out). The LLM is built here, once, so a bad path or key fails before any episode."""
    if cfg.user is None:
        return None
    from toolrl.models.llm import HFChat, OpenAIChat

    where = "world.bfcl.acebench.user"
    if cfg.user.kind == "hf":
        return SimulatedUsers(HFChat(cfg.user, where))
    if cfg.user.kind == "openai":
        return SimulatedUsers(OpenAIChat(cfg.user, where))
    raise ValueError(f"{where}.kind: a simulated user needs an LLM (hf or openai), got '{cfg.user.kind}'")


class ACEBench(Backend):
    """ACEBench's English agent tasks from a user checkout: only as BFCL's content_ood."""

    name = "acebench"
    summary = "ACEBench agent tasks from a checkout (world.bfcl.acebench): BFCL's content_ood"
    standalone = False
    settings = "world.bfcl.acebench"

    @classmethod
    def make_env(cls, task: Task) -> ACEBenchEnv:
        return ACEBenchEnv(task)

    @classmethod
    def users(cls, world: WorldConfig) -> SimulatedUsers | None:
        return make_user(world.bfcl.acebench)
