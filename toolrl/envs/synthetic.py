"""The synthetic tool world: four small stateful domains and a procedural task generator.

It is built to be learnable by a ~1 M-parameter model on CPU (measured in
`shared/reference/tiny-model.md`, Addendum 2): every argument value comes from a small typed pool
of values that the tokenizer keeps as single tokens, and user phrasings name the values in
signature order, so "copy the value" is a one-token lookup once the model can copy at all.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from toolrl.config import check
from toolrl.envs.base import Call, Task, Turn
from toolrl.plugins import Backend

if TYPE_CHECKING:
    from toolrl.config import Config, WorldConfig

VALUES: dict[str, list[str]] = {
    "person": ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn"],
    "company": ["Acme", "Zeta", "Orion"],
    "card": ["visa", "amex", "debit"],
    "event": ["yoga", "lunch", "dentist", "gym"],
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday"],
    "room": ["kitchen", "bedroom", "garage", "office"],
    "door": ["front", "back", "side"],
    "song": ["Echo", "Halo", "Fever"],
    "int": [str(i) for i in range(1, 10)],
}
VALUE_TOKENS: list[str] = [v for pool in VALUES.values() for v in pool if not v.isdigit()] + VALUES["int"]


def _schema(name: str, description: str, params: dict[str, str]) -> dict[str, Any]:
    """A JSON-schema tool doc; `params` maps argument → value type (a key of VALUES)."""
    props = {
        p: ({"type": "integer", "minimum": 1, "maximum": 9} if t == "int" else {"type": "string", "enum": VALUES[t]})
        for p, t in params.items()
    }
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": props, "required": list(params)},
    }


class Domain:
    """A stateful tool class. Public tools are exactly the `SCHEMAS`; `execute` checks a call
    against its schema before dispatching, so model output can never reach anything else."""

    name = ""
    SCHEMAS: ClassVar[list[dict[str, Any]]] = []
    cumulative_responses = False

    def __init__(self, init: dict[str, Any]):
        self._init = copy.deepcopy(init)
        self._tools: dict[str, Callable[..., dict[str, Any]]] = {
            s["name"]: getattr(self, "_tool_" + s["name"]) for s in self.SCHEMAS
        }

    def schemas(self) -> list[dict[str, Any]]:
        return self.SCHEMAS

    def execute(self, call: Call) -> str:
        schema = next((s for s in self.SCHEMAS if s["name"] == call.name), None)
        if schema is None:
            return json.dumps({"error": f"unknown tool {call.name}"})
        error = check_arguments(schema, call.arguments)
        if error:
            return json.dumps({"error": error})
        return json.dumps(self._tools[call.name](**call.arguments))

    def state(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_")}

    def begin_turn(self, index: int) -> None:
        """Every tool is visible from the start in this world."""


def check_arguments(schema: dict[str, Any], args: Any) -> str | None:
    """A small JSON-schema check (object of enum strings / bounded ints): why not jsonschema?
    It is a hot path of every rollout step and these four rules are the whole schema language used."""
    if not isinstance(args, dict):
        return "arguments must be an object"
    props = schema["parameters"]["properties"]
    missing = [p for p in schema["parameters"]["required"] if p not in args]
    if missing:
        return f"missing argument {missing[0]}"
    for k, v in args.items():
        spec = props.get(k)
        if spec is None:
            return f"unexpected argument {k}"
        if spec["type"] == "integer":
            if not isinstance(v, int) or isinstance(v, bool) or not spec["minimum"] <= v <= spec["maximum"]:
                return f"bad value for {k}"
        elif not isinstance(v, str) or v not in spec["enum"]:
            return f"bad value for {k}"
    return None


class Bank(Domain):
    name = "bank"
    SCHEMAS: ClassVar[list[dict[str, Any]]] = [
        _schema("transfer", "Send money to a person.", {"amount": "int", "to": "person"}),
        _schema("pay_bill", "Pay a company's bill.", {"biller": "company", "amount": "int"}),
        _schema("freeze_card", "Freeze a card.", {"card": "card"}),
        _schema("get_bill", "Look up what is owed to a company.", {"biller": "company"}),
    ]

    def __init__(self, init: dict[str, Any]):
        super().__init__(init)
        self.sent: dict[str, int] = {}
        self.paid: dict[str, int] = {}
        self.frozen: list[str] = []

    def _tool_transfer(self, amount: int, to: str) -> dict[str, Any]:
        self.sent[to] = self.sent.get(to, 0) + amount
        return {"status": "ok"}

    def _tool_pay_bill(self, biller: str, amount: int) -> dict[str, Any]:
        self.paid[biller] = self.paid.get(biller, 0) + amount
        return {"status": "ok"}

    def _tool_freeze_card(self, card: str) -> dict[str, Any]:
        if card not in self.frozen:
            self.frozen = sorted(self.frozen + [card])
        return {"status": "ok"}

    def _tool_get_bill(self, biller: str) -> dict[str, Any]:
        return {"amount": self._init["bills"][biller]}


class Calendar(Domain):
    name = "calendar"
    SCHEMAS: ClassVar[list[dict[str, Any]]] = [
        _schema("add_event", "Add an event on a day.", {"title": "event", "day": "day"}),
        _schema("cancel_event", "Cancel an event.", {"title": "event"}),
        _schema("set_reminder", "Remind before an event.", {"title": "event", "minutes": "int"}),
        _schema("next_free_day", "Find the next day without events.", {}),
    ]

    def __init__(self, init: dict[str, Any]):
        super().__init__(init)
        self.events: dict[str, str] = {}
        self.cancelled: list[str] = []
        self.reminders: dict[str, int] = {}

    def _tool_add_event(self, title: str, day: str) -> dict[str, Any]:
        self.events[title] = day
        return {"status": "ok"}

    def _tool_cancel_event(self, title: str) -> dict[str, Any]:
        self.events.pop(title, None)
        if title not in self.cancelled:
            self.cancelled = sorted(self.cancelled + [title])
        return {"status": "ok"}

    def _tool_set_reminder(self, title: str, minutes: int) -> dict[str, Any]:
        self.reminders[title] = minutes
        return {"status": "ok"}

    def _tool_next_free_day(self) -> dict[str, Any]:
        return {"day": self._init["free_day"]}


class Home(Domain):
    name = "home"
    SCHEMAS: ClassVar[list[dict[str, Any]]] = [
        _schema("set_light", "Set the light level of a room.", {"room": "room", "level": "int"}),
        _schema("lock_door", "Lock a door.", {"door": "door"}),
        _schema("play_music", "Play a song in a room.", {"song": "song", "room": "room"}),
        _schema("get_playlist", "Look up the song on the playlist.", {}),
    ]

    def __init__(self, init: dict[str, Any]):
        super().__init__(init)
        self.lights: dict[str, int] = {}
        self.locked: list[str] = []
        self.playing: dict[str, str] = {}

    def _tool_set_light(self, room: str, level: int) -> dict[str, Any]:
        self.lights[room] = level
        return {"status": "ok"}

    def _tool_lock_door(self, door: str) -> dict[str, Any]:
        if door not in self.locked:
            self.locked = sorted(self.locked + [door])
        return {"status": "ok"}

    def _tool_play_music(self, song: str, room: str) -> dict[str, Any]:
        self.playing[room] = song
        return {"status": "ok"}

    def _tool_get_playlist(self) -> dict[str, Any]:
        return {"song": self._init["playlist"]}


class Social(Domain):
    name = "social"
    SCHEMAS: ClassVar[list[dict[str, Any]]] = [
        _schema("call", "Call a friend.", {"friend": "person"}),
        _schema("invite", "Invite a friend on a day.", {"friend": "person", "day": "day"}),
        _schema("gift", "Send a friend a gift.", {"friend": "person", "price": "int"}),
        _schema("birthday_of", "Look up a friend's birthday.", {"friend": "person"}),
    ]

    def __init__(self, init: dict[str, Any]):
        super().__init__(init)
        self.called: list[str] = []
        self.invited: dict[str, str] = {}
        self.gifts: dict[str, int] = {}

    def _tool_call(self, friend: str) -> dict[str, Any]:
        if friend not in self.called:
            self.called = sorted(self.called + [friend])
        return {"status": "ok"}

    def _tool_invite(self, friend: str, day: str) -> dict[str, Any]:
        self.invited[friend] = day
        return {"status": "ok"}

    def _tool_gift(self, friend: str, price: int) -> dict[str, Any]:
        self.gifts[friend] = self.gifts.get(friend, 0) + price
        return {"status": "ok"}

    def _tool_birthday_of(self, friend: str) -> dict[str, Any]:
        return {"day": self._init["birthdays"][friend]}


DOMAINS: dict[str, type[Domain]] = {d.name: d for d in (Bank, Calendar, Home, Social)}

# Phrasings per action tool: the values appear in signature order; "{x}" fills argument x.
PHRASES: dict[str, list[str]] = {
    "transfer": ["send {amount} dollars to {to}", "transfer {amount} to {to}"],
    "pay_bill": ["pay my {biller} bill of {amount}", "pay the {biller} bill of {amount}"],
    "freeze_card": ["freeze card {card}", "block card {card}"],
    "add_event": ["add {title} on {day}", "put {title} on {day}"],
    "cancel_event": ["cancel {title}", "drop {title} from my calendar"],
    "set_reminder": [
        "remind me of {title} {minutes} minutes before",
        "set a reminder for {title} {minutes} minutes ahead",
    ],
    "set_light": ["set the light in {room} to {level}", "dim {room} to {level}"],
    "lock_door": ["lock door {door}", "please lock door {door}"],
    "play_music": ["play {song} in {room}", "put on {song} in {room}"],
    "call": ["call {friend}", "phone {friend}"],
    "invite": ["invite {friend} on {day}", "ask {friend} over on {day}"],
    "gift": ["send {friend} a gift of {price}", "buy {friend} a present for {price}"],
}
# Chained requests: the lookup tool's result supplies one argument of the action.
CHAINS: dict[str, tuple[str, str, str, str]] = {
    # domain: (lookup tool, action tool, argument taken from the result, phrase)
    "bank": ("get_bill", "pay_bill", "amount", "pay what I owe {biller}"),
    "calendar": ("next_free_day", "add_event", "day", "add {title} on my next free day"),
    "home": ("get_playlist", "play_music", "song", "play my playlist song in {room}"),
    "social": ("birthday_of", "invite", "day", "invite {friend} on their birthday"),
}
# Ask-back requests: one argument is left out; the assistant asks for it, the user supplies it.
ASK_PHRASES: dict[str, str] = {
    "transfer": "send some money to {to}",
    "pay_bill": "pay my {biller} bill",
    "add_event": "add {title} to my calendar",
    "set_reminder": "remind me of {title}",
    "set_light": "change the light in {room}",
    "play_music": "play something in {room}",
    "invite": "invite {friend}",
    "gift": "send {friend} a gift",
}
ASK_MISSING: dict[str, str] = {
    "transfer": "amount",
    "pay_bill": "amount",
    "add_event": "day",
    "set_reminder": "minutes",
    "set_light": "level",
    "play_music": "song",
    "invite": "day",
    "gift": "price",
}


def _params(schema: dict[str, Any]) -> dict[str, str]:
    """argument → value type, recovered from the schema."""
    out = {}
    for p, spec in schema["parameters"]["properties"].items():
        out[p] = "int" if spec["type"] == "integer" else next(t for t, vs in VALUES.items() if vs == spec["enum"])
    return out


def _value(rng: random.Random, vtype: str) -> Any:
    v = rng.choice(VALUES[vtype])
    return int(v) if vtype == "int" else v


def _init_state(rng: random.Random) -> dict[str, Any]:
    """The hidden facts the lookup tools reveal (BFCL's `initial_config` in miniature)."""
    return {
        "bills": {c: _value(rng, "int") for c in VALUES["company"]},
        "free_day": _value(rng, "day"),
        "playlist": _value(rng, "song"),
        "birthdays": {p: _value(rng, "day") for p in VALUES["person"]},
    }


def _action_schemas(domain: str) -> list[dict[str, Any]]:
    return [s for s in DOMAINS[domain].SCHEMAS if s["name"] in PHRASES]


def make_task(
    rng: random.Random,
    task_id: str,
    domain: str,
    turns_choices: list[int],
    calls_choices: list[int],
    chain_prob: float = 0.0,
    ask_back_prob: float = 0.0,
) -> Task:
    init = _init_state(rng)
    turns: list[Turn] = []
    features: list[str] = []
    for _ in range(rng.choice(turns_choices)):
        roll = rng.random()
        if roll < chain_prob:
            lookup, action, arg, phrase = CHAINS[domain]
            schema = next(s for s in _action_schemas(domain) if s["name"] == action)
            args = {p: _value(rng, t) for p, t in _params(schema).items()}
            lookup_schema = next(s for s in DOMAINS[domain].SCHEMAS if s["name"] == lookup)
            lookup_args = {p: args[p] for p in lookup_schema["parameters"]["properties"]}
            result = json.loads(DOMAINS[domain](init).execute(Call(lookup, lookup_args)))
            args[arg] = result[arg]
            rounds = [[Call(lookup, lookup_args)], [Call(action, args)]]
            turns.append(Turn(phrase.format(**args), rounds))
            features.append("chain")
        elif roll < chain_prob + ask_back_prob:
            schema = rng.choice([s for s in _action_schemas(domain) if s["name"] in ASK_PHRASES])
            name = schema["name"]
            args = {p: _value(rng, t) for p, t in _params(schema).items()}
            missing = ASK_MISSING[name]
            turns.append(Turn(ASK_PHRASES[name].format(**args), [], reply=f"Which {missing}?"))
            turns.append(Turn(f"{missing} {args[missing]}", [[Call(name, args)]]))
            features.append("ask_back")
        else:
            n_calls = rng.choice(calls_choices)
            schemas = rng.sample(_action_schemas(domain), n_calls)
            calls = [Call(s["name"], {p: _value(rng, t) for p, t in _params(s).items()}) for s in schemas]
            parts = [rng.choice(PHRASES[c.name]).format(**c.arguments) for c in calls]
            question = " and ".join(parts)
            if rng.random() < 0.3:
                question = "please " + question
            turns.append(Turn(question, [calls]))
    return Task(task_id, domain, init, turns, sorted(set(features)))


def signature(task: Task) -> tuple[str, ...]:
    """The user's words: an evaluation task is held out only if no training task says the same."""
    return tuple(t.question for t in task.turns)


def make_env(task: Task) -> Domain:
    return DOMAINS[task.domain](task.init)


def _tasks(cfg: WorldConfig, split: str, domains: list[str], n: int, exclude: set[tuple[str, ...]]) -> list[Task]:
    rng = random.Random(f"{cfg.seed}:{split}")
    out: list[Task] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"world: cannot draw {n} distinct held-out '{split}' tasks; lower world.n_eval_tasks")
        t = make_task(
            rng,
            f"{split}-{len(out):05d}",
            rng.choice(domains),
            cfg.turns_choices,
            cfg.calls_choices,
            cfg.chain_prob,
            cfg.ask_back_prob,
        )
        if signature(t) in exclude:
            continue
        if split in ("id", "content_ood"):
            exclude.add(signature(t))  # no duplicates inside an eval split either
        out.append(t)
    return out


