"""One grid cell's training job: the scheme decides how SFT and RL combine, the signal what
supervision is added (see `config.py` for the meaningful pairs and `grpo.py` for where each
signal enters the GRPO step). `sequential` runs SFT through TRL's SFTTrainer first, then GRPO
with a fresh optimizer, as the paper's SFT→RL baseline does; the other schemes run in one
GRPOTrainer."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

from toolrl import grpo, model as models, sft
from toolrl.config import Cell, Config
from toolrl.data import read_tasks
from toolrl.envs.base import Task
from toolrl.episode import Message, expert_messages
from toolrl.formats import Format, get_format
from toolrl.guards import NonFiniteGuard
from toolrl.warmup import value_token_ids


def reflection_source(cfg: Config, fmt: Format) -> Callable[[Task, list[Message]], list[Message]]:
    """PRS: a failed trajectory → an SFT example whose assistant message is the judge's reflection."""
    from toolrl import reflect

    judge = reflect.make_judge(cfg.signals.prs.judge)

    def example(task: Task, messages: list[Message]) -> list[Message]:
        return reflect.reflection_example(task, fmt, messages, judge.reflect(task, fmt, messages))

    return example


def run(cfg: Config, cell: Cell, base_model: Path, data_dir: Path, out_dir: Path,
        on_step: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    model, tokenizer = models.load(base_model)
    tasks = read_tasks(data_dir / "rl.jsonl")
    fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    values = value_token_ids(tokenizer)
    guard = NonFiniteGuard(cell.path, cfg.numerics.on_nonfinite)
    t0 = time.perf_counter()
    if cell.scheme == "sequential":
        rng = random.Random(f"{cfg.world.seed}:sft:{cell.seed}")
        s = cfg.sft
        examples = sft.curriculum(lambda: expert_messages(rng.choice(tasks), fmt), lambda: [], s.steps,
                                  s.batch_size, seed=cell.seed)
        history = sft.train(model, tokenizer, examples, steps=s.steps, batch_size=s.batch_size,
                            learning_rate=s.learning_rate, warmup_steps=0, value_token_ids=values,
                            value_weight=s.value_weight, seed=cell.seed, log_every=max(1, s.steps // 10),
                            gradient_checkpointing=cfg.model.gradient_checkpointing, callbacks=[guard])
        for h in history:
            if "loss" in h:
                on_step({"phase": "sft", "step": h["step"], "sft_loss": h["loss"]})
    sft_seconds = time.perf_counter() - t0
    offset = cfg.sft.steps if cell.scheme == "sequential" else 0
    judge = reflection_source(cfg, fmt) if cell.signal == "prs" else None
    grpo.train(model, tokenizer, tasks, fmt, cfg, cell.signal, cell.scheme, cell.lr, cell.seed,
               lambda rec: on_step({**rec, "step": offset + rec["step"]}), values, judge, guard)
    models.save(model, tokenizer, out_dir)
    return {"sft_seconds": round(sft_seconds, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
            "skipped_steps": guard.skipped}
