"""Tool backends. Each task names its backend; the episode asks for a fresh environment here.
A module here with a `toolrl.plugins.Backend` subclass that has a `name` is a backend; other
packages add theirs through the `toolrl.backends` entry-point group."""

from __future__ import annotations

from toolrl import plugins
from toolrl.envs.base import Task, ToolEnv


def make_env(task: Task) -> ToolEnv:
    """A fresh environment for one episode. Optional packages a backend needs (bfcl-eval) are
    imported when its first environment is made, so a missing one is named when it is needed."""
    backends = plugins.backends()
    if task.backend not in backends:
        raise ValueError(f"task {task.id}: unknown backend '{task.backend}' (choose from {', '.join(backends)})")
    return backends[task.backend].make_env(task)
