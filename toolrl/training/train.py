"""One grid cell's training job: the scheme decides how SFT and RL combine, the signal what
supervision is added; both come from the plugin registry (`toolrl.plugins`) and act through their
hooks: the scheme's `before_rl` (sequential's SFT through TRL's SFTTrainer), then one GRPO run
(`toolrl.training.grpo`) that calls the rest."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolrl.config import Cell, Config
from toolrl.envs.data import read_tasks
from toolrl.formats import get_format
from toolrl.models import model as models
from toolrl.models.guards import NonFiniteGuard
from toolrl.training import grpo


def run(
    cfg: Config, cell: Cell, base_model: Path, data_dir: Path, out_dir: Path, on_step: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    model, tokenizer = models.load(base_model)
    fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    ctx = grpo.cell_context(cfg, tokenizer, read_tasks(data_dir / "rl.jsonl"), fmt, cell.seed)
    signal, scheme = grpo.plugins_for(cfg, cell.signal, cell.scheme)
    guard = NonFiniteGuard(cell.path, cfg.numerics.on_nonfinite)
    t0 = time.perf_counter()
    offset = scheme.before_rl(ctx, model, on_step, [guard])
    sft_seconds = time.perf_counter() - t0
    grpo.train(model, ctx, signal, scheme, cell.lr, lambda rec: on_step({**rec, "step": offset + rec["step"]}), guard)
    models.save(model, tokenizer, out_dir)
    return {
        "sft_seconds": round(sft_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "skipped_steps": guard.skipped,
    }
