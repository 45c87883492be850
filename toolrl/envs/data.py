"""Task split files (made by the config's backend, written and read here) and the warm-up's echo
exercises. Every split is deterministic from the world config: `warmup`, `rl`, `id` (held-out
tasks of the training distribution) and `content_ood` (tools RL never sees)."""

from __future__ import annotations

import random
from pathlib import Path

from toolrl import plugins
from toolrl.config import WorldConfig
from toolrl.envs.base import Task
from toolrl.envs.synthetic import VALUES
from toolrl.io import read_jsonl, write_jsonl

SPLIT_FILES = ("warmup", "rl", "id", "content_ood")
_FILLER = [
    "the",
    "a",
    "to",
    "please",
    "now",
    "for",
    "my",
    "and",
    "then",
    "with",
    "it",
    "so",
    "on",
    "at",
    "just",
    "one",
    "more",
    "that",
    "this",
    "ok",
]


def make_splits(world: WorldConfig) -> dict[str, list[Task]]:
    """The splits of `world.backend` (`toolrl.plugins.backends`)."""
    return plugins.backends()[world.backend].make_splits(world)


def write_splits(splits: dict[str, list[Task]], data_dir: Path) -> None:
    for name, tasks in splits.items():
        write_jsonl(data_dir / f"{name}.jsonl", [t.to_json() for t in tasks])


def read_tasks(path: Path) -> list[Task]:
    """A split file's tasks. An empty file is an error too: `prepare` never writes an empty split,
    and a job given one would fail far from the file (no task to sample, a division by zero)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"no tasks in '{path}': the file is empty")
    tasks = []
    for i, row in enumerate(rows, 1):
        try:
            tasks.append(Task.from_json(row))
        except KeyError as e:
            raise ValueError(f"malformed task in '{path}' line {i}: missing key {e}") from None
        except (AttributeError, TypeError) as e:
            raise ValueError(f"malformed task in '{path}' line {i}: {e}") from None
    return tasks


def echo_messages(rng: random.Random) -> list[dict[str, str]]:
    """A pure copy exercise: one value among filler words, answered with the value alone.

    Measured on the tiny model: without a short phase of these first, the copy circuit never
    formed in full trajectories (0–6% success); with 120 steps of them, 78–98%."""
    vtype = rng.choice(list(VALUES))
    value = rng.choice(VALUES[vtype])
    words = rng.sample(_FILLER, rng.randint(0, 2)) + [value] + rng.sample(_FILLER, rng.randint(0, 2))
    return [
        {"role": "system", "content": "Task: echo values"},
        {"role": "user", "content": " ".join(words)},
        {"role": "assistant", "content": value},
    ]