def make_splits(cfg: WorldConfig) -> dict[str, list[Task]]:
    """`warmup` (all domains: pre-training stands in for what a real model already knows), `rl`
    (training domains only: RL and every supervisory signal see only these), `id` (held-out tasks
    of the training domains) and `content_ood` (held-out tasks of domains RL never sees). An
    evaluation task is held out when no training task has the same user messages."""
    warmup = _tasks(cfg, "warmup", cfg.train_domains + cfg.ood_domains, cfg.n_warmup_tasks, set())
    rl = _tasks(cfg, "rl", cfg.train_domains, cfg.n_rl_tasks, set())
    seen = {signature(t) for t in warmup + rl}
    return {
        "warmup": warmup,
        "rl": rl,
        "id": _tasks(cfg, "id", cfg.train_domains, cfg.n_eval_tasks, set(seen)),
        "content_ood": _tasks(cfg, "content_ood", cfg.ood_domains, cfg.n_eval_tasks, set(seen)),
    }


def validation_split(cfg: WorldConfig, n: int, taken: list[Task]) -> list[Task]:
    """Held-out tasks of the training domains that no split in `taken` has: where hyper-parameters
    are chosen (scripts/organism_search.py), so the test splits the tables report stay unseen."""
    return _tasks(cfg, "val", cfg.train_domains, n, {signature(t) for t in taken})


class Synthetic(Backend):
    name = "synthetic"
    summary = "the embedded world: four stateful domains, tasks generated from world.seed"

    @classmethod
    def validate(cls, cfg: Config) -> None:
        w = cfg.world
        for key, doms in (("world.train_domains", w.train_domains), ("world.ood_domains", w.ood_domains)):
            check(len(doms) > 0, key, "must not be empty")
            for d in doms:
                check(d in DOMAINS, key, f"unknown domain '{d}' (choose from {', '.join(DOMAINS)})")
        check(not set(w.train_domains) & set(w.ood_domains), "world.ood_domains", "overlaps world.train_domains")

    @classmethod
    def rl_task_count(cls, world: WorldConfig) -> int:
        return world.n_rl_tasks

    @classmethod
    def make_splits(cls, world: WorldConfig) -> dict[str, list[Task]]:
        return make_splits(world)

    @classmethod
    def make_env(cls, task: Task) -> Domain:
        return make_env(task)
