"""PRS judges: the first deviation of a failed rollout, and the reflections written from it.

Failed trajectories are produced the way a rollout produces them: assistant texts fed through an
`Episode`, which answers with real tool results and the next user questions."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from toolrl.config import JudgeConfig, TinyModelConfig
from toolrl.core import reflect
from toolrl.core.episode import Episode, expert_messages
from toolrl.core.reflect import (
    first_deviation,
    make_judge,
    reflection_example,
    rule_reflection,
)
from toolrl.envs.base import Call, Task, Turn
from toolrl.envs.synthetic import DOMAINS, VALUES
from toolrl.formats import get_format

FORMATS = ["json", "python"]
DOMAINS_INIT = {
    "bills": {"Acme": 3, "Zeta": 4, "Orion": 5},
    "free_day": "monday",
    "playlist": "Echo",
    "birthdays": {p: "friday" for p in VALUES["person"]},
}


def expert_texts(task: Task, fmt) -> list[str]:
    """The expert's assistant messages, in order."""
    out = []
    for t in task.turns:
        out += [fmt.render_calls(r) for r in t.rounds] + [t.reply]
    return out


def play(task: Task, fmt, texts: list[str]) -> tuple[list[dict[str, str]], Episode]:
    """Feed assistant texts to an Episode as a rollout would; stop when it ends or texts run out."""
    ep = Episode(task, fmt)
    messages = ep.initial_messages()
    for text in texts:
        if ep.done:
            break
        messages.append({"role": "assistant", "content": text})
        messages += ep.step(text)
    if not ep.done:
        ep.truncate()
    return messages, ep


def find(tasks: list[Task], pred) -> Task:
    for t in tasks:
        if pred(t):
            return t
    raise AssertionError("no task of the synthetic world fits this test")


def other_value(v: Any) -> Any:
    if isinstance(v, int):
        return v % 9 + 1
    pool = next(p for p in VALUES.values() if v in p)
    return pool[(pool.index(v) + 1) % len(pool)]


def single_call_first_turn(t: Task) -> bool:
    r = t.turns[0].rounds
    return len(r) == 1 and len(r[0]) == 1 and len(r[0][0].arguments) >= 2


@pytest.fixture(params=FORMATS)
def fmt(request):
    return get_format(request.param)


def check_reflection(task, fmt, messages, dev, right: list[Call], wrong_text: str | None) -> str:
    text = rule_reflection(dev)
    assert text == rule_reflection(first_deviation(task, fmt, messages))  # deterministic
    if right:
        assert fmt.render_calls(right) in text
    for c in right:
        for v in c.arguments.values():
            assert str(v) in text
    if wrong_text is not None:
        assert wrong_text in text
    assert f"turn {dev.turn + 1}, step {dev.step + 1}" in text
    assert dev.detail in text
    return text


def test_expert_trajectories_have_no_deviation(splits, fmt):
    for task in splits["rl"] + splits["content_ood"]:
        assert first_deviation(task, fmt, expert_messages(task, fmt)) is None
    # The rule judge has nothing to point out then, and says so.
    task = splits["rl"][0]
    assert "no mistake" in make_judge(JudgeConfig()).reflect(task, fmt, expert_messages(task, fmt))


def test_wrong_argument_value(splits, fmt):
    task = find(splits["rl"], single_call_first_turn)
    right = task.turns[0].rounds[0][0]
    k = next(iter(right.arguments))
    wrong = Call(right.name, {**right.arguments, k: other_value(right.arguments[k])})
    texts = expert_texts(task, fmt)
    texts[0] = fmt.render_calls([wrong])
    messages, ep = play(task, fmt, texts)
    assert not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 0, reflect.WRONG_ARGUMENT)
    assert dev.actual_calls == [wrong] and dev.expected_calls == [right]
    assert f"`{k}`" in dev.detail
    assert str(right.arguments[k]) in dev.detail and str(wrong.arguments[k]) in dev.detail
    check_reflection(task, fmt, messages, dev, [right], texts[0])


def test_missing_and_extra_argument(splits, fmt):
    task = find(splits["rl"], single_call_first_turn)
    right = task.turns[0].rounds[0][0]
    k = list(right.arguments)[-1]
    missing = Call(right.name, {a: v for a, v in right.arguments.items() if a != k})
    extra = Call(right.name, {**right.arguments, "note": "hi"})
    for bad, reason, name in [(missing, reflect.MISSING_ARGUMENT, k), (extra, reflect.EXTRA_ARGUMENT, "note")]:
        texts = expert_texts(task, fmt)
        texts[0] = fmt.render_calls([bad])
        messages, _ = play(task, fmt, texts)
        dev = first_deviation(task, fmt, messages)
        assert (dev.turn, dev.step, dev.reason) == (0, 0, reason)
        assert f"`{name}`" in dev.detail
        check_reflection(task, fmt, messages, dev, [right], texts[0])


