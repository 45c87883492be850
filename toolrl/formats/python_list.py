"""A Python-call list, `[cd(folder='docs'), ls()]`, read with `ast` (never evaluated)."""

from __future__ import annotations

import ast

from toolrl.envs.base import Call
from toolrl.formats.base import Format, Parsed


class PythonList(Format):
    name = "python"
    call_marker = "["

    def full_preamble(self, docs: str) -> str:
        return (
            "You can call these functions:\n"
            f"{docs}\n\n"
            "To call functions, reply with only a Python list of calls with keyword arguments, e.g. "
            "[func_name1(param=value), func_name2(param=value)]"
        )

    def render_calls(self, calls: list[Call]) -> str:
        return (
            "["
            + ", ".join(f"{c.name}(" + ", ".join(f"{k}={v!r}" for k, v in c.arguments.items()) + ")" for c in calls)
            + "]"
        )

    def parse(self, text: str) -> Parsed:
        body = text.strip()
        if not body.startswith("["):
            return Parsed()
        try:
            tree = ast.parse(body, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return Parsed(error="the call list is not valid Python syntax")
        node = tree.body
        if not isinstance(node, ast.List) or not node.elts:
            return Parsed(error="expected a non-empty list of calls")
        calls = []
        for el in node.elts:
            if not isinstance(el, ast.Call) or not isinstance(el.func, ast.Name):
                return Parsed(error="each list item must be a call like name(arg=value)")
            if el.args:
                return Parsed(error=f"{el.func.id}: use keyword arguments only")
            args = {}
            for kw in el.keywords:
                if kw.arg is None:
                    return Parsed(error=f"{el.func.id}: ** arguments are not allowed")
                try:
                    args[kw.arg] = ast.literal_eval(kw.value)
                except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                    return Parsed(error=f"{el.func.id}: argument {kw.arg} is not a literal")
            calls.append(Call(el.func.id, args))
        return Parsed(calls=calls)
