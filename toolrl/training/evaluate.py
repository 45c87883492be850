"""Greedy evaluation on the splits: per-task records and the success rate."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from toolrl import plugins
from toolrl.config import Config, RolloutConfig
from toolrl.core import rollout
from toolrl.core.diagnostics import ForbidPatterns, Pattern
from toolrl.envs.base import Task
from toolrl.envs.data import read_tasks
from toolrl.formats import Format, get_format

log = logging.getLogger(__name__)


def split_source(cfg: Config, split: str) -> tuple[str, str]:
    """(task file stem, call syntax) of an evaluation split: format_ood is the id tasks in the
    other syntax; content_ood is held-out domains in the training syntax."""
    return {
        "id": ("id", cfg.world.train_format),
        "format_ood": ("id", cfg.world.ood_format),
        "content_ood": ("content_ood", cfg.world.train_format),
    }[split]


def run(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    fmt: Format,
    cfg: RolloutConfig,
    forbid: ForbidPatterns | None = None,
    users: rollout.Users | None = None,
) -> dict[str, Any]:
    rollouts = rollout.run(model, tokenizer, tasks, fmt, cfg, sample=False, forbid=forbid, users=users)
    records = [r.episode.summary() for r in rollouts]
    n = len(records)
    return {
        "format": fmt.name,
        "n": n,
        "success_rate": sum(r["success"] for r in records) / n,
        "format_error_rate": sum(r["format_errors"] > 0 for r in records) / n,
        "tasks": records,
    }


def run_split(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: Config,
    split: str,
    tasks: list[Task],
    mode: str | None = None,
    patterns: Sequence[Pattern] = (),
) -> dict[str, Any]:
    """The greedy evaluation; on `diagnostics.restore_splits` also the restoration probe: the same
    evaluation with the patterns the run's own collapse showed (`mode` and `patterns`, read from
    its train log) masked out, which tells a model that lost the skill from one whose skill is only
    hidden behind a control-token spike. A run that showed none (not collapsed, a content
    collapse, the base model) keeps its own rate: a mask of nothing changes no greedy token."""
    _, fmt_name = split_source(cfg, split)
    fmt = get_format(fmt_name, cfg.world.prompt_style)
    # Simulated users (ACEBench's multi_turn), built before any episode: a bad key fails here.
    backends = plugins.backends()
    users = next((u for b in sorted({t.backend for t in tasks}) if (u := backends[b].users(cfg.world))), None)
    result = {"split": split, **run(model, tokenizer, tasks, fmt, cfg.rollout, users=users)}
    if split in cfg.diagnostics.restore_splits:
        # A pattern of a token this tokenizer splits (SmolLM2's `<tool_call>`) cannot be masked.
        vocab = tokenizer.get_vocab()
        maskable = [p for p in patterns if all(t in vocab for t in p.spelled_in)]
        for p in patterns:
            if p not in maskable:
                log.warning("restoration: '%s' is not maskable, a token of it is not one token here", p.name)
        patterns = maskable
        restored = result
        if patterns:
            restored = run(model, tokenizer, tasks, fmt, cfg.rollout, ForbidPatterns(tokenizer, patterns), users)
        result["restored"] = {
            "mode": mode,
            "patterns": [p.name for p in patterns],
            "probed": bool(patterns),
            **{k: restored[k] for k in ("success_rate", "format_error_rate", "n")},
        }
    return result


def run_splits(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: Config,
    splits: Sequence[str],
    data: Path,
    mode: str | None = None,
    patterns: Sequence[Pattern] = (),
) -> Iterator[dict[str, Any]]:
    """`run_split` on each of `splits` in turn, one model for all: a job per split spent half its
    time starting Python and loading the model. Every task file is read before the first split
    runs (id and format_ood share one), so a damaged one stops the job before hours of
    evaluation. Each result carries its split's own `seconds`, and is yielded as soon as it is
    done, for the caller to write."""
    stems = {split: split_source(cfg, split)[0] for split in splits}
    tasks = {stem: read_tasks(data / f"{stem}.jsonl") for stem in dict.fromkeys(stems.values())}
    for split in splits:
        t0 = time.perf_counter()
        result = run_split(model, tokenizer, cfg, split, tasks[stems[split]], mode, patterns)
        yield {**result, "seconds": round(time.perf_counter() - t0, 1)}