def test_wrong_tool_name(splits, fmt):
    task = find(splits["rl"], single_call_first_turn)
    right = task.turns[0].rounds[0][0]
    other = next(s["name"] for s in DOMAINS[task.domain].SCHEMAS if s["name"] != right.name)
    texts = expert_texts(task, fmt)
    texts[0] = fmt.render_calls([Call(other, right.arguments)])
    messages, ep = play(task, fmt, texts)
    assert not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 0, reflect.WRONG_TOOL)
    assert f"`{other}`" in dev.detail and f"`{right.name}`" in dev.detail
    check_reflection(task, fmt, messages, dev, [right], texts[0])


MALFORMED = {
    "json": '<tool_call>\n{"name": "%s", "arguments": {\n</tool_call>',
    "python": "[%s(x=1,",
}


def test_malformed_call(splits, fmt):
    task = find(splits["rl"], single_call_first_turn)
    right = task.turns[0].rounds[0][0]
    texts = expert_texts(task, fmt)
    texts[0] = MALFORMED[fmt.name] % right.name
    messages, ep = play(task, fmt, texts)
    assert ep.format_errors == 1 and not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 0, reflect.MALFORMED)
    assert dev.actual_calls == [] and dev.actual == texts[0]
    assert fmt.parse(texts[0]).error in dev.detail
    check_reflection(task, fmt, messages, dev, [right], texts[0])


def test_answer_instead_of_call(splits, fmt):
    task = find(splits["rl"], lambda t: t.turns[0].rounds)
    texts = ["I have done it."]
    messages, ep = play(task, fmt, texts + expert_texts(task, fmt)[len(task.turns[0].rounds) + 1 :])
    assert not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 0, reflect.ANSWER_INSTEAD_OF_CALL)
    right = task.turns[0].rounds[0]
    assert dev.expected_calls == right and dev.expected == fmt.render_calls(right)
    check_reflection(task, fmt, messages, dev, right, "I have done it.")


def test_call_on_ask_back_turn(splits, fmt):
    task = find(splits["rl"], lambda t: "ask_back" in t.features)
    k = next(i for i, t in enumerate(task.turns) if not t.rounds)
    guess = task.turns[k + 1].rounds[0]  # the call it should make once the user answers
    texts = expert_texts(task, fmt)
    pos = sum(len(t.rounds) + 1 for t in task.turns[:k])
    texts[pos] = fmt.render_calls(guess)
    messages, ep = play(task, fmt, texts)
    assert not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (k, 0, reflect.CALL_INSTEAD_OF_ASK_BACK)
    assert dev.expected == reflect.ANSWER and dev.expected_calls == []
    text = check_reflection(task, fmt, messages, dev, [], texts[pos])
    assert "answer without calling a tool" in text and "ask back" in text
    assert task.turns[k].reply in text  # the expert's question back


def test_call_on_hand_built_ask_back_task(fmt):
    """The same, on a Task built by hand: an ask-back turn as the only turn."""
    task = Task("hand", "bank", DOMAINS_INIT, [Turn("send some money to Ada", [], reply="Which amount?")])
    wrong = fmt.render_calls([Call("transfer", {"amount": 5, "to": "Ada"})])
    messages, ep = play(task, fmt, [wrong, "Which amount?"])
    assert not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 0, reflect.CALL_INSTEAD_OF_ASK_BACK)
    assert first_deviation(task, fmt, play(task, fmt, ["Which amount?"])[0]) is None


def test_call_instead_of_answer(splits, fmt):
    """After the turn's calls, one more call (a changed copy) instead of the answer."""
    for task in filter(single_call_first_turn, splits["rl"]):
        c = task.turns[0].rounds[0][0]
        k = next(iter(c.arguments))
        texts = expert_texts(task, fmt)
        texts.insert(1, fmt.render_calls([Call(c.name, {**c.arguments, k: other_value(c.arguments[k])})]))
        messages, ep = play(task, fmt, texts)
        if not ep.success:  # some extra calls change no state, and the checker lets them pass
            break
    else:
        raise AssertionError("no extra call made an episode fail")
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 1, reflect.CALL_INSTEAD_OF_ANSWER)
    assert dev.expected == reflect.ANSWER


