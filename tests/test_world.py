from __future__ import annotations

import json
import random

import pytest

from toolrl.config import WorldConfig
from toolrl.core.episode import Episode, expert_messages
from toolrl.envs.base import Call, Task
from toolrl.envs.data import make_splits
from toolrl.envs.synthetic import DOMAINS, Bank, make_task, signature, validation_split
from toolrl.formats import get_format


def test_splits_are_deterministic(world):
    a, b = make_splits(world), make_splits(world)
    assert {k: [t.to_json() for t in v] for k, v in a.items()} == {k: [t.to_json() for t in v] for k, v in b.items()}
    other = make_splits(WorldConfig(**{**world.__dict__, "seed": world.seed + 1}))
    assert [t.to_json() for t in other["id"]] != [t.to_json() for t in a["id"]]


def test_eval_tasks_are_held_out(splits, world):
    seen = {signature(t) for t in splits["warmup"] + splits["rl"]}
    for split in ("id", "content_ood"):
        assert not seen & {signature(t) for t in splits[split]}
    assert {t.domain for t in splits["rl"] + splits["id"]} <= set(world.train_domains)
    assert {t.domain for t in splits["content_ood"]} <= set(world.ood_domains)
    assert set(world.ood_domains) <= {t.domain for t in splits["warmup"]}  # warm-up covers them


def test_validation_split_is_apart_from_every_other(splits, world):
    """Where the knob search chooses (scripts/organism_search.py): training domains, no task that
    any split has, the same tasks every time."""
    taken = [t for v in splits.values() for t in v]
    val = validation_split(world, 32, taken)
    assert len(val) == 32 and {t.domain for t in val} <= set(world.train_domains)
    assert not {signature(t) for t in taken} & {signature(t) for t in val}
    assert [t.to_json() for t in validation_split(world, 32, taken)] == [t.to_json() for t in val]


def test_task_shape(splits):
    for t in splits["warmup"]:
        assert 1 <= len(t.turns) <= 6
        for turn in t.turns:
            assert len(turn.calls) <= 2
    features = {f for t in splits["warmup"] for f in t.features}
    assert features == {"chain", "ask_back"}


def test_tasks_round_trip_through_json(splits):
    for t in splits["id"]:
        assert Task.from_json(json.loads(json.dumps(t.to_json()))) == t


@pytest.mark.parametrize("fmt_name", ["json", "python"])
def test_expert_trajectories_pass_the_checker(splits, fmt_name):
    fmt = get_format(fmt_name)
    for t in splits["warmup"][:300] + splits["content_ood"]:
        expert_messages(t, fmt)  # raises if the checker rejects it


def _play(task: Task, messages: list[str]) -> Episode:
    ep = Episode(task, get_format("json"))
    for m in messages:
        if ep.done:
            break
        ep.step(m)
    return ep


def _task(rng_seed: int = 0, **kw) -> Task:
    return make_task(random.Random(rng_seed), "t", "bank", [1], [1], **kw)


def test_checker_rejects_a_wrong_value():
    t = _task()
    call = t.turns[0].calls[0]
    wrong = dict(call.arguments)
    key = next(iter(wrong))
    wrong[key] = 9 if wrong[key] != 9 else 8
    fmt = get_format("json")
    ep = _play(t, [fmt.render_calls([Call(call.name, wrong)]), "Done."])
    assert ep.done and not ep.success


def test_checker_rejects_no_call_and_unfinished_episodes():
    t = _task()
    assert not _play(t, ["Done."]).success
    ep = _play(t, [get_format("json").render_calls(t.turns[0].calls)])
    assert not ep.done and not ep.success


def test_chained_value_must_come_from_the_lookup():
    t = make_task(random.Random(3), "t", "bank", [1], [1], chain_prob=1.0)
    lookup, action = t.turns[0].rounds
    fmt = get_format("json")
    assert _play(t, [fmt.render_calls(lookup), fmt.render_calls(action), "Done."]).success
    # Guessing the value without the lookup changes the same state but misses the lookup's result.
    assert not _play(t, [fmt.render_calls(action), "Done."]).success


def test_ask_back_turn_must_not_call():
    t = make_task(random.Random(4), "t", "bank", [1], [1], ask_back_prob=1.0)
    ask, answer = t.turns
    assert not ask.calls
    fmt = get_format("json")
    good = [ask.reply, fmt.render_calls(answer.calls), "Done."]
    assert _play(t, good).success
    eager = [fmt.render_calls(answer.calls), "Done.", fmt.render_calls(answer.calls), "Done."]
    assert not _play(t, eager).success


def test_malformed_call_is_an_error_observation_and_counted():
    t = _task()
    ep = Episode(t, get_format("json"))
    replies = ep.step("<tool_call>\n{oops\n</tool_call>")
    assert ep.format_errors == 1 and replies[0]["role"] == "tool" and "error" in json.loads(replies[0]["content"])
    assert ep.states == ["text_pollution"]


@pytest.mark.parametrize("name", ["_tool_transfer", "__init__", "state", "execute", "schemas", "sent", "nope"])
def test_only_declared_tools_dispatch(name):
    env = Bank({"bills": {}, "free_day": "monday", "playlist": "Echo", "birthdays": {}})
    before = env.state()
    out = json.loads(env.execute(Call(name, {"amount": 1, "to": "Ben"})))
    assert "unknown tool" in out["error"] and env.state() == before


@pytest.mark.parametrize(
    "args",
    [
        {"amount": 5},
        {"amount": 5, "to": "Ben", "x": 1},
        {"amount": "5", "to": "Ben"},
        {"amount": 50, "to": "Ben"},
        {"amount": True, "to": "Ben"},
        {"amount": 5, "to": "Zed"},
        [5, "Ben"],
    ],
)
def test_arguments_are_checked_against_the_schema(args):
    env = DOMAINS["bank"]({})
    out = json.loads(env.execute(Call("transfer", args)))
    assert "error" in out and env.state()["sent"] == {}


def test_state_is_per_instance():
    init = {"bills": {}, "free_day": "monday", "playlist": "Echo", "birthdays": {}}
    a, b = Bank(init), Bank(init)
    a.execute(Call("transfer", {"amount": 5, "to": "Ben"}))
    assert b.state()["sent"] == {}
