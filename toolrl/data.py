"""Task splits and supervised examples, all derived deterministically from the world config.

For the synthetic world (for BFCL see `toolrl.envs.bfcl.make_splits`), splits: `warmup` (all domains: pre-training stands in for what a real model already knows), `rl`
(training domains only: RL and every supervisory signal see only these), `id` (held-out tasks of
the training domains) and `content_ood` (held-out tasks of domains RL never sees). An evaluation
task is held out when no training task has the same user messages.
"""

from __future__ import annotations

import random
from pathlib import Path

from toolrl.config import WorldConfig
from toolrl.envs.base import Task
from toolrl.envs.synthetic import VALUES, make_task, signature
from toolrl.io import read_jsonl, write_jsonl

SPLIT_FILES = ("warmup", "rl", "id", "content_ood")
_FILLER = ["the", "a", "to", "please", "now", "for", "my", "and", "then", "with",
           "it", "so", "on", "at", "just", "one", "more", "that", "this", "ok"]


def _tasks(cfg: WorldConfig, split: str, domains: list[str], n: int, exclude: set[tuple[str, ...]]) -> list[Task]:
    rng = random.Random(f"{cfg.seed}:{split}")
    out: list[Task] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"world: cannot draw {n} distinct held-out '{split}' tasks; lower world.n_eval_tasks")
        t = make_task(rng, f"{split}-{len(out):05d}", rng.choice(domains), cfg.turns_choices, cfg.calls_choices,
                      cfg.chain_prob, cfg.ask_back_prob)
        if signature(t) in exclude:
            continue
        if split in ("id", "content_ood"):
            exclude.add(signature(t))  # no duplicates inside an eval split either
        out.append(t)
    return out


def make_splits(cfg: WorldConfig) -> dict[str, list[Task]]:
    if cfg.backend == "bfcl":
        return _bfcl_splits(cfg)
    warmup = _tasks(cfg, "warmup", cfg.train_domains + cfg.ood_domains, cfg.n_warmup_tasks, set())
    rl = _tasks(cfg, "rl", cfg.train_domains, cfg.n_rl_tasks, set())
    seen = {signature(t) for t in warmup + rl}
    return {
        "warmup": warmup,
        "rl": rl,
        "id": _tasks(cfg, "id", cfg.train_domains, cfg.n_eval_tasks, set(seen)),
        "content_ood": _tasks(cfg, "content_ood", cfg.ood_domains, cfg.n_eval_tasks, set(seen)),
    }


def _bfcl_splits(cfg: WorldConfig) -> dict[str, list[Task]]:
    """The paper's BFCL split; the warm-up (SFT before RL, if any) sees the training tasks only,
    and content_ood is ACEBench where a checkout is given."""
    from toolrl.envs import bfcl

    b = cfg.bfcl
    splits = bfcl.make_splits(b.train_categories, b.test_categories, b.split_seed, b.n_train, b.n_test,
                              b.held_out_classes)
    if b.acebench.path is not None:
        from toolrl.envs import acebench

        splits["content_ood"] = acebench.load_tasks(b.acebench)
    return {"warmup": splits["rl"], **splits}


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
