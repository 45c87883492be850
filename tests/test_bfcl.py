"""The BFCL backend: the paper's split, ground-truth replay, the checker against BFCL's own
checker functions, and the traps the package sets (positional ground truth, shared class data,
withheld functions)."""

from __future__ import annotations

import copy
import random

import pytest

pytest.importorskip("bfcl_eval")

from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import response_checker, state_checker

from toolrl.core.episode import Episode, expert_messages
from toolrl.envs import bfcl
from toolrl.envs.base import Call, Task
from toolrl.formats import get_format

JSON = get_format("json", "full")
PYTHON = get_format("python", "full")

# The authors' train indices (shared/reference/bfcl-eval.md §7).
PAPER_TRAIN = sorted(
    [
        0,
        2,
        3,
        5,
        10,
        12,
        13,
        14,
        15,
        16,
        18,
        19,
        27,
        30,
        32,
        33,
        36,
        37,
        38,
        42,
        43,
        44,
        45,
        46,
        47,
        51,
        52,
        54,
        60,
        61,
        63,
        64,
        65,
        66,
        69,
        72,
        73,
        76,
        78,
        79,
        80,
        83,
        84,
        85,
        95,
        *range(100, 107),
        *range(109, 114),
        115,
        118,
        121,
        122,
        123,
        125,
        126,
        128,
        130,
        133,
        135,
        136,
        140,
        142,
        144,
        145,
        146,
        148,
        153,
        155,
        156,
        *range(158, 163),
        165,
        167,
        170,
        171,
        172,
        175,
        176,
        177,
        179,
        184,
        186,
        187,
        *range(192, 197),
    ]
)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Task]]:
    return bfcl.make_splits(["base", "miss_param", "miss_func"], list(bfcl.CATEGORIES), 42, 100, 100, [])


def _task(task_id: str) -> Task:
    cat, i = task_id.removeprefix("multi_turn_").rsplit("_", 1)
    return bfcl.to_task(*bfcl.load_category(cat)[int(i)], cat)


def play(task: Task, turns: list[list[Call]], irrelevance_check: bool = True) -> Episode:
    """Each call as its own message, then the turn's answer."""
    ep = Episode(task, JSON, 50, irrelevance_check)
    for turn, calls in zip(task.turns, turns, strict=True):
        for c in calls:
            ep.step(JSON.render_calls([c]))
        ep.step(turn.reply)
    return ep


def test_split_is_the_papers(splits):
    train, test = bfcl.split_indices(42)
    assert len(PAPER_TRAIN) == 100 and sorted(train) == PAPER_TRAIN
    assert sorted(train + test) == list(range(200))
    assert len(splits["rl"]) == 300 and len(splits["id"]) == 400 and splits["content_ood"] == []
    rl_idx = {int(t.id.rsplit("_", 1)[1]) for t in splits["rl"]}
    assert rl_idx == set(PAPER_TRAIN)
    assert {t.domain for t in splits["rl"]} == {"base", "miss_param", "miss_func"}
    assert {t.domain for t in splits["id"]} == set(bfcl.CATEGORIES)


def test_ground_truth_scores_100_percent(splits):
    """Every train and test task's ground truth, played through our execution and checker in
    both syntaxes, passes (expert_messages raises when the checker rejects it)."""
    for task in splits["rl"] + splits["id"]:
        expert_messages(task, JSON)
    for task in splits["id"][::10]:
        expert_messages(task, PYTHON)


def test_dropping_any_call_scores_zero(splits):
    for task in splits["rl"] + splits["id"]:
        gt = [t.calls for t in task.turns]
        for k, calls in enumerate(gt):
            if calls:
                wrong = [list(c) for c in gt]
                wrong[k] = wrong[k][:-1]
                assert not play(task, wrong).success, (task.id, k)


def _oracle_turns(task: Task, turns: list[list[Call]]) -> list[bool]:
    """BFCL's own state and response checkers, run on our instances (they are pure functions
    of instances and result strings; the package's full checker needs eval, ours does not)."""
    model, gt = bfcl.BFCLEnv(task), bfcl.BFCLEnv(task)
    results: list[str] = []
    verdicts = []
    for k, (turn, calls) in enumerate(zip(task.turns, turns, strict=True)):
        model.begin_turn(k)
        gt.begin_turn(k)
        results += [model.execute(c) for c in calls]
        gt_results = [gt.execute(c) for c in turn.calls]
        if not turn.calls:
            verdicts.append(not calls)
            continue
        verdicts.append(
            bool(calls)
            and state_checker(model._instances, gt._instances)["valid"]
            and response_checker(results, gt_results, k)["valid"]
        )
    return verdicts


