"""The real-checkpoint path on the real benchmark: a tiny random Qwen2 model with a Qwen-style
chat template, saved to disk like any hub checkpoint, goes through prepare → base → train (a few
GRPO and SFT steps) → evaluate on BFCL tasks → aggregate, all through Snakemake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_sweep

pytest.importorskip("bfcl_eval")

from toolrl.config import TinyModelConfig
from toolrl.core.episode import expert_messages
from toolrl.envs import bfcl
from toolrl.formats import get_format
from toolrl.models import model as models

pytestmark = pytest.mark.slow
# rl: scenario 66 (VehicleControlAPI) × 3 train categories; id: scenario 174 × 4 categories;
# content_ood: scenario 4, the first test scenario with the held-out GorillaFileSystem.
BFCL = {"n_train": 1, "n_test": 2, "held_out_classes": ["GorillaFileSystem"]}


def save_tiny_checkpoint(out: Path) -> None:
    splits = bfcl.make_splits(
        ["base", "miss_param", "miss_func"], list(bfcl.CATEGORIES), 42, 1, 2, BFCL["held_out_classes"]
    )
    fmts = [get_format("json", "full"), get_format("python", "full")]
    corpus = [
        "\n".join(m["content"] for m in expert_messages(t, f)) for ts in splits.values() for t in ts for f in fmts
    ]
    tokenizer = models.build_tokenizer(corpus, [], vocab_size=2048)
    tokenizer.model_max_length = 16384
    tiny = TinyModelConfig(
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, max_position_embeddings=16384
    )
    models.save(models.build_tiny_model(tiny, tokenizer, seed=0), tokenizer, out)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("bfcl")
    save_tiny_checkpoint(work / "tiny-qwen")
    cfg = {
        "sweep": {
            "name": "bfcl-tiny",
            "signals": ["none", "sft"],
            "schemes": ["rl", "sequential"],
            "learning_rates": [1e-3],
            "seeds": [0],
            "exclude": [],
            "baseline": {"signal": "none", "scheme": "rl"},
        },
        "world": {"backend": "bfcl", "prompt_style": "full", "bfcl": BFCL},
        "model": {"name_or_path": str(work / "tiny-qwen")},
        "warmup": {"steps": 0},
        "sft": {"steps": 1, "batch_size": 2},
        "rl": {"steps": 2, "prompts_per_step": 2, "num_generations": 2},
        "rollout": {"max_messages": 3, "max_new_tokens": 8, "max_total_tokens": 12000, "max_rounds_per_turn": 2},
        "aggregate": {"n_resamples": 200},
    }
    (work / "bfcl.yaml").write_text(yaml.safe_dump(cfg))
    return run_sweep(work, work / "bfcl.yaml", sweep="bfcl-tiny")[0]


def test_prepare_wrote_the_bfcl_split(sweep):
    ids = {
        name: [json.loads(line)["id"] for line in (sweep / "data" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("rl", "id", "content_ood")
    }
    assert ids["rl"] == [f"multi_turn_{c}_66" for c in ("base", "miss_param", "miss_func")]
    assert ids["id"] == [f"multi_turn_{c}_174" for c in bfcl.CATEGORIES]
    assert ids["content_ood"] == [f"multi_turn_{c}_4" for c in bfcl.CATEGORIES]


def test_every_model_was_evaluated_on_bfcl(sweep):
    results = sorted(sweep.rglob("eval/*.json"))
    assert len(results) == 3 * 3  # base + 2 cells, 3 splits each
    for path in results:
        r = json.loads(path.read_text())
        assert r["n"] == 4 and len(r["tasks"]) == 4
        assert {t["task_id"].rsplit("_", 1)[0] for t in r["tasks"]} == {f"multi_turn_{c}" for c in bfcl.CATEGORIES}
    assert json.loads((sweep / "base" / "eval" / "format_ood.json").read_text())["format"] == "python"


def test_training_ran_on_bfcl_and_the_table_exists(sweep):
    rows = [json.loads(line) for line in next(sweep.rglob("signal=none/**/train_log.jsonl")).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("success" in r for r in rows)
    run = json.loads(next(sweep.rglob("signal=sft/**/run.json")).read_text())
    assert run["cell"]["scheme"] == "sequential"
    assert "| base " in (sweep / "tables" / "main.md").read_text()
    assert (
        "| group | base | long_context | miss_func | miss_param | average |"
        in (sweep / "tables" / "categories.md").read_text()
    )
