"""Tool backends. Each task names its backend; the episode asks for a fresh environment here."""

from __future__ import annotations

from toolrl.envs.base import Task, ToolEnv

BACKENDS = ("synthetic", "bfcl", "acebench")


def make_env(task: Task) -> ToolEnv:
    """A fresh environment for one episode. Backends are imported on first use, so the synthetic
    default never imports bfcl-eval and a missing optional package is named when it is needed."""
    if task.backend == "synthetic":
        from toolrl.envs import synthetic

        return synthetic.make_env(task)
    if task.backend == "bfcl":
        from toolrl.envs import bfcl

        return bfcl.BFCLEnv(task)
    if task.backend == "acebench":
        from toolrl.envs import acebench

        return acebench.ACEBenchEnv(task)
    raise ValueError(f"task {task.id}: unknown backend '{task.backend}' (choose from {', '.join(BACKENDS)})")
