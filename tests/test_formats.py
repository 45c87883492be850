from __future__ import annotations

import pytest

from toolrl.envs.base import Call
from toolrl.formats import get_format

CALLS = [Call("transfer", {"amount": 5, "to": "Ben"}), Call("lock_door", {"door": "front"})]


@pytest.mark.parametrize("name", ["json", "python"])
@pytest.mark.parametrize("n", [1, 2])
def test_render_parse_round_trip(name, n):
    fmt = get_format(name)
    parsed = fmt.parse(fmt.render_calls(CALLS[:n]))
    assert parsed.calls == CALLS[:n]
    assert parsed.error is None and not parsed.extra_text and not parsed.is_answer


@pytest.mark.parametrize("name", ["json", "python"])
def test_plain_text_is_an_answer(name):
    parsed = get_format(name).parse("Done.")
    assert parsed.is_answer and parsed.calls == []


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>",  # the collapse pattern: an opened call, then end of message
        '<tool_call>\n{"name": "transfer"',
        "</tool_call>",
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\n[1, 2]\n</tool_call>",
        '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "x", "arguments": [1]}\n</tool_call>',
        "<tool_call>\n" + "[" * 100000 + "\n</tool_call>",
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call><tool_call>',
    ],
)
def test_json_malformed_is_an_error_not_an_exception(text):
    parsed = get_format("json").parse(text)
    assert parsed.error and not parsed.calls


def test_json_text_around_calls_is_flagged():
    fmt = get_format("json")
    parsed = fmt.parse("Sure! " + fmt.render_calls(CALLS[:1]))
    assert parsed.calls == CALLS[:1] and parsed.extra_text


@pytest.mark.parametrize(
    "text",
    [
        "[",
        "[transfer(amount=5, to='Ben')",
        "[]",
        "[1, 2]",
        "[transfer(5, 'Ben')]",
        "[os.system(cmd='ls')]",
        "[transfer(**{'amount': 5})]",
        "[transfer(amount=__import__('os').system('echo pwned'))]",
        "[transfer(amount=open('/etc/passwd').read())]",
        "[transfer(amount=(lambda: 1)())]",
        "[" * 100000,
    ],
)
def test_python_malformed_is_an_error_and_never_evaluated(text, capfd):
    parsed = get_format("python").parse(text)
    assert parsed.error and not parsed.calls
    assert "pwned" not in capfd.readouterr().out


def test_python_literals_only():
    parsed = get_format("python").parse("[f(a=[1, 2], b={'k': None}, c=-3)]")
    assert parsed.calls == [Call("f", {"a": [1, 2], "b": {"k": None}, "c": -3})]


@pytest.mark.parametrize("name", ["json", "python"])
@pytest.mark.parametrize("style", ["compact", "full"])
def test_tool_section_names_every_tool(name, style):
    from toolrl.envs.synthetic import Bank

    text = get_format(name, style).render_tools(Bank.SCHEMAS)
    assert all(s["name"] in text for s in Bank.SCHEMAS)


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        get_format("xml")
