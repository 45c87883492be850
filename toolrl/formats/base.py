"""The contract between a call syntax and the rollout: render for prompts and experts, parse
model output without ever evaluating it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from toolrl.envs.base import Call


@dataclass
class Parsed:
    """A model message, read.

    `calls` are the well-formed calls found. `error` is set when the message tried to call a tool
    and failed (the rollout answers with an error observation and counts a format error).
    `extra_text` is set when calls were found but the message also holds other text."""

    calls: list[Call] = field(default_factory=list)
    error: str | None = None
    extra_text: bool = False

    @property
    def is_answer(self) -> bool:
        """A message with no call attempt ends the user turn."""
        return not self.calls and self.error is None


class Format:
    name = ""
    # The text that opens a call in this syntax: its presence means the model attempted a call.
    call_marker = ""

    def __init__(self, style: str = "compact"):
        if style not in ("compact", "full"):
            raise ValueError(f"unknown tool-section style '{style}' (choose from compact, full)")
        self.style = style

    def render_tools(self, schemas: list[dict[str, Any]]) -> str:
        if self.style == "compact":
            sigs = " ".join(f"{s['name']}({','.join(s['parameters']['properties'])})" for s in schemas)
            return f"Tools: {sigs}\nFormat: {self.name}"
        # One JSON doc per line, as the authors' BFCL prompts have them.
        docs = "\n".join(json.dumps(s) for s in schemas)
        return self.full_preamble(docs)

    def full_preamble(self, docs: str) -> str:
        raise NotImplementedError

    def render_calls(self, calls: list[Call]) -> str:
        raise NotImplementedError

    def parse(self, text: str) -> Parsed:
        raise NotImplementedError
