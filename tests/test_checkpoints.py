"""Mid-run checkpoints of a train job: a job stopped at any step and started again ends with the
weights and train log of a job that ran straight through. The stop here is an exception raised
from the step callback (in-process, so fast) or a real SIGUSR1; tests/test_kill_resume.py kills
the `python -m toolrl train` process with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import re
import signal
from pathlib import Path

import pytest
import torch

from toolrl.config import Cell, Config, RLConfig, RolloutConfig, TinyModelConfig
from toolrl.envs.data import write_splits
from toolrl.models import model as models
from toolrl.training import train
from toolrl.training.checkpoints import STATE, Checkpoints, Preempted

# Timing fields differ from run to run; everything else in a step's record must be identical.
TIMING = {
    "step_time",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "rollout/seconds",
    "rollout/tokens_per_second",
    "checkpoint/seconds",
    "probe/seconds",
}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def job(tmp_path_factory, tokenizer, splits):
    """A data folder and a small random base model (a random model never succeeds, so its RL
    steps carry no gradient; the schemes' SFT steps and loss terms do)."""
    root = tmp_path_factory.mktemp("ckpt")
    write_splits(splits, root / "data")
    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    models.save(models.build_tiny_model(tiny, tokenizer, seed=0), tokenizer, root / "base")
    return root


def _cfg(save_every: int = 3, keep: int = 2) -> Config:
    cfg = Config()
    cfg.rl = RLConfig(steps=6, prompts_per_step=2, num_generations=2)
    cfg.rollout = RolloutConfig(max_new_tokens=24, max_total_tokens=700, max_messages=8)
    cfg.sft.batch_size = 2
    cfg.sft.steps = 4
    cfg.schemes.synchronous.batch_size = 2
    cfg.schemes.interleaved.rl_phases = [2, 2, 2]
    cfg.schemes.interleaved.sft_steps = 2
    cfg.checkpoint.save_every, cfg.checkpoint.keep = save_every, keep
    return cfg


def _run(job: Path, cfg: Config, cell: Cell, name: str, stop_at: int | None = None, how: str = "raise"):
    """Train `cell` into job/name; with `stop_at`, stop after that many step records, by
    raising (a crash) or by sending this process SIGUSR1 (a preemption)."""
    rows: list[dict] = []

    def on_step(row: dict) -> None:
        rows.append(row)
        if len(rows) == stop_at:
            if how == "raise":
                raise Killed
            os.kill(os.getpid(), signal.SIGUSR1)

    report = train.run(cfg, cell, job / "base", job / "data", job / name / "model", on_step, job / name / "ckpt")
    return rows, report


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return models.load(path)[0].state_dict()


def _same_run(job: Path, a: str, b: str, rows_a: list[dict], rows_b: list[dict]) -> None:
    wa, wb = _weights(job / a / "model"), _weights(job / b / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], v) for k, v in _weights(job / "base").items())  # training moved them

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert strip(rows_a) == strip(rows_b)


@pytest.mark.parametrize(
    ("signal_", "scheme", "stops"),
    [
        # ETS's failure log, the SFT phases' data and the expert pool's generator are ours to restore.
        ("ets", "interleaved", 2),
        # The SFT before RL (4 steps, logged every step) is saved as before-rl; the stops land after it.
        ("none", "sequential", 2),
        ("sft", "synchronous", 1),
    ],
)
def test_a_job_stopped_and_started_again_ends_as_if_never_stopped(job, signal_, scheme, stops):
    cfg = _cfg()
    cell = Cell(signal_, scheme, 1e-3, 0)
    name = f"{signal_}-{scheme}"
    straight, report = _run(job, cfg, cell, f"{name}-straight")
    assert not report["resumed"] and not (job / f"{name}-straight" / "ckpt").exists()
    # Each record goes to MLflow as train/<key>: every key must be a name MLflow accepts.
    assert all(re.fullmatch(r"[\w\-. :/]+", k) for row in straight for k in row)
    # Stops at seeded-random GRPO steps (the last rl.steps records are GRPO's in every scheme),
    # counted in records of the attempt, the resumed ones included.
    rng = random.Random(f"{signal_}/{scheme}")
    for point in sorted(rng.sample(range(len(straight) - cfg.rl.steps + 1, len(straight) + 1), stops)):
        with pytest.raises(Killed):
            _run(job, cfg, cell, f"{name}-stopped", stop_at=point)
    resumed, report = _run(job, cfg, cell, f"{name}-stopped")
    assert report["resumed"]
    _same_run(job, f"{name}-straight", f"{name}-stopped", straight, resumed)


