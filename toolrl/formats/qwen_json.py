"""Qwen's function-calling syntax: one `<tool_call>\n{json}\n</tool_call>` block per call."""

from __future__ import annotations

import json
import re

from toolrl.envs.base import Call
from toolrl.formats.base import Format, Parsed

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def _escape_tags(body: str) -> str:
    """A tag inside a JSON string (a name, key or value) would end or open a block early; its `<`
    as the JSON escape \\u003c reads back the same and leaves every other body unchanged."""
    return body.replace("<tool_call>", "\\u003ctool_call>").replace("</tool_call>", "\\u003c/tool_call>")


class QwenJson(Format):
    name = "json"
    call_marker = "<tool_call>"

    def full_preamble(self, docs: str) -> str:
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{docs}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def render_calls(self, calls: list[Call]) -> str:
        return "\n".join(
            "<tool_call>\n" + _escape_tags(json.dumps({"name": c.name, "arguments": c.arguments})) + "\n</tool_call>"
            for c in calls
        )

    def parse(self, text: str) -> Parsed:
        if "<tool_call>" not in text and "</tool_call>" not in text:
            return Parsed()
        blocks = _BLOCK.findall(text)
        rest = _BLOCK.sub("", text)
        if not blocks or "<tool_call>" in rest or "</tool_call>" in rest:
            return Parsed(error="unbalanced <tool_call> tags")
        calls = []
        for body in blocks:
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError) as e:  # ValueError: also an integer past Python's digit limit
                return Parsed(error=f"invalid JSON in tool call: {e.msg if hasattr(e, 'msg') else e}")
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get("name"), str)
                or not isinstance(obj.get("arguments", {}), dict)
            ):
                return Parsed(error='a tool call needs {"name": str, "arguments": object}')
            calls.append(Call(obj["name"], obj.get("arguments", {})))
        return Parsed(calls=calls, extra_text=bool(rest.strip()))
