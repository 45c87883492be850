"""Tool-call syntaxes: each renders the tool section and expert calls, and parses model messages."""

from __future__ import annotations

from toolrl.formats.base import Format, Parsed
from toolrl.formats.python_list import PythonList
from toolrl.formats.qwen_json import QwenJson

FORMATS: dict[str, type[Format]] = {"json": QwenJson, "python": PythonList}


def get_format(name: str, style: str = "compact") -> Format:
    """`style` is "compact" (one line of signatures: cheap for the tiny model) or "full"
    (JSON-schema docs, as a real model's tool prompt has them)."""
    if name not in FORMATS:
        raise ValueError(f"unknown format '{name}' (choose from {', '.join(FORMATS)})")
    return FORMATS[name](style)


__all__ = ["FORMATS", "Format", "Parsed", "get_format"]
