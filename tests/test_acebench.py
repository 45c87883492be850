"""The ACEBench backend on a minimal checkout in ACEBench's real layout (written into tmp_path):
loading, end-state scoring, safe dispatch, fresh state per episode, and the simulated user of
multi_turn tasks (a scripted one, and the openai one against a stub server on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from toolrl.config import ACEBenchConfig, JudgeConfig
from toolrl.core.episode import Episode
from toolrl.envs import make_env
from toolrl.envs.acebench import (
    FINISH,
    GREETING,
    ACEBenchEnv,
    load_tasks,
    make_user,
    merged_ground_truth,
    scenario_class,
)
from toolrl.envs.base import Call, Task
from toolrl.formats import get_format

FMT = get_format("json")

# --- the fixture checkout ---------------------------------------------------------------------

BASE_API = """
class BaseApi:
    def __init__(self):
        self.wifi = False
        self.logged_in = True

    def _load_scenario(self, scenario, long_context=False):
        self.wifi = scenario.get("wifi", False)
        self.logged_in = scenario.get("logged_in", True)

    def turn_on_wifi(self):
        self.wifi = True
        return {"status": True, "message": "Wi-Fi is on"}

    def login_device(self):
        self.logged_in = True
        return {"status": True, "message": "Logged in"}
"""

# Imports its base by package path, as ACEBench's files do; keeps class-level mutable data that
# `__init__` aliases (inbox) and that a method mutates through self (sent_log).
MESSAGE = """
from model_inference.multi_turn.scenariosen.phone_platform.base_api import BaseApi

USERS = {"Eve": "USR100", "Frank": "USR101", "Grace": "USR102"}


class MessageApi(BaseApi):
    DEFAULT_INBOX = {
        1: {"sender_id": "USR100", "receiver_id": "USR101", "message": "Lunch?"},
        2: {"sender_id": "USR101", "receiver_id": "USR100", "message": "Sure."},
    }
    sent_log = []

    def __init__(self):
        super().__init__()
        self.inbox = self.DEFAULT_INBOX
        self.counter = 2

    def _load_scenario(self, scenario, long_context=False):
        self.wifi = scenario.get("wifi", False)
        self.logged_in = scenario.get("logged_in", True)

    def send_message(self, sender_name, receiver_name, message):
        if not self.wifi:
            return {"status": False, "message": "Wi-Fi is off"}
        if sender_name not in USERS or receiver_name not in USERS:
            return {"status": False, "message": "unknown user"}
        self.counter += 1
        self.inbox[self.counter] = {"sender_id": USERS[sender_name], "receiver_id": USERS[receiver_name],
                                    "message": message}
        self.sent_log.append(message)
        return {"status": True, "message": "sent to " + receiver_name}

    def delete_message(self, message_id):
        if message_id not in self.inbox:
            return {"status": False, "message": "no such message"}
        del self.inbox[message_id]
        return {"status": True, "message": "deleted"}

    def wipe_inbox(self):
        self.inbox.clear()
        return "wiped"

    def explode(self):
        raise RuntimeError("the phone caught fire")
"""

REMINDER = """
from model_inference.multi_turn.scenariosen.phone_platform.base_api import BaseApi


class ReminderApi(BaseApi):
    def __init__(self):
        self.reminder_list = {1: {"title": "Dentist", "description": "checkup", "time": "2024-07-15 09:30"}}
        self.next_id = 2

    def _load_scenario(self, scenario, long_context=False):
        self.wifi = scenario.get("wifi", False)
        self.logged_in = scenario.get("logged_in", True)

    def add_reminder(self, title, description, time):
        if not self.logged_in:
            return {"status": False, "message": "not logged in"}
        self.reminder_list[self.next_id] = {"title": title, "description": description, "time": time}
        self.next_id += 1
        return {"status": True, "message": "added " + title}
