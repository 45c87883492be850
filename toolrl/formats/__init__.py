"""Tool-call syntaxes: each renders the tool section and expert calls, and parses model messages.
A module here with a `Format` subclass that has a `name` is a syntax; other packages add theirs
through the `toolrl.formats` entry-point group."""

from __future__ import annotations

from toolrl import plugins
from toolrl.formats.base import Format, Parsed

FORMATS: dict[str, type[Format]] = plugins.formats()


def get_format(name: str, style: str = "compact") -> Format:
    """`style` is "compact" (one line of signatures: cheap for the tiny model) or "full"
    (JSON-schema docs, as a real model's tool prompt has them)."""
    if name not in FORMATS:
        raise ValueError(f"unknown format '{name}' (choose from {', '.join(FORMATS)})")
    return FORMATS[name](style)


__all__ = ["FORMATS", "Format", "Parsed", "get_format"]
