"""One grid cell's training job: the scheme decides how SFT and RL combine, the signal what
supervision is added; both come from the plugin registry (`toolrl.plugins`) and act through their
hooks: the scheme's `before_rl` (sequential's SFT through TRL's SFTTrainer), then one GRPO run
(`toolrl.training.grpo`) that calls the rest."""

from __future__ import annotations

import logging
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
from toolrl.training.checkpoints import BEFORE_RL, Checkpoints, Preempted, StopSignals, fingerprint

log = logging.getLogger(__name__)


def run(
    cfg: Config,
    cell: Cell,
    base_model: Path,
    data_dir: Path,
    out_dir: Path,
    on_step: Callable[[dict[str, Any]], None],
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one cell into `out_dir`, passing each step's record to `on_step`. With
    `checkpoint_dir` the job's state is saved there (`checkpoint.save_every`, and on a stop
    signal, `checkpoints.StopSignals`, after which `Preempted` is raised), and a job started
    again resumes from its latest checkpoint: the records up to it are passed to `on_step` again
    first, so the caller's log is whole. The folder is removed once the model is saved."""
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpoints(
            checkpoint_dir, fingerprint(cfg, cell, base_model), cfg.checkpoint.save_every, cfg.checkpoint.keep
        )
    resume = ckpt.latest() if ckpt else None
    before = ckpt.before_rl() if ckpt else None
    job: dict[str, Any] = {"rows": [], "offset": 0, "sft_seconds": 0.0, "skipped": [], "seconds": 0.0}
    saved: dict[str, Any] = {}
    if ckpt and (resume or before):
        saved = ckpt.state(resume or before)  # type: ignore[arg-type]
        job.update(saved["job"])
        log.info("resuming %s from %s", cell.path, resume or before)
    rows: list[dict[str, Any]] = job["rows"]
    for row in rows:
        on_step(row)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        on_step(row)

    t0 = time.perf_counter()

    def job_state() -> dict[str, Any]:
        return {**job, "skipped": guard.skipped, "seconds": job["seconds"] + time.perf_counter() - t0}

    model, tokenizer = models.load(before or base_model)
    fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    ctx = grpo.cell_context(cfg, tokenizer, read_tasks(data_dir / "rl.jsonl"), fmt, cell.seed)
    signal, scheme = grpo.plugins_for(cfg, cell.signal, cell.scheme)
    guard = NonFiniteGuard(cell.path, cfg.numerics.on_nonfinite)
    guard.skipped = list(job["skipped"])
    with StopSignals() as stop:
        if before is None and resume is None:
            job["offset"] = scheme.before_rl(ctx, model, record, [guard])
            job["sft_seconds"] = round(time.perf_counter() - t0, 1)
            if ckpt and job["offset"]:  # the model GRPO starts from (and a KL reference's)
                with ckpt.staging(BEFORE_RL, {"job": job_state()}) as staging:
                    models.save(model, tokenizer, staging / BEFORE_RL)
            if stop.received:
                raise Preempted(f"stopped on {stop.received} after the SFT before RL")
        offset = job["offset"]
        grpo.train(
            model,
            ctx,
            signal,
            scheme,
            cell.lr,
            lambda rec: record({**rec, "step": offset + rec["step"]}),
            guard,
            checkpoints=ckpt,
            resume=resume,
            resume_state=saved["trainer"] if resume else None,
            stop=stop,
            job_state=job_state,
        )
    models.save(model, tokenizer, out_dir)
    if ckpt:
        ckpt.clear()
    return {
        "sft_seconds": job["sft_seconds"],
        "wall_seconds": round(job_state()["seconds"], 1),
        "skipped_steps": guard.skipped,
        "resumed": bool(resume or before),
    }