"""


def _doc(name: str, **params: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} (test)",
        "parameters": {
            "type": "dict",
            "required": list(params),
            "properties": {p: {"type": t, "description": p} for p, t in params.items()},
        },
    }


DOCS = [
    _doc("turn_on_wifi"),
    _doc("login_device"),
    _doc("send_message", sender_name="string", receiver_name="string", message="string"),
    _doc("delete_message", message_id="integer"),
    _doc("explode"),
    _doc("add_reminder", title="string", description="string", time="string"),
    _doc("check_balance", user_name="string"),  # documented, but no class of the fixture has it
]
INBOX = {
    "1": {"sender_id": "USR100", "receiver_id": "USR101", "message": "Lunch?"},
    "2": {"sender_id": "USR101", "receiver_id": "USR100", "message": "Sure."},
}
DENTIST = {"title": "Dentist", "description": "checkup", "time": "2024-07-15 09:30"}
GYM = {"title": "Gym", "description": "leg day", "time": "2024-07-16 18:00"}


def _item(i: int, category: str, question: str, initial: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    return {
        "id": f"agent_{category}_{i}",
        "question": question,
        "initial_config": initial,
        "path": [],
        "function": DOCS,
        "involved_classes": classes,
    }


def _answer(i: int, category: str, truth: list[dict[str, Any]], stones: list[str]) -> dict[str, Any]:
    return {"id": f"agent_{category}_{i}", "ground_truth": truth, "mile_stone": stones}


DATA = {
    "multi_step": (
        [
            _item(
                0,
                "multi_step",
                "I am Eve. Send Frank the message 'See you at 5'.",
                {"BaseApi": {"wifi": False, "logged_in": True}},
                ["BaseApi", "MessageApi"],
            ),
            _item(
                1,
                "multi_step",
                "Add a reminder 'Gym' (leg day) for 2024-07-16 18:00.",
                {"BaseApi": {"wifi": True, "logged_in": False}},
                ["BaseApi", "ReminderApi"],
            ),
        ],
        [
            _answer(
                0,
                "multi_step",
                [
                    {"BaseApi": {"wifi": True, "logged_in": True}},
                    {
                        "MessageApi": {
                            "inbox": {
                                **INBOX,
                                "3": {"sender_id": "USR100", "receiver_id": "USR101", "message": "See you at 5"},
                            }
                        }
                    },
                ],
                [
                    "[turn_on_wifi()]",
                    "[send_message(sender_name='Eve', receiver_name='Frank', message='See you at 5')]",
                ],
            ),
            _answer(
                1,
                "multi_step",
                [  # misspelled class keys, as in ACEBench's own answers
                    {"BaseAPI": {"wifi": True, "logged_in": True}},
                    {"ReminderAPI": {"reminder_list": {"1": DENTIST, "2": GYM}}},
                ],
                ["[login_device()]", "[add_reminder(title='Gym', description='leg day', time='2024-07-16 18:00')]"],
            ),
        ],
    ),
    "multi_turn": (
        [
            _item(
                0,
                "multi_turn",
                "Your name is Grace. You want Frank to know: 'Dinner at 8'.",
                {"BaseApi": {"wifi": True, "logged_in": True}},
                ["BaseApi", "MessageApi"],
            ),
            _item(
                1,
                "multi_turn",
                "You want a reminder 'Gym' (leg day) for 2024-07-16 18:00.",
                {"BaseApi": {"wifi": True, "logged_in": True}},
                ["BaseApi", "ReminderApi"],
            ),
        ],
        [
            _answer(
                0,
                "multi_turn",
                [
                    {"BaseApi": {"wifi": True, "logged_in": True}},
                    {
                        "MessageApi": {
                            "inbox": {
                                **INBOX,
                                "3": {"sender_id": "USR102", "receiver_id": "USR101", "message": "Dinner at 8"},
                            }
                        }
                    },
                ],
                ["[send_message(sender_name='Grace', receiver_name='Frank', message='Dinner at 8')]"],
            ),
            _answer(
                1,
                "multi_turn",
                [
                    {"BaseApi": {"wifi": True, "logged_in": True}},
                    {"Reminderpi": {"reminder_list": {"1": DENTIST, "2": GYM}}},
                ],
                ["[add_reminder(title='Gym', description='leg day', time='2024-07-16 18:00')]"],
            ),
        ],
    ),
}


def write_checkout(root: Path) -> Path:
    """A minimal ACEBench checkout: both scenario trees, the English agent data and answers."""
    for category in ("multi_step", "multi_turn"):
        tree = root / "model_inference" / category / "scenariosen" / "phone_platform"
        tree.mkdir(parents=True)
        for name, source in [("base_api.py", BASE_API), ("message.py", MESSAGE), ("reminder.py", REMINDER)]:
            (tree / name).write_text(source)
        items, answers = DATA[category]
        data = root / "data_all" / "data_en"
        (data / "possible_answer").mkdir(parents=True, exist_ok=True)
        (data / f"data_agent_{category}.json").write_text("".join(json.dumps(x) + "\n" for x in items))
        (data / "possible_answer" / f"data_agent_{category}.json").write_text(
            "".join(json.dumps(x) + "\n" for x in answers)
        )
    return root


@pytest.fixture
def checkout(tmp_path) -> Path:
    return write_checkout(tmp_path / "ACEBench")


def tasks_of(checkout: Path) -> dict[str, Task]:
    tasks = load_tasks(ACEBenchConfig(str(checkout), user=JudgeConfig(kind="openai")))
    return {t.id: t for t in tasks}


def call(name: str, **arguments: Any) -> str:
    return FMT.render_calls([Call(name, arguments)])


def play(task: Task, texts: list[str], user: Any = None) -> Episode:
    ep = Episode(task, FMT, user=user)
    ep.initial_messages()
    for text in texts:
        if ep.done:
            break
        ep.step(text)
    if not ep.done:
        ep.truncate()
    return ep


# --- loading ----------------------------------------------------------------------------------


def test_load_tasks(checkout):
    tasks = tasks_of(checkout)
    assert list(tasks) == ["agent_multi_step_0", "agent_multi_step_1", "agent_multi_turn_0", "agent_multi_turn_1"]
    for t in tasks.values():
        assert (t.domain, t.backend) == ("acebench", "acebench")
        assert t.features == [t.init["category"]] and t.id.startswith(f"agent_{t.init['category']}")
        assert len(t.turns) == 1 and t.turns[0].rounds == []
        assert t.init["checkout"] == str(checkout.resolve()) and t.init["functions"] == DOCS
        assert Task.from_json(json.loads(json.dumps(t.to_json()))) == t  # written to and read from JSONL
    ms1 = tasks["agent_multi_step_1"]
    assert ms1.turns[0].question.startswith("Add a reminder")
    assert ms1.init["initial_config"] == {"BaseApi": {"wifi": True, "logged_in": False}}
    # ground-truth keys that name no involved class are not checked, as in ACEBench
    assert ms1.turns[0].expected_state == {}
    assert set(tasks["agent_multi_turn_1"].turns[0].expected_state) == {"BaseApi"}


def test_multi_turn_skipped_without_user(checkout, caplog):
    with caplog.at_level(logging.WARNING, logger="toolrl.envs.acebench"):
        tasks = load_tasks(ACEBenchConfig(str(checkout)))
    assert [t.id for t in tasks] == ["agent_multi_step_0", "agent_multi_step_1"]
    skipped = [r.getMessage() for r in caplog.records if "simulated user" in r.getMessage()]
    assert len(skipped) == 1 and "multi_turn" in skipped[0]
    assert load_tasks(ACEBenchConfig(str(checkout), categories=["multi_turn"])) == []


def test_misspelled_answer_classes_are_skipped_with_a_warning(caplog):
    classes = ["BaseApi", "MessageApi", "ReminderApi"]
    truth = [{"MessageApi": {"inbox": {}}}, {"ReminderAPI": {"reminder_list": {}}}, {"BaseAPI": {"wifi": True}}]
    with caplog.at_level(logging.WARNING, logger="toolrl.envs.acebench"):
        assert merged_ground_truth(truth, classes, "t") == {"MessageApi": {"inbox": {}}}
    assert {"ReminderAPI", "BaseAPI"} <= {w for r in caplog.records for w in r.getMessage().replace("'", " ").split()}


def test_incomplete_checkout(tmp_path):
    def fresh(name: str) -> Path:
        return write_checkout(tmp_path / name)

    with pytest.raises(ValueError, match="path"):
        load_tasks(ACEBenchConfig(None))
    with pytest.raises(ValueError, match="is not a folder"):
        load_tasks(ACEBenchConfig(str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="multi_hop"):
        load_tasks(ACEBenchConfig(str(fresh("a")), categories=["multi_hop"]))
    root = fresh("b")
    (root / "data_all/data_en/possible_answer/data_agent_multi_step.json").unlink()
    with pytest.raises(ValueError, match=r"possible_answer/data_agent_multi_step\.json is missing"):
        load_tasks(ACEBenchConfig(str(root)))
    root = fresh("c")
    (root / "model_inference/multi_step/scenariosen/phone_platform/reminder.py").unlink()
    with pytest.raises(ValueError, match=r"reminder\.py \(class ReminderApi\) is missing"):
        load_tasks(ACEBenchConfig(str(root)))
    root = fresh("d")
    path = root / "data_all/data_en/data_agent_multi_step.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[1]["initial_config"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"data_agent_multi_step.json:2: the key 'initial_config' is missing"):
        load_tasks(ACEBenchConfig(str(root)))
    root = fresh("e")
    path = root / "data_all/data_en/possible_answer/data_agent_multi_step.json"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="no possible answer for 'agent_multi_step_1'"):
        load_tasks(ACEBenchConfig(str(root)))


# --- playing and scoring ----------------------------------------------------------------------


def test_correct_calls_pass_and_wrong_ones_fail(checkout):
    tasks = tasks_of(checkout)
    task = tasks["agent_multi_step_0"]
    send = call("send_message", sender_name="Eve", receiver_name="Frank", message="See you at 5")
    assert play(task, [call("turn_on_wifi"), send, "Done."]).success
    # turn_on_wifi reaches every instance that has it (MessageApi keeps its own flag)
    env = make_env(task)
    assert isinstance(env, ACEBenchEnv) and not env.state()["MessageApi"]["wifi"]
    env.execute(Call("turn_on_wifi", {}))
    assert env.state()["BaseApi"]["wifi"] and env.state()["MessageApi"]["wifi"]
    assert not play(task, [send, "Done."]).success  # Wi-Fi off: nothing is sent
    assert not play(task, [call("turn_on_wifi"), send.replace("5", "6"), "Done."]).success
    assert not play(task, [call("turn_on_wifi"), send, send, "Done."]).success  # one message too many
    assert not play(task, [call("turn_on_wifi"), "Done."]).success

    task = tasks["agent_multi_step_1"]  # its ground truth spells ReminderAPI and BaseAPI
    gym = dict(title="Gym", description="leg day", time="2024-07-16 18:00")
    assert play(task, [call("login_device"), call("add_reminder", **gym), "Done."]).success
    # the misspelled classes are not checked, as in ACEBench: a wrong reminder passes too
    wrong = call("add_reminder", **{**gym, "time": "2024-07-16 19:00"})
    assert play(task, [call("login_device"), wrong, "Done."]).success


def test_only_documented_calls_with_fitting_arguments_run(checkout):
    task = tasks_of(checkout)["agent_multi_step_0"]
    dunder_docs = DOCS + [_doc("__init__"), _doc("_load_scenario", scenario="dict"), _doc("DEFAULT_INBOX"), _doc("mro")]
    task = Task(task.id, task.domain, {**task.init, "functions": dunder_docs}, task.turns, task.features, task.backend)
    env = ACEBenchEnv(task)
    before = env.state()
    bad = [
        Call("wipe_inbox", {}),  # public, but undocumented
        Call("__init__", {}),
        Call("_load_scenario", {"scenario": {"wifi": True}}),
        Call("__class__", {}),
        Call("DEFAULT_INBOX", {}),
        Call("mro", {}),
        Call("inbox", {}),
        Call("delete_message", {"message_id": "1"}),
        Call("delete_message", {"message_id": True}),
        Call("delete_message", {}),
        Call("delete_message", {"message_id": 1, "force": True}),
        Call("send_message", {"sender_name": "Eve", "receiver_name": "Frank", "message": 5}),
        Call("check_balance", {"user_name": "Eve"}),  # documented, implemented by no involved class
    ]
    for c in bad:
        out = env.execute(c)
        assert isinstance(out, str) and "error" in json.loads(out), c
    assert env.state() == before
    assert "not available" in env.execute(Call("check_balance", {"user_name": "Eve"}))
    assert "unknown argument 'force'" in env.execute(Call("delete_message", {"message_id": 1, "force": True}))
    assert "must be of type integer" in env.execute(Call("delete_message", {"message_id": True}))
    # a tool that raises gives an error observation, and the environment goes on
    assert "the phone caught fire" in json.loads(env.execute(Call("explode", {})))["error"]
    assert json.loads(env.execute(Call("delete_message", {"message_id": 1}))) == {"status": True, "message": "deleted"}
    assert list(env.state()["MessageApi"]["inbox"]) == ["2"]


def test_envs_share_no_state(checkout):
    task = tasks_of(checkout)["agent_multi_step_0"]
    a = ACEBenchEnv(task)
    initial = a.state()
    assert initial["MessageApi"]["inbox"] == INBOX and initial["MessageApi"]["sent_log"] == []
    a.execute(Call("turn_on_wifi", {}))
    a.execute(Call("send_message", {"sender_name": "Eve", "receiver_name": "Frank", "message": "hi"}))
    a.execute(Call("delete_message", {"message_id": 1}))
    assert set(a.state()["MessageApi"]["inbox"]) == {"2", "3"} and a.state()["MessageApi"]["sent_log"] == ["hi"]
    assert ACEBenchEnv(task).state() == initial
    cls = scenario_class(task.init["checkout"], "multi_step", "MessageApi")
    assert set(cls.DEFAULT_INBOX) == {1, 2} and cls.sent_log == []
    assert scenario_class(task.init["checkout"], "multi_step", "MessageApi") is cls  # the module is cached


# --- the simulated user -----------------------------------------------------------------------


class ScriptedUser:
    """Says its lines in order; records what the agent said to it."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        self.heard: list[str] = []
        self.first = self.lines.pop(0)

    def opening(self) -> str:
        return self.first

    def reply(self, message: str) -> str | None:
        self.heard.append(message)
        line = self.lines.pop(0)
        return None if line == FINISH else line