def test_chained_value(splits, fmt):
    task = find(splits["rl"], lambda t: "chain" in t.features)
    k = next(i for i, t in enumerate(task.turns) if len(t.rounds) == 2)
    lookup, right = task.turns[k].rounds[0][0], task.turns[k].rounds[1][0]
    arg = next(a for a, v in right.arguments.items() if str(v) not in task.turns[k].question.split())
    wrong = Call(right.name, {**right.arguments, arg: other_value(right.arguments[arg])})
    texts = expert_texts(task, fmt)
    pos = sum(len(t.rounds) + 1 for t in task.turns[:k]) + 1
    texts[pos] = fmt.render_calls([wrong])
    messages, ep = play(task, fmt, texts)
    assert not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (k, 1, reflect.WRONG_ARGUMENT)
    assert dev.expected_calls == [right]
    assert f"`{lookup.name}`" in dev.detail  # says where the true value comes from
    check_reflection(task, fmt, messages, dev, [right], texts[pos])


def test_later_turn_and_split_round(splits, fmt):
    """A deviation in turn 2 is reported there; a two-call round made over two messages is not
    a deviation (the checker accepts it too)."""
    task = find(
        splits["rl"],
        lambda t: (
            len(t.turns) >= 2
            and len(t.turns[0].rounds) == 1
            and len(t.turns[0].rounds[0]) == 2
            and len(t.turns[1].rounds) == 1
        ),
    )
    a, b = task.turns[0].rounds[0]
    texts = [fmt.render_calls([b]), fmt.render_calls([a])] + expert_texts(task, fmt)[1:]
    messages, ep = play(task, fmt, texts)
    assert ep.success and first_deviation(task, fmt, messages) is None
    texts[3] = "ok"  # turn 2's first message answers instead of calling
    messages, ep = play(task, fmt, texts)
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (1, 0, reflect.ANSWER_INSTEAD_OF_CALL)
    # Only half of a round, then an answer: the owed call is the one shown.
    messages, _ = play(task, fmt, [fmt.render_calls([a]), "Done."])
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (0, 1, reflect.ANSWER_INSTEAD_OF_CALL)
    assert dev.expected_calls == [b] and dev.expected == fmt.render_calls([b])


def test_truncated_trajectory(splits, fmt):
    task = find(splits["rl"], lambda t: len(t.turns) >= 2 and t.turns[1].rounds)
    texts = expert_texts(task, fmt)
    cut = len(task.turns[0].rounds) + 1  # turn 1 done, nothing of turn 2
    messages, ep = play(task, fmt, texts[:cut])
    assert ep.truncated and not ep.success
    dev = first_deviation(task, fmt, messages)
    assert (dev.turn, dev.step, dev.reason) == (1, 0, reflect.STOPPED_EARLY)
    assert dev.actual is None and dev.expected_calls == task.turns[1].rounds[0]
    text = check_reflection(task, fmt, messages, dev, task.turns[1].rounds[0], None)
    assert "stopped" in text


def test_every_failed_rollout_has_a_deviation(splits, fmt):
    """Random single edits of expert trajectories: whenever the checker fails the episode, a
    deviation is found, at or before the edited message."""
    rng = random.Random(0)
    failed = 0
    for task in splits["rl"]:
        texts = expert_texts(task, fmt)
        i = rng.randrange(len(texts))
        parsed = fmt.parse(texts[i])
        edit = rng.choice(["drop", "answer", "value", "garble"])
        if edit == "drop":
            texts = texts[:i]
        elif edit == "answer" or not parsed.calls:
            texts[i] = "ok" if parsed.calls else fmt.render_calls(task.turns[-1].calls or [Call("x", {})])
        elif edit == "value":
            c = parsed.calls[0]
            if c.arguments:
                k = rng.choice(list(c.arguments))
                c = Call(c.name, {**c.arguments, k: other_value(c.arguments[k])})
            else:
                c = Call(rng.choice([s["name"] for s in DOMAINS[task.domain].SCHEMAS if s["name"] != c.name]), {})
            texts[i] = fmt.render_calls([c] + parsed.calls[1:])
        else:
            texts[i] = texts[i][:-3]
        messages, ep = play(task, fmt, texts)
        dev = first_deviation(task, fmt, messages)
        if not ep.success:
            failed += 1
            assert dev is not None, (task.id, edit, texts)
            n_before = sum(1 for m in messages if m["role"] == "assistant")
            assert dev.actual is None or dev.actual in texts[: min(i + 1, n_before)]
    assert failed > len(splits["rl"]) // 2


# --- the openai judge -------------------------------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    status = 200
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        ok = self.headers.get("Authorization") == "Bearer sk-test" and self.path == "/v1/chat/completions"
        code = type(self).status if ok else 401
        out = json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "  The first mistake is X.  "}}]}
        )
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out.encode() if code == 200 else b'{"error": "no"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_url():
    _Stub.status, _Stub.seen = 200, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _failed(splits, fmt):
    task = find(splits["rl"], single_call_first_turn)
    messages, _ = play(task, fmt, ["ok"])
    return task, messages


