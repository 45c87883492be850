"""One grid cell's training job: the scheme decides how SFT and RL combine, the signal what
supervision is added. Implemented pairs: `none` × `rl` (vanilla GRPO) and `sft` × `sequential`
(SFT on expert trajectories of the RL tasks, then GRPO)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

from toolrl import grpo, model as models, sft
from toolrl.config import Cell, Config
from toolrl.data import read_tasks
from toolrl.episode import expert_messages
from toolrl.formats import get_format
from toolrl.warmup import value_token_ids


def run(cfg: Config, cell: Cell, base_model: Path, data_dir: Path, out_dir: Path,
        on_step: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    model, tokenizer = models.load(base_model)
    tasks = read_tasks(data_dir / "rl.jsonl")
    fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    t0 = time.perf_counter()
    if cell.scheme == "sequential":
        rng = random.Random(f"{cfg.world.seed}:sft:{cell.seed}")
        s = cfg.sft
        examples = sft.curriculum(lambda: expert_messages(rng.choice(tasks), fmt), lambda: [], s.steps,
                                  s.batch_size, seed=cell.seed)
        history = sft.train(model, tokenizer, examples, steps=s.steps, batch_size=s.batch_size,
                            learning_rate=s.learning_rate, warmup_steps=0,
                            value_token_ids=value_token_ids(tokenizer), value_weight=s.value_weight,
                            seed=cell.seed, log_every=max(1, s.steps // 10))
        for h in history:
            if "loss" in h:
                on_step({"phase": "sft", "step": h["step"], "sft_loss": h["loss"]})
    sft_seconds = time.perf_counter() - t0
    rl_offset = cfg.sft.steps if cell.scheme == "sequential" else 0
    grpo.train(model, tokenizer, tasks, fmt, cfg.rl, cfg.rollout, cell.lr, cell.seed,
               lambda rec: on_step({"phase": "rl", **rec, "step": rl_offset + rec["step"]}))
    models.save(model, tokenizer, out_dir)
    return {"sft_seconds": round(sft_seconds, 1), "wall_seconds": round(time.perf_counter() - t0, 1)}