def test_multi_turn_with_a_scripted_user(checkout):
    task = tasks_of(checkout)["agent_multi_turn_0"]
    script = ["Hi, I am Grace. Can you message Frank for me?", "Tell him: Dinner at 8", FINISH]
    send = call("send_message", sender_name="Grace", receiver_name="Frank", message="Dinner at 8")
    user = ScriptedUser(script)
    ep = Episode(task, FMT, user=user)
    assert ep.initial_messages()[1] == {"role": "user", "content": script[0]}
    assert ep.step("What should it say?") == [{"role": "user", "content": script[1]}]
    assert ep.turn_ok == [] and not ep.done  # the user is not finished: the turn stays open
    (obs,) = ep.step(send)
    assert obs["role"] == "tool" and json.loads(obs["content"])["status"] is True
    assert ep.step("Sent!") == []
    assert ep.done and ep.success and user.heard == ["What should it say?", "Sent!"]
    wrong = send.replace("Frank", "Eve")
    assert not play(task, ["What should it say?", wrong, "Sent!"], ScriptedUser(script)).success
    # without a user, the positional signature plays the question as the user's message
    plain = Episode(task, FMT, 4, True)
    assert plain.initial_messages()[1]["content"] == task.turns[0].question and plain.step("ok") == []


class _UserStub(BaseHTTPRequestHandler):
    replies: ClassVar[list[str]] = []
    seen: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"auth": self.headers.get("Authorization"), "body": body})
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            return
        out = {"choices": [{"index": 0, "message": {"role": "assistant", "content": type(self).replies.pop(0)}}]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(out).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def user_url():
    _UserStub.replies, _UserStub.seen, _UserStub.status = [], [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _UserStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_user(checkout, user_url, monkeypatch):
    monkeypatch.setenv("ACE_USER_KEY", "sk-user")
    cfg = ACEBenchConfig(
        str(checkout),
        user=JudgeConfig(kind="openai", model="user-1", url=user_url, api_key_env="ACE_USER_KEY", timeout_s=10),
    )
    tasks = {t.id: t for t in load_tasks(cfg)}
    users = make_user(cfg)
    assert users is not None and users(tasks["agent_multi_step_0"]) is None
    task = tasks["agent_multi_turn_0"]
    opening = "I'm Grace. Please tell Frank: Dinner at 8."
    _UserStub.replies = [opening, "Great, thanks! finish conversation"]
    ep = Episode(task, FMT, user=users(task))
    assert ep.initial_messages()[1]["content"] == opening
    ep.step(call("send_message", sender_name="Grace", receiver_name="Frank", message="Dinner at 8"))
    assert ep.step("Done, Frank has your message.") == []
    assert ep.done and ep.success
    first, second = _UserStub.seen
    assert first["auth"] == "Bearer sk-user"
    assert first["body"]["model"] == "user-1" and first["body"]["temperature"] == 0
    system, greeting = first["body"]["messages"]
    assert system["role"] == "system" and task.turns[0].question in system["content"] and FINISH in system["content"]
    assert greeting == {"role": "user", "content": GREETING}
    assert [m["role"] for m in second["body"]["messages"]] == ["system", "user", "assistant", "user"]
    assert second["body"]["messages"][2]["content"] == opening
    assert second["body"]["messages"][3]["content"] == "Done, Frank has your message."


def test_user_errors(checkout, user_url, monkeypatch):
    assert make_user(ACEBenchConfig(str(checkout))) is None
    with pytest.raises(ValueError, match=r"user\.kind"):
        make_user(ACEBenchConfig(str(checkout), user=JudgeConfig(kind="rule")))
    monkeypatch.delenv("ACE_USER_KEY_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"world\.bfcl\.acebench\.user.*ACE_USER_KEY_UNSET"):
        make_user(
            ACEBenchConfig(
                str(checkout),
                user=JudgeConfig(kind="openai", model="m", url=user_url, api_key_env="ACE_USER_KEY_UNSET"),
            )
        )
    monkeypatch.setenv("ACE_USER_KEY", "sk-user")
    users = make_user(
        ACEBenchConfig(
            str(checkout),
            user=JudgeConfig(kind="openai", model="m", url=user_url, api_key_env="ACE_USER_KEY", timeout_s=10),
        )
    )
    _UserStub.status = 500
    task = tasks_of(checkout)["agent_multi_turn_0"]
    with pytest.raises(ValueError, match=r"user endpoint .* returned HTTP 500"):
        Episode(task, FMT, user=users(task)).initial_messages()


def test_prepare_with_the_paper_preset_writes_the_papers_split(checkout, tmp_path):
    """`python -m toolrl prepare` on the Qwen2.5 preset: 300 train / 400 test BFCL tasks on the
    paper's indices, and content_ood from the ACEBench checkout (multi_step only: no user)."""
    pytest.importorskip("bfcl_eval")
    import yaml
    from omegaconf import OmegaConf

    from toolrl.cli import main
    from toolrl.envs.bfcl import split_indices

    root = Path(__file__).resolve().parents[1]
    merged = OmegaConf.merge(
        OmegaConf.load(root / "config.yaml"),
        OmegaConf.load(root / "config/bfcl-qwen2.5-1.5b.yaml"),
        {"world": {"bfcl": {"acebench": {"path": str(checkout)}}}},
    )
    cfg_path = tmp_path / "paper.yaml"
    cfg_path.write_text(yaml.safe_dump(OmegaConf.to_container(merged)))
    assert main(["prepare", "--config", str(cfg_path), "--out", str(tmp_path / "data")]) == 0
    read = {
        n: [json.loads(line) for line in (tmp_path / "data" / f"{n}.jsonl").read_text().splitlines()]
        for n in ("rl", "id", "content_ood")
    }
    assert len(read["rl"]) == 300 and len(read["id"]) == 400
    train, _ = split_indices(42)
    assert {int(t["id"].rsplit("_", 1)[1]) for t in read["rl"]} == set(train)
    assert read["content_ood"] and {t["backend"] for t in read["content_ood"]} == {"acebench"}
    assert all("multi_step" in t["features"] for t in read["content_ood"])


def test_a_required_name_missing_from_properties_is_warned_and_not_required(checkout, caplog):
    """ACEBench's real data requires, in one Travel function, a name its properties lack: a strict
    check would make that function uncallable. Loading warns once and drops it from `required`."""
    path = checkout / "data_all" / "data_en" / "data_agent_multi_step.json"
    items = [json.loads(line) for line in path.read_text().splitlines()]
    for item in items:
        for doc in item["function"]:
            if doc["name"] == "send_message":
                doc["parameters"]["required"].append("mesage")
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    with caplog.at_level("WARNING"):
        task = tasks_of(checkout)["agent_multi_step_0"]
    typo = [r for r in caplog.records if "'mesage'" in r.getMessage()]
    assert len(typo) == 1 and "send_message" in typo[0].getMessage()  # once, though two tasks list it
    send = call("send_message", sender_name="Eve", receiver_name="Frank", message="See you at 5")
    assert play(task, [call("turn_on_wifi"), send, "Done."]).success
    assert "mesage" in path.read_text()  # the checkout's data are left as they are


def test_the_checkout_is_never_written_to(checkout, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs by default (CI sets it)
    before = sorted(p.relative_to(checkout) for p in checkout.rglob("*"))
    for task in tasks_of(checkout).values():
        play(task, [call("turn_on_wifi")])
    assert sorted(p.relative_to(checkout) for p in checkout.rglob("*")) == before
