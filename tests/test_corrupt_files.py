"""A damaged checkpoint, evaluation, task, training-log or run file stops the job that reads it
with one message naming the file and what is wrong (`python -m toolrl` logs it and exits 2),
never a traceback from safetensors, json, tokenizers or transformers, and never a silent load.
And no module writes a file except through `toolrl.io`'s atomic writes, so a killed job cannot
leave a partial one behind."""

from __future__ import annotations

import ast
import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file, save_file

from toolrl import cli
from toolrl.analysis.report import aggregate, read_eval
from toolrl.config import SPLITS, TinyModelConfig, WorldConfig, grid, load
from toolrl.envs.data import echo_messages, make_splits, read_tasks, write_splits
from toolrl.envs.synthetic import VALUE_TOKENS
from toolrl.io import read_json, write_json, write_jsonl
from toolrl.models import model as models
from toolrl.models.checkpoint import safetensors_problem

TINY = TinyModelConfig(
    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=256
)
SWEEP = {
    "name": "t",
    "signals": ["none"],
    "schemes": ["rl"],
    "learning_rates": [1e-3],
    "seeds": [0],
    "exclude": [],
    "baseline": {"signal": "none", "scheme": "rl"},
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A healthy tiny checkpoint, saved by the code every stage saves with."""
    rng = random.Random(0)
    tokenizer = models.build_tokenizer(
        [m["content"] for _ in range(200) for m in echo_messages(rng)], VALUE_TOKENS, vocab_size=300
    )
    out = tmp_path_factory.mktemp("ckpt") / "model"
    models.save(models.build_tiny_model(TINY, tokenizer, seed=0), tokenizer, out)
    return out


def _edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        doc = json.loads((d / name).read_text())
        edit(doc)
        (d / name).write_text(json.dumps(doc))

    return damage


def _cut(name: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: keep(len(data))])

    return damage


def _nan_weight(d: Path) -> None:
    tensors = load_file(d / "model.safetensors")
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


# (damage, what the message says after "corrupt checkpoint '<folder>': ")
CHECKPOINT_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "weights cut in half": (
        _cut("model.safetensors", lambda n: n // 2),
        r"model\.safetensors is truncated \([\d,]+ of [\d,]+ bytes\)",
    ),
    "weights cut inside the header": (
        _cut("model.safetensors", lambda n: 20),
        r"model\.safetensors is truncated \(20 bytes; the header alone needs [\d,]+\)",
    ),
    "weights zero bytes": (_cut("model.safetensors", lambda n: 0), r"model\.safetensors is empty \(0 bytes\)"),
    "weights garbage": (
        lambda d: (d / "model.safetensors").write_bytes(random.Random(0).randbytes(5000)),
        r"model\.safetensors is not a safetensors file \(its first 8 bytes give a header of ",
    ),
    "weights with bytes appended": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes() + b"\0" * 7),
        r"model\.safetensors is damaged \(",
    ),
    "weights deleted": (lambda d: (d / "model.safetensors").unlink(), r"no weights: model\.safetensors is missing"),
    "weights with a NaN": (_nan_weight, r"1 tensor of weights hold NaN or inf \(first: model\.norm\.weight\)"),
    "config truncated": (_cut("config.json", lambda n: n // 2), r"config\.json is truncated \("),
    "config not JSON": (
        lambda d: (d / "config.json").write_text("model_type: qwen2\n"),
        r"config\.json is invalid \(Expecting value",
    ),
    "config deleted": (lambda d: (d / "config.json").unlink(), r"config\.json is missing"),
    "config without model_type": (
        _edit_json("config.json", lambda c: c.pop("model_type")),
        r"config\.json has no 'model_type'",
    ),
    "config without hidden_size": (
        _edit_json("config.json", lambda c: c.pop("hidden_size")),
        (
            r"config\.json does not fit the weights: \S+ is \[\d+, 32\] in the file, "
            r"\[\d+, 4096\] by config\.json \(\d+ tensors differ\)"
        ),
    ),
    "config without tie_word_embeddings": (
        _edit_json("config.json", lambda c: c.pop("tie_word_embeddings")),
        (
            r"the weights lack 1 tensor that config\.json needs "
            r"\(first: lm_head\.weight\)"
        ),
    ),
    "generation config empty": (_cut("generation_config.json", lambda n: 0), r"generation_config\.json is empty"),
    "tokenizer truncated": (_cut("tokenizer.json", lambda n: n - 10), r"tokenizer\.json is truncated \("),
    "tokenizer deleted": (lambda d: (d / "tokenizer.json").unlink(), r"no tokenizer: tokenizer\.json is missing"),
    "tokenizer config truncated": (_cut("tokenizer_config.json", lambda n: 1), r"tokenizer_config\.json is truncated"),
}


def _damaged(good: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    d = tmp_path / "model"
    shutil.copytree(good, d)
    damage(d)
    return d


@pytest.mark.parametrize("case", CHECKPOINT_DAMAGE)
def test_damaged_checkpoint_is_named(good, tmp_path, case):
    damage, what = CHECKPOINT_DAMAGE[case]
    d = _damaged(good, tmp_path, damage)
    with pytest.raises(ValueError) as err:
        models.load(d)
    assert re.fullmatch(re.escape(f"corrupt checkpoint '{d}': ") + what + r".*", str(err.value)), str(err.value)
    assert "\n" not in str(err.value)


def test_tokenizer_file_of_the_wrong_shape_names_the_checkpoint(good, tmp_path):
    """Valid JSON that tokenizers cannot build from: its bare Exception is wrapped in one line."""
    d = _damaged(good, tmp_path, _edit_json("tokenizer.json", lambda t: t.pop("model")))
    with pytest.raises(
        ValueError, match=re.escape(f"cannot load the tokenizer of model checkpoint '{d}': Exception: Model missing.")
    ):
        models.load(d)


def test_healthy_checkpoints_load(good, tmp_path):
    """The checks refuse nothing whole: the plain checkpoint, and one in shards with an index."""
    model, tokenizer = models.load(good)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="30KB")
    tokenizer.save_pretrained(sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").exists()
    again, _ = models.load(sharded)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))

    shards[1].write_bytes(shards[1].read_bytes()[:-1])
    with pytest.raises(ValueError, match=re.escape(f"corrupt checkpoint '{sharded}': {shards[1].name} is truncated")):
        models.load(sharded)
    shards[1].unlink()
    with pytest.raises(
        ValueError, match=re.escape(f"corrupt checkpoint '{sharded}': no weights: {shards[1].name} is missing")
    ):
        models.load(sharded)


def test_every_cut_of_the_weights_reads_as_truncated(good):
    data = (good / "model.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = Path(good.parent / "cut.safetensors")
    for n in (1, 7, 8, 9, header_end - 1, header_end, header_end + 1, len(data) // 2, len(data) - 1):
        cut.write_bytes(data[:n])
        assert (safetensors_problem(cut) or "").startswith("truncated ("), n
    cut.write_bytes(data)
    assert safetensors_problem(cut) is None


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"model checkpoint '{tmp_path / 'nope'}' not found")):
        models.load(tmp_path / "nope")


# --------------------------------------------------------------------------- the jobs, through the CLI


@pytest.fixture(scope="module")
def tasks() -> dict:
    return make_splits(WorldConfig(n_warmup_tasks=8, n_rl_tasks=8, n_eval_tasks=4))


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "sweep": SWEEP}))
    return path


def _cli_error(caplog, argv: list[str]) -> str:
    """Run a stage as its rule does; it must exit 2 having logged exactly one error line."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="toolrl"):
        assert cli.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_evaluate_job_names_a_damaged_checkpoint_and_a_damaged_task_file(good, tasks, config, tmp_path, caplog):
    data = tmp_path / "data"
    write_splits(tasks, data)
    out = tmp_path / "eval" / "id.json"
    argv = [
        "evaluate",
        "--config",
        str(config),
        "--data",
        str(data),
        "--splits",
        "id",
        "--out-dir",
        str(out.parent),
        "--run",
        "base",
    ]

    bad = _damaged(good, tmp_path, _cut("model.safetensors", lambda n: n - 100))
    message = _cli_error(caplog, [*argv, "--model", str(bad)])
    assert re.fullmatch(
        re.escape(f"corrupt checkpoint '{bad}': model.safetensors is truncated (") + r"[\d,]+ of [\d,]+ bytes\)",
        message,
    )

    (data / "id.jsonl").write_text("")
    assert _cli_error(caplog, [*argv, "--model", str(good)]) == f"no tasks in '{data / 'id.jsonl'}': the file is empty"
    assert not out.exists()


# --------------------------------------------------------------------------- task files


def _named(what: str, path: Path) -> str:
    """`what` (a regex) with `{p}` standing for the damaged file's path."""
    return what.replace("{p}", re.escape(str(path)))


def _write_rows(path: Path, rows: list, cut: int = 0) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text[: len(text) - cut])


