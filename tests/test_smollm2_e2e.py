"""The offline pretrained model end to end on CPU: the SmolLM2 preset, shrunk to a handful of
steps and tasks, through Snakemake: convert the GGUF → warm-up SFT → GRPO → evaluate → aggregate."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT, run_sweep

pytest.importorskip("gguf")

from toolrl.models import gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    try:
        gguf.resolve(gguf.SMOLLM2)
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(str(e))
    work = tmp_path_factory.mktemp("smollm2")
    small = {
        "sweep": {
            "name": "smollm2-small",
            "signals": ["none"],
            "schemes": ["rl"],
            "learning_rates": [1e-5],
            "seeds": [0],
            "baseline": {"signal": "none", "scheme": "rl", "lr": 1e-5},
        },
        "world": {"n_warmup_tasks": 40, "n_rl_tasks": 8, "n_eval_tasks": 2},
        "warmup": {"steps": 2, "batch_size": 2, "warmup_steps": 0},
        "rl": {"steps": 1, "prompts_per_step": 2, "num_generations": 2},
        "rollout": {"max_messages": 2, "max_new_tokens": 12, "max_total_tokens": 1500},
        "aggregate": {"n_resamples": 100},
        "resources": {"threads": 2, "warmup_threads": 2},
    }
    (work / "small.yaml").write_text(yaml.safe_dump(small))
    return run_sweep(work, ROOT / "config/smollm2-135m.yaml", work / "small.yaml", sweep="smollm2-small")[0]


def test_the_gguf_was_converted_once_and_trained_from(sweep):
    assert (sweep / "pretrained" / "model.safetensors").exists()
    assert (sweep / "base" / "model" / "model.safetensors").exists()
    assert json.loads((sweep / "base" / "warmup.json").read_text())["params"] == 134_515_008
    rows = [json.loads(line) for line in next(sweep.rglob("train_log.jsonl")).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "success" in rows[0]


def test_every_split_was_evaluated(sweep):
    results = sorted(sweep.rglob("eval/*.json"))
    assert len(results) == 2 * 3
    assert all(json.loads(p.read_text())["n"] == 2 for p in results)
    assert "| base " in (sweep / "tables" / "main.md").read_text()
