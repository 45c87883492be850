"""kill -9 inside a train job: `python -m toolrl train` killed with SIGKILL at two seeded-random
steps and stopped once with SIGUSR1 (a cluster's warning), then run to the end, must write the
weights, train log and MLflow history of a job that ran straight through. Each attempt is a
fresh process that resumes from the latest checkpoint on disk (checkpoint.save_every: 2)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SNAKEMAKE_ENV

from toolrl.config import Cell, TinyModelConfig
from toolrl.envs.data import write_splits
from toolrl.models import model as models

pytestmark = pytest.mark.slow

CONFIG = {
    "sweep": {"name": "kill"},
    "rl": {"steps": 8, "prompts_per_step": 2, "num_generations": 4},
    "rollout": {"max_new_tokens": 24, "max_total_tokens": 700, "max_messages": 8},
    "sft": {"batch_size": 2},
    "schemes": {"interleaved": {"rl_phases": [3, 3, 2], "sft_steps": 3}},
    "checkpoint": {"save_every": 2, "keep": 2},
}
STEPS = 14  # 8 RL steps and two SFT phases of 3
TIMING = re.compile(
    r"^(step_time|train_runtime|train_samples_per_second|train_steps_per_second|.*/seconds|.*/tokens_per_second)$"
)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer, splits):
    root = tmp_path_factory.mktemp("kill")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(root / "results"), **CONFIG}))
    write_splits(splits, root / "data")
    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    models.save(models.build_tiny_model(tiny, tokenizer, seed=0), tokenizer, root / "base")
    experiment = root / "experiment.json"
    toolrl = [sys.executable, "-m", "toolrl"]
    subprocess.run([*toolrl, "mlflow-init", "--config", str(config), "--out", str(experiment)], check=True, cwd=ROOT)

    def start(out: Path) -> subprocess.Popen:
        args = ["--config", config, "--data", root / "data", "--base", root / "base", "--experiment", experiment]
        args += ["--out", out, *Cell("ets", "interleaved", 1e-3, 0).flags]
        with (out.parent / f"{out.name}.log").open("a") as log:
            return subprocess.Popen([*toolrl, "train", *map(str, args)], cwd=ROOT, env=SNAKEMAKE_ENV, stderr=log)

    return root, start


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not TIMING.match(k)} for r in rows]


def test_kill_9_at_two_random_steps_then_resume_is_identical(setup):
    root, start = setup
    straight = root / "straight"
    assert start(straight).wait(timeout=300) == 0

    stopped = root / "stopped"
    rng = random.Random(16)
    kills = [(signal.SIGKILL, rng.randint(2, 6)), (signal.SIGUSR1, rng.randint(7, 9)), (signal.SIGKILL, 11)]
    for sig, at in kills:
        job = start(stopped)
        # `at` records in this attempt's log (it first rewrites the ones up to its checkpoint).
        while _lines(stopped / "train_log.jsonl") < at and job.poll() is None:
            time.sleep(0.01)
        assert job.poll() is None, f"the job ended before {at} records"
        job.send_signal(sig)
        code = job.wait(timeout=120)
        # SIGUSR1: the step ends, is saved, and the job exits EX_TEMPFAIL for the retry.
        assert code == (75 if sig == signal.SIGUSR1 else -signal.SIGKILL)
        assert any((stopped / "checkpoints").glob("checkpoint-*"))
    assert start(stopped).wait(timeout=300) == 0

    assert json.loads((stopped / "run.json").read_text())["resumed"]
    assert not (stopped / "checkpoints").exists()
    a, b = _rows(straight), _rows(stopped)
    assert len(a) == STEPS and a == b
    wa, wb = (models.load(p / "model")[0].state_dict() for p in (straight, stopped))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # The FINISHED MLflow run of the stopped job holds every step's point, once.
    from mlflow import MlflowClient

    exp = json.loads((root / "experiment.json").read_text())
    client = MlflowClient(exp["tracking_uri"])
    run_id = json.loads((stopped / "run.json").read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [r["loss"] for r in a]
    assert os.path.getsize(stopped / "train_log.jsonl") > 0