TASK_DAMAGE = [
    ("truncated last line", lambda rows: (rows, 25), r"corrupt JSON in '{p}' line 3: truncated \("),
    (
        "row without turns",
        lambda rows: ([rows[0], {k: v for k, v in rows[1].items() if k != "turns"}], 0),
        r"malformed task in '{p}' line 2: missing key 'turns'",
    ),
    (
        "row without a question",
        lambda rows: ([{**rows[0], "turns": [{"rounds": [], "reply": "x"}]}], 0),
        r"malformed task in '{p}' line 1: missing key 'question'",
    ),
    ("row not an object", lambda rows: ([rows[0], [1, 2]], 0), r"malformed task in '{p}' line 2: "),
    ("empty file", lambda rows: ([], 0), r"no tasks in '{p}': the file is empty"),
]


@pytest.mark.parametrize("case, damage, what", TASK_DAMAGE, ids=[c[0] for c in TASK_DAMAGE])
def test_damaged_task_file_is_named(tasks, tmp_path, case, damage, what):
    path = tmp_path / "id.jsonl"
    rows, cut = damage([t.to_json() for t in tasks["id"][:3]])
    _write_rows(path, rows, cut)
    with pytest.raises(ValueError, match=_named(what, path)):
        read_tasks(path)


# --------------------------------------------------------------------------- evaluation, train log, run files


