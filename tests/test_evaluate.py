"""The evaluate stage: one `python -m toolrl evaluate` call evaluates a run on every split, with
the model, the task files and the run's collapse verdict loaded once, and writes each split's
file as a job per split wrote it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_signals import _collapsed_log

from toolrl import cli
from toolrl.config import SPLITS, Cell, TinyModelConfig, load
from toolrl.core.diagnostics import CALL_TEXT
from toolrl.envs.data import read_tasks, write_splits
from toolrl.models import model as models
from toolrl.training import evaluate

CELL = Cell("none", "rl", 1e-3, 0)


@pytest.fixture()
def job(tmp_path, splits, tokenizer) -> tuple[list[str], Path]:
    """The evaluate rule's command line, less --splits, for a trained cell whose train log shows a
    token collapse (so the id split's restoration probe forbids a pattern); and its eval folder."""
    config = tmp_path / "config.yaml"
    rollout = {"max_new_tokens": 12, "max_total_tokens": 1500, "max_messages": 8}
    config.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "rollout": rollout}))
    data = tmp_path / "data"
    write_splits({"id": splits["id"][:4], "content_ood": splits["content_ood"][:3]}, data)
    run = tmp_path / "runs" / CELL.path
    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    models.save(models.build_tiny_model(tiny, tokenizer, seed=0), tokenizer, run / "model")
    _collapsed_log(run / "train_log.jsonl", "probe/p_tool_call/call", 0.95, 0.02)
    out = run / "eval"
    argv = ["evaluate", "--config", str(config), "--data", str(data), "--model", str(run / "model")]
    return [*argv, "--out-dir", str(out), "--run", f"runs/{CELL.path}"], out


def test_one_call_writes_every_split(job, monkeypatch):
    argv, out = job
    loads, reads, verdicts = Counter(), Counter(), Counter()

    def counted(counter: Counter, fn):
        """`fn`, counting its calls by the file it reads (its last argument)."""

        def wrapper(*args):
            counter[Path(args[-1]).name] += 1
            return fn(*args)

        return wrapper

    monkeypatch.setattr(models, "load", counted(loads, models.load))
    monkeypatch.setattr(evaluate, "read_tasks", counted(reads, evaluate.read_tasks))
    monkeypatch.setattr(cli, "_shown", counted(verdicts, cli._shown))
    assert cli.main([*argv, "--splits", *SPLITS]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.json" for s in SPLITS)
    # Once per job: the model, each task file (id and format_ood share id.jsonl), the verdict.
    assert loads == {"model": 1} and reads == {"id.jsonl": 1, "content_ood.jsonl": 1}
    assert verdicts == {"train_log.jsonl": 1}

    # Each file is what the split's own evaluation gives, with its cell and its own seconds.
    flag = dict(zip(argv[1::2], argv[2::2], strict=True))
    cfg = load(flag["--config"])
    model, tokenizer = models.load(flag["--model"])
    n = {"id": 4, "format_ood": 4, "content_ood": 3}
    for split in SPLITS:
        doc = json.loads((out / f"{split}.json").read_text())
        assert doc["cell"] == CELL.__dict__ and doc["split"] == split and doc["n"] == n[split]
        assert isinstance(doc.pop("seconds"), float)
        tasks = read_tasks(Path(flag["--data"]) / f"{evaluate.split_source(cfg, split)[0]}.jsonl")
        alone = evaluate.run_split(model, tokenizer, cfg, split, tasks, "token", [CALL_TEXT])
        assert doc == json.loads(json.dumps({"cell": CELL.__dict__, **alone})), split
    restored = json.loads((out / "id.json").read_text())["restored"]
    assert restored["mode"] == "token" and restored["patterns"] == [CALL_TEXT.name] and restored["probed"]
    assert not any("restored" in json.loads((out / f"{s}.json").read_text()) for s in ("format_ood", "content_ood"))


def test_an_unknown_split_is_named_before_anything_runs(job, capsys):
    argv, out = job
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--splits", "id", "content-ood"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --splits: invalid choice: 'content-ood' (choose from " in err and "format_ood" in err
    assert not out.exists()