def _mutate(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + value[:1]
    return None


def test_checker_agrees_with_bfcl_on_wrong_arguments(splits):
    """A changed argument is not always wrong (`ls(a=False)` lists the same files when none is
    hidden): whatever BFCL's checker says, ours says, turn by turn."""
    rng = random.Random(0)
    caught = n = 0
    for task in rng.sample(splits["id"], 120):
        gt = [t.calls for t in task.turns]
        for k, calls in enumerate(gt):
            c = calls[-1] if calls else None
            if c is None or not c.arguments:
                continue
            key = rng.choice(list(c.arguments))
            new = _mutate(c.arguments[key])
            if new is None:
                continue
            wrong = [list(x) for x in gt]
            wrong[k][-1] = Call(c.name, {**c.arguments, key: new})
            ours = play(task, wrong).turn_ok
            assert ours == _oracle_turns(task, wrong), (task.id, k, c, key)
            n += 1
            caught += not all(ours)
    assert n > 100 and caught / n > 0.8


def test_positional_ground_truth_is_bound_by_signature():
    owner = bfcl._owner(["TravelAPI", "GorillaFileSystem"])
    assert bfcl.gt_call("sort('final_report.pdf')", owner) == Call("sort", {"file_name": "final_report.pdf"})
    # The doc lists insurance_cost before booking_id; the signature has booking_id first.
    doc = next(d for d in bfcl.class_docs("TravelAPI") if d["name"] == "purchase_insurance")
    props = list(doc["parameters"]["properties"])
    assert props.index("insurance_cost") < props.index("booking_id")
    call = bfcl.gt_call("purchase_insurance('tok', 'basic', 'b1', 50.0, 'card')", owner)
    assert call.arguments == {
        "access_token": "tok",
        "insurance_type": "basic",
        "booking_id": "b1",
        "insurance_cost": 50.0,
        "card_id": "card",
    }
    n_positional = sum(
        bool(bfcl.parse_call_string(s)[1]) for _, gt in bfcl.load_category("base") for t in gt for s in t
    )
    assert n_positional == 40


def test_long_context_travel_purchase_does_not_leak_into_the_next_episode():
    """_load_scenario(long_context=True) puts module-level card data into the instance by
    reference; a purchase in one episode must not change the next one's balance."""
    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code import long_context

    task = next(
        t
        for t in (bfcl.to_task(q, gt, "long_context") for q, gt in bfcl.load_category("long_context"))
        if "TravelAPI" in t.init["involved_classes"]
    )
    before = copy.deepcopy(long_context.CREDIT_CARD_EXTENSION)
    env = bfcl.BFCLEnv(task)
    travel = env._instances["TravelAPI"]
    card = next(iter(long_context.CREDIT_CARD_EXTENSION))
    assert card in travel.credit_card_list
    travel.credit_card_list[card]["balance"] -= 200.0  # what a booking does
    assert before == long_context.CREDIT_CARD_EXTENSION
    assert bfcl.BFCLEnv(task).state()["TravelAPI"]["credit_card_list"][card] == before[card]


def test_every_episode_starts_fresh():
    """The package caches instances per (model, task) in module globals; two episodes of the
    same task here start from the same state: mkdir twice succeeds twice."""
    task = next(
        t
        for t in (bfcl.to_task(q, gt, "base") for q, gt in bfcl.load_category("base"))
        if t.init["involved_classes"] == ["GorillaFileSystem"]
    )
    outs = [bfcl.BFCLEnv(task).execute(Call("mkdir", {"dir_name": "zz_new"})) for _ in range(2)]
    assert outs[0] == outs[1] and "error" not in outs[0].lower()


def test_withheld_function_is_unavailable_until_revealed():
    task = _task("multi_turn_miss_func_0")
    ((k, names),) = task.init["hidden"].items()
    name = names[0]
    env = bfcl.BFCLEnv(task)
    assert name not in {d["name"] for d in env.schemas()}
    doc = next(d for c in task.init["involved_classes"] for d in bfcl.class_docs(c) if d["name"] == name)
    args = {p: "x" for p in doc["parameters"].get("required", [])}
    assert "no function named" in env.execute(Call(name, args))
    env.begin_turn(int(k))
    assert name in {d["name"] for d in env.schemas()}
    assert "no function named" not in env.execute(Call(name, args))
    # The reveal turn shows the withheld docs, and the tool section at the start does not.
    assert name in task.turns[int(k)].question and bfcl.REVEAL in task.turns[int(k)].question
    assert name not in Episode(task, JSON).initial_messages()[0]["content"]


def test_withheld_function_used_early_by_the_ground_truth_stays_visible():
    """miss_func_49's ground truth calls `tail` at turn 1, before the turn that reveals it."""
    task = _task("multi_turn_miss_func_49")
    assert "tail" not in [n for names in task.init["hidden"].values() for n in names]
    expert_messages(task, JSON)


def test_irrelevance_check_on_empty_ground_truth_turns():
    task = _task("multi_turn_miss_param_0")
    k = next(i for i, t in enumerate(task.turns) if not t.calls)
    later = next(c for t in task.turns[k + 1 :] for c in t.calls)
    turns = [t.calls for t in task.turns]
    turns[k] = [later]  # acts on the request without the missing parameter
    strict, loose = play(task, turns, True), play(task, turns, False)
    assert not strict.turn_ok[k] and loose.turn_ok[k]


def test_tool_exception_becomes_an_observation():
    task = _task("multi_turn_base_0")
    env = bfcl.BFCLEnv(task)
    name = next(iter(env._methods))

    def broken(**kwargs):
        raise RuntimeError("disk on fire")

    env._methods[name] = broken
    doc = env._docs[name]
    args = {p: "x" for p in doc["parameters"].get("required", [])}
    out = env.execute(Call(name, args))
    assert out.startswith("Error during execution") and "disk on fire" in out


@pytest.mark.parametrize(
    "args, error",
    [
        ({"a": "yes"}, "must be of type boolean"),
        ({"b": True}, "unexpected argument"),
        ({"a": 1}, "must be of type boolean"),
    ],
)
def test_arguments_are_checked_against_the_doc(args, error):
    task = _task("multi_turn_base_0")
    env = bfcl.BFCLEnv(task)
    before = repr(env.state())
    assert error in env.execute(Call("ls", args))
    assert repr(env.state()) == before


def test_costly_and_non_finite_numbers_are_refused():
    doc = next(d for d in bfcl.class_docs("MathAPI") if d["name"] == "logarithm")
    assert bfcl.check_arguments(doc, {"value": 10.0, "base": 2.0, "precision": 10})[1] is None
    assert "at most" in bfcl.check_arguments(doc, {"value": 10.0, "base": 2.0, "precision": 100_000})[1]
    power = next(d for d in bfcl.class_docs("MathAPI") if d["name"] == "power")
    assert "out of range" in bfcl.check_arguments(power, {"base": float("inf"), "exponent": 2})[1]
    args, err = bfcl.check_arguments(power, {"base": 10**9, "exponent": 10**9})
    assert err is None and isinstance(args["base"], float)  # a float power overflows at once


@pytest.mark.parametrize(
    "text",
    [
        "[ls(a={(): 1})]",  # a key JSON cannot encode
        "[ls(a={1, 2})]",  # a set
        "[ls(a=b'x')]",  # bytes
        "[ls(a=" + "[" * 900 + "]" * 900 + ")]",  # nesting that parses but does not re-encode
        '<tool_call>\n{"name": "ls", "arguments": {"a": ' + "[" * 900 + "]" * 900 + "}}\n</tool_call>",
    ],
)
def test_arguments_json_cannot_hold_are_refused_not_raised(text):
    task = _task("multi_turn_base_0")
    fmt = PYTHON if text.startswith("[") else JSON
    ep = Episode(task, fmt)
    replies = ep.step(text)
    assert replies and ("error" in replies[0]["content"].lower())


def test_an_episode_has_a_call_budget():
    env = bfcl.BFCLEnv(_task("multi_turn_base_0"))
    outs = [env.execute(Call("pwd", {})) for _ in range(bfcl.MAX_CALLS_PER_EPISODE + 1)]
    assert "error" not in outs[-2] and "used its" in outs[-1]


def test_a_call_that_runs_too_long_becomes_an_error(monkeypatch):
    """Legal calls can be costly (BFCL's shallow `cp` lets a few dozen calls build a tree whose
    `du()` takes minutes): a call past the time limit is interrupted."""
    from toolrl.envs import base

    monkeypatch.setattr(base, "TOOL_SECONDS", 0.2)
    env = bfcl.BFCLEnv(_task("multi_turn_base_0"))

    def forever(**kwargs):
        while True:
            pass

    env._methods["du"] = forever
    out = env.execute(Call("du", {}))
    assert out.startswith("Error during execution") and "longer than" in out
    assert "error" not in env.execute(Call("pwd", {})).lower()  # the alarm is off again


def test_a_tool_that_floods_is_cut_for_the_model_but_checked_in_full(monkeypatch):
    """A tool's output is shown to the model up to MAX_OBSERVATION_CHARS, with a note; the
    checker still compares the full result, so a correct call is not failed by the cut."""
    from toolrl.envs import base

    monkeypatch.setattr(base, "MAX_OBSERVATION_CHARS", 1000)
    task = _task("multi_turn_base_0")
    fmt = get_format("json", "full")
    ep = Episode(task, fmt)
    ep.env._methods["pwd"] = lambda **kw: {"current_working_directory": "x" * 5000}
    shown = ep.step(fmt.render_calls([Call("pwd", {})]))
    assert len(shown) == 1 and shown[0]["role"] == "tool"
    content = shown[0]["content"]
    assert len(content) < 1100 and content.endswith("[output cut: 5,033 characters, the limit is 1,000]")
    assert len(ep._results[0]) == 5033  # what the checker compares