def _eval_doc(split: str, cell: dict | None) -> dict:
    return {
        "cell": cell,
        "split": split,
        "format": "json",
        "n": 4,
        "success_rate": 0.5,
        "format_error_rate": 0.25,
        "tasks": [{"task_id": f"{split}-{i}", "domain": "bank", "success": i < 2} for i in range(4)],
        "seconds": 1.0,
    }


@pytest.fixture
def sweep(config) -> tuple:
    """A sweep of one cell and the base model, as the jobs leave it: evaluations, train log, run files."""
    cfg = load(config)
    cell = grid(cfg)[0]
    run = cfg.sweep_dir / "runs" / cell.path
    for split in SPLITS:
        write_json(run / "eval" / f"{split}.json", _eval_doc(split, cell.__dict__))
        write_json(cfg.sweep_dir / "base" / "eval" / f"{split}.json", _eval_doc(split, None))
    write_jsonl(run / "train_log.jsonl", [{"phase": "rl", "step": i, "success": 0.5} for i in range(4)])
    write_json(run / "run.json", {"cell": cell.__dict__, "mlflow_run_id": "r1"})
    write_json(cfg.sweep_dir / "base" / "warmup.json", {"steps": 1, "mlflow_run_id": "r0"})
    return cfg, run


def _patch(key: str, value) -> Callable[[dict], None]:
    return lambda doc: doc.update({key: value})


EVAL_DAMAGE = [
    ("truncated", None, r"corrupt JSON in '{p}': truncated \("),
    ("empty", "", r"corrupt JSON in '{p}': empty"),
    ("not an object", "[]", r"malformed '{p}': expected an object, got list"),
    ("no success_rate", lambda d: d.pop("success_rate"), r"malformed '{p}': missing key 'success_rate'"),
    ("no format_error_rate", lambda d: d.pop("format_error_rate"), r"malformed '{p}': missing key 'format_error_rate'"),
    ("no tasks", lambda d: d.pop("tasks"), r"malformed '{p}': missing key 'tasks'"),
    ("no split", lambda d: d.pop("split"), r"malformed '{p}': missing key 'split'"),
    (
        "rate as a string",
        _patch("success_rate", "0.5"),
        r"malformed '{p}': 'success_rate' must be a number, got '0\.5'",
    ),
    ("rate as a bool", _patch("success_rate", True), r"'success_rate' must be a number, got True"),
    ("tasks as an object", _patch("tasks", {}), r"malformed '{p}': 'tasks' must be a list, got \{\}"),
    (
        "task success as a string",
        lambda d: d["tasks"][3].update(success="yes"),
        r"malformed '{p}' tasks\[3\]: 'success' must be true or false, got 'yes'",
    ),
    ("restored as a number", _patch("restored", 0.5), r"malformed '{p}': 'restored' must be an object, got 0\.5"),
    (
        "restored without its rate",
        _patch("restored", {"n": 4}),
        r"malformed '{p}' restored: missing key 'success_rate'",
    ),
]


def _damage_file(path: Path, damage) -> None:
    if damage is None:
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
    elif isinstance(damage, str):
        path.write_text(damage)
    else:
        doc = json.loads(path.read_text())
        damage(doc)
        path.write_text(json.dumps(doc))


@pytest.mark.parametrize("case, damage, what", EVAL_DAMAGE, ids=[c[0] for c in EVAL_DAMAGE])
def test_damaged_evaluation_is_named_by_the_aggregate(sweep, case, damage, what):
    """Both readers of evaluation files: the tables' and the MLflow logging's."""
    cfg, run = sweep
    path = run / "eval" / "format_ood.json"
    _damage_file(path, damage)
    pattern = _named(what, path)
    with pytest.raises(ValueError, match=pattern):
        aggregate(cfg.sweep_dir, SWEEP["baseline"], n_resamples=50)
    with pytest.raises(ValueError, match=pattern):
        cli._log_evaluations(cfg, cfg.sweep_dir / "mlflow" / "experiment.json")


