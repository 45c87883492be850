"""Vanilla GRPO: no supervision, the arm every signal is read against."""

from toolrl.plugins import Signal


class Vanilla(Signal):
    name = "none"
    summary = "vanilla GRPO: no supervision"
    schemes = ("rl",)