def test_openai_judge(splits, stub_url, monkeypatch):
    fmt = get_format("json")
    task, messages = _failed(splits, fmt)
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = make_judge(
        JudgeConfig(kind="openai", model="judge-1", url=stub_url + "/", api_key_env="JUDGE_KEY", timeout_s=10)
    )
    assert judge.reflect(task, fmt, messages) == "The first mistake is X."
    (req,) = _Stub.seen
    assert req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    prompt = body["messages"][1]["content"]
    assert fmt.render_calls(task.turns[0].rounds[0]) in prompt  # the ground truth
    assert task.turns[0].question in prompt and messages[0]["content"] in prompt
    assert "Assistant: ok" in prompt


def test_openai_judge_errors(splits, stub_url, monkeypatch):
    fmt = get_format("json")
    task, messages = _failed(splits, fmt)
    monkeypatch.delenv("JUDGE_KEY_UNSET", raising=False)
    with pytest.raises(ValueError, match="JUDGE_KEY_UNSET"):
        make_judge(JudgeConfig(kind="openai", model="m", url=stub_url, api_key_env="JUDGE_KEY_UNSET"))
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    _Stub.status = 500
    judge = make_judge(JudgeConfig(kind="openai", model="m", url=stub_url, api_key_env="JUDGE_KEY", timeout_s=10))
    with pytest.raises(ValueError, match="500") as e:
        judge.reflect(task, fmt, messages)
    assert stub_url + "/chat/completions" in str(e.value)
    with pytest.raises(ValueError, match="kind"):
        make_judge(JudgeConfig(kind="oracle"))


# --- the hf judge -----------------------------------------------------------------------------


def test_hf_judge(splits, tokenizer, tmp_path):
    from toolrl.models.model import build_tiny_model, save

    cfg = TinyModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=4096
    )
    save(build_tiny_model(cfg, tokenizer, seed=0), tokenizer, tmp_path / "judge")
    judge = make_judge(JudgeConfig(kind="hf", model=str(tmp_path / "judge"), max_new_tokens=6))
    fmt = get_format("json")
    task, messages = _failed(splits, fmt)
    calls = []
    generate = judge.model.generate

    def spy(**kw):
        calls.append(kw)
        out = generate(**kw)
        calls[-1]["out"] = out
        return out

    judge.model.generate = spy
    out = judge.reflect(task, fmt, messages)
    assert isinstance(out, str)
    (kw,) = calls
    assert kw["do_sample"] is False and kw["max_new_tokens"] == 6
    prompt = tokenizer.decode(kw["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")  # template
    assert fmt.render_calls(task.turns[0].rounds[0]) in prompt and "Assistant: ok" in prompt
    new = kw["out"][0, kw["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 6
    assert out == tokenizer.decode(new, skip_special_tokens=True).strip()
    longest = max(len(tokenizer.decode([i])) for i in range(len(tokenizer)))
    assert len(out) <= 6 * longest
    assert judge.reflect(task, fmt, messages) == out  # greedy
    with pytest.raises(ValueError, match="no_such_model"):
        make_judge(JudgeConfig(kind="hf", model=str(tmp_path / "no_such_model")))


# --- the SFT example --------------------------------------------------------------------------


def test_reflection_example(splits, tokenizer, fmt):
    task = find(splits["rl"], single_call_first_turn)
    texts = expert_texts(task, fmt)
    texts[0] = MALFORMED[fmt.name] % "x"
    messages, _ = play(task, fmt, texts)
    reflection = make_judge(JudgeConfig()).reflect(task, fmt, messages)
    example = reflection_example(task, fmt, messages, reflection)
    assert [m["role"] for m in example] == ["system", "user", "assistant"]
    assert all(isinstance(m["content"], str) for m in example)
    assert example[0]["content"] == messages[0]["content"] and example[2]["content"] == reflection
    assert "User: " + task.turns[0].question in example[1]["content"]
    assert "Assistant: " + texts[0] in example[1]["content"] and "Tool: " in example[1]["content"]
    rendered = tokenizer.apply_chat_template(example, tokenize=False)
    assert reflection in rendered and messages[0]["content"] in rendered
    assert fmt.render_calls(task.turns[0].rounds[0]) in rendered
    assert "[{'role'" not in rendered and "{'role':" not in rendered and '{"role"' not in rendered
    with pytest.raises(ValueError, match="system"):
        reflection_example(task, fmt, messages[1:], reflection)