LOG_DAMAGE = [
    ("truncated", lambda text: text[:-10], r"corrupt JSON in '{p}' line 4: truncated \("),
    ("row without a step", lambda text: text.replace('"step": 1, ', ""), r"malformed '{p}' line 2: missing key 'step'"),
    (
        "row not an object",
        lambda text: text.replace(text.splitlines()[2], "7"),
        r"malformed '{p}' line 3: expected an object, got int",
    ),
]


@pytest.mark.parametrize("case, damage, what", LOG_DAMAGE, ids=[c[0] for c in LOG_DAMAGE])
def test_damaged_train_log_is_named_by_the_aggregate(sweep, case, damage, what):
    cfg, run = sweep
    path = run / "train_log.jsonl"
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=_named(what, path)):
        aggregate(cfg.sweep_dir, SWEEP["baseline"], n_resamples=50)


RUN_DAMAGE = [
    ("truncated", None, r"corrupt JSON in '{p}': truncated \("),
    ("no run id", lambda d: d.pop("mlflow_run_id"), r"malformed '{p}': missing key 'mlflow_run_id'"),
]


@pytest.mark.parametrize("name", ["run.json", "warmup.json"])
@pytest.mark.parametrize("case, damage, what", RUN_DAMAGE, ids=[c[0] for c in RUN_DAMAGE])
def test_damaged_run_file_is_named_before_mlflow_is_touched(sweep, name, case, damage, what):
    """The experiment file does not exist: reaching MLflow at all would fail differently."""
    cfg, run = sweep
    path = run / name if name == "run.json" else cfg.sweep_dir / "base" / name
    _damage_file(path, damage)
    with pytest.raises(ValueError, match=_named(what, path)):
        cli._log_evaluations(cfg, cfg.sweep_dir / "mlflow" / "experiment.json")


def test_every_cut_of_a_json_file_reads_as_truncated(tmp_path):
    """Any prefix a cut-short write could leave is called truncated, never just invalid."""
    text = json.dumps(_eval_doc("id", {"signal": "none", "scheme": "rl", "lr": 0.001, "seed": 0}), indent=1)
    path = tmp_path / "id.json"
    for n in range(1, len(text)):
        path.write_text(text[:n])
        with pytest.raises(ValueError, match=re.escape(f"corrupt JSON in '{path}': truncated (")):
            read_json(path)
    path.write_text(text)
    assert read_eval(path)["success_rate"] == 0.5


# --------------------------------------------------------------------------- writers


# Writes that bypass toolrl.io, each with why it cannot leave a partial output: (module, call) → reason.
ALLOWED_WRITES = {
    (
        "toolrl/analysis/plots.py",
        "savefig",
    ): "renders into an in-memory buffer; report.py writes the bytes with write_bytes",
    ("toolrl/models/model.py", "save_pretrained"): "inside atomic_dir",
    ("toolrl/models/gguf.py", "save_pretrained"): "inside atomic_dir",
    ("toolrl/tracking.py", "open"): "the local MLflow server's own log, not a sweep output",
}
# Methods that write a file whatever they are called on (`open` only with a mode that writes),
# and module functions that do.
WRITE_METHODS = {"write_text", "write_bytes", "save_pretrained", "savefig", "to_csv", "open"}
WRITE_FUNCTIONS = {"open", "torch.save", "np.save", "numpy.save", "json.dump", "yaml.dump", "pickle.dump"}


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id if f.id in WRITE_FUNCTIONS else None
    if not isinstance(f, ast.Attribute):
        return None
    if isinstance(f.value, ast.Name) and f"{f.value.id}.{f.attr}" in WRITE_FUNCTIONS:
        return f"{f.value.id}.{f.attr}"
    return f.attr if f.attr in WRITE_METHODS else None


def _writes(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (name := _call_name(node)) is None:
            continue
        if name == "open":
            modes = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if not any(set(m) & set("wax+") for m in modes):
                continue
        found.append((name, node))
    return found


def _inside_atomic_dir(tree: ast.AST, call: ast.Call) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.With)
            and any(
                isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", None) == "atomic_dir"
                for i in node.items
            )
            and any(n is call for n in ast.walk(node))
        ):
            return True
    return False


def test_outputs_are_written_only_through_atomic_writes():
    """Snakemake takes an existing output for a finished one, so a write cut short by a killed
    job must leave nothing: every module writes through toolrl.io, or is listed with its reason."""
    seen = set()
    for path in sorted((ROOT / "toolrl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "toolrl/io.py":
            continue
        tree = ast.parse(path.read_text())
        for name, call in _writes(tree):
            assert (rel, name) in ALLOWED_WRITES, f"{rel}:{call.lineno} writes with {name}() outside toolrl.io"
            if name == "save_pretrained":
                assert _inside_atomic_dir(tree, call), f"{rel}:{call.lineno}: save_pretrained outside atomic_dir"
            seen.add((rel, name))
    assert seen == set(ALLOWED_WRITES)