def test_sigusr1_saves_at_the_end_of_the_step_and_stops(job):
    """A preemption between the periodic checkpoints loses nothing: the step in progress ends,
    is saved, and the job exits with `Preempted`; run again, it continues from that step."""
    cfg = _cfg(save_every=0)  # no periodic checkpoints: the only one is the signal's
    cell = Cell("ets", "interleaved", 1e-3, 0)
    straight, _ = _run(job, cfg, cell, "sig-straight")
    # Sent while step 5 is logged: step 6 is the next to end, and is saved.
    with pytest.raises(Preempted, match="SIGUSR1 after step 6 of 10"):
        _run(job, cfg, cell, "sig-stopped", stop_at=5, how="signal")
    assert sorted(p.name for p in (job / "sig-stopped" / "ckpt").glob("checkpoint-*")) == ["checkpoint-6"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is the job's only while it trains
    resumed, report = _run(job, cfg, cell, "sig-stopped")
    assert report["resumed"]
    _same_run(job, "sig-straight", "sig-stopped", straight, resumed)


def test_no_checkpoint_after_the_last_step_and_a_kill_before_the_model_is_saved(job, monkeypatch):
    """transformers saves after the last step; that checkpoint would be resumed with nothing left
    to train. It is skipped: a job killed between its last step and its model's save resumes
    from the last periodic checkpoint and ends as the straight run."""
    cfg = _cfg(save_every=5)  # 10 steps: periodic checkpoints at 5 and (skipped) 10
    cell = Cell("ets", "interleaved", 1e-3, 0)
    straight, _ = _run(job, cfg, cell, "end-straight")
    real_save = models.save

    def save(model, tokenizer, out):
        if out.name == "model":
            raise Killed
        real_save(model, tokenizer, out)

    monkeypatch.setattr(models, "save", save)
    with pytest.raises(Killed):
        _run(job, cfg, cell, "end-stopped")
    monkeypatch.setattr(models, "save", real_save)
    assert sorted(p.name for p in (job / "end-stopped" / "ckpt").glob("checkpoint-*")) == ["checkpoint-5"]
    resumed, report = _run(job, cfg, cell, "end-stopped")
    assert report["resumed"]
    _same_run(job, "end-straight", "end-stopped", straight, resumed)


def test_only_the_last_checkpoints_are_kept(job):
    cfg = _cfg(save_every=1, keep=2)
    with pytest.raises(Killed):
        _run(job, cfg, Cell("ets", "interleaved", 1e-3, 0), "keep", stop_at=6)
    assert sorted(p.name for p in (job / "keep" / "ckpt").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]


def test_a_checkpoint_of_another_config_or_a_torn_save_is_not_resumed(job, caplog):
    cfg = _cfg()
    cell = Cell("ets", "interleaved", 1e-3, 0)
    with pytest.raises(Killed):
        _run(job, cfg, cell, "other", stop_at=5)
    root = job / "other" / "ckpt"
    assert (root / "checkpoint-3" / STATE).is_file()
    # A save killed before its rename, and a folder without our state (written by someone else).
    (root / ".staging-x" / "checkpoint-4").mkdir(parents=True)
    (root / "checkpoint-9").mkdir()
    fp = json.loads((root / "checkpoint-3" / STATE).read_text())["fingerprint"]
    assert Checkpoints(root, fp).latest() == root / "checkpoint-3"
    assert not (root / ".staging-x").exists()

    changed = _cfg()
    changed.rl.temperature = 0.5  # a section the train job reads: its checkpoints are another run's
    rows, report = _run(job, changed, cell, "other")
    assert not report["resumed"] and rows[0]["step"] == 1
    assert "checkpoints of another config or base model, removed" in caplog.text
