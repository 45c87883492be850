"""Bad input stops with one clear message naming the key, both when a job loads the config and
when Snakemake validates it against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from toolrl.config import ConfigError, config_hash, grid, load, section_hash

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


def test_default_config_loads_and_validates():
    cfg = load(ROOT / "config.yaml")
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(raw, SCHEMA)
    cells = grid(cfg)
    groups = {(c.signal, c.scheme, c.lr) for c in cells}
    both = {(s, x, lr) for s, x in (("none", "rl"), ("random_reward", "rl"), ("ops", "rl"), ("sft", "synchronous"))
            for lr in (3e-5, 3e-4)}  # fmt: skip
    assert groups == both | {("sft", "sft_only", 3e-4)}
    assert len(cells) == len(groups) * len(cfg.sweep.seeds)


def test_schema_defaults_match_the_dataclasses():
    """Snakemake fills schema defaults; a job fills dataclass defaults. They must agree."""
    filled: dict = {}
    validate(filled, SCHEMA)
    assert config_hash(load(None, filled)) == config_hash(load(None))


BAD = [
    ({"sweep": {"bogus": 1}}, "sweep.bogus"),
    ({"typo_section": {}}, "typo_section"),
    ({"sweep": {"seeds": "zero"}}, "sweep.seeds"),
    ({"rl": {"steps": "many"}}, "rl.steps"),
    ({"sweep": {"signals": ["magic"]}}, "sweep.signals"),
    ({"sweep": {"schemes": ["sometimes"]}}, "sweep.schemes"),
    ({"sweep": {"learning_rates": [0.0]}}, "sweep.learning_rates"),
    ({"sweep": {"learning_rates": [-1e-4]}}, "sweep.learning_rates"),
    ({"sweep": {"seeds": []}}, "sweep.seeds"),
    ({"sweep": {"signals": []}}, "sweep.signals"),
    ({"aggregate": {"correction": "fdr"}}, "aggregate.correction"),
    ({"aggregate": {"paper": "hao2099"}}, "aggregate.paper"),
]


def test_schema_lists_every_published_reference():
    from toolrl.paper import PUBLISHED

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert schema["properties"]["aggregate"]["properties"]["paper"]["enum"] == [*PUBLISHED, None]


@pytest.mark.parametrize("override,key", BAD)
def test_job_side_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(ROOT / "config.yaml", override)


@pytest.mark.parametrize("override,key", BAD)
def test_schema_side_rejects_the_same(override, key):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, value in override.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) and value else value
    with pytest.raises(WorkflowError):
        validate(raw, SCHEMA)


@pytest.mark.parametrize(
    "override,match",
    [
        ({"sweep": {"signals": ["none"], "pairs": {"none": []}}}, "no signal × scheme pair"),
        ({"sweep": {"pairs": {"none": ["warp"]}}}, "sweep.pairs.none"),
        (
            {
                "sweep": {
                    "signals": ["sft"],
                    "schemes": ["interleaved"],
                    "baseline": {"signal": "sft", "scheme": "interleaved"},
                },
                "schemes": {"interleaved": {"rl_phases": [1, 2]}},
            },
            "schemes.interleaved.rl_phases",
        ),
        ({"signals": {"ets": {"rule": "most"}}}, "signals.ets.rule"),
        ({"sweep": {"pairs": {"none": ["rl"], "ets": ["rl"]}}}, "sweep.pairs.ets"),
        (
            {
                "sweep": {
                    "signals": ["sft"],
                    "schemes": ["interleaved"],
                    "baseline": {"signal": "sft", "scheme": "interleaved"},
                },
                "schemes": {"interleaved": {"rl_phases": [8]}},
            },
            "at least two RL phases",
        ),
        ({"signals": {"ctrl": {"coef": -1.0}}}, "signals.ctrl.coef"),
        ({"world": {"n_rl_tasks": 2}}, "world.n_rl_tasks"),
        ({"signals": {"ops": {"k": 8}}}, "signals.ops.k"),
        ({"signals": {"prs": {"judge": {"kind": "openai"}}}}, "signals.prs.judge.url"),
        ({"signals": {"prs": {"judge": {"kind": "hf"}}}}, "signals.prs.judge.model"),
        ({"signals": {"ctrl": {"mode": "mute"}}}, "signals.ctrl.mode"),
        ({"diagnostics": {"restore_splits": ["train"]}}, "diagnostics.restore_splits"),
        ({"diagnostics": {"reward_drop": 0.0}}, "diagnostics.reward_drop"),
        ({"sweep": {"baseline": {"signal": "sft", "scheme": "rl"}}}, "sweep.baseline"),
        ({"world": {"ood_domains": ["bank"]}}, "world.ood_domains"),
        ({"world": {"train_domains": ["mars"]}}, "world.train_domains"),
        ({"world": {"ood_format": "json"}}, "world.ood_format"),
        ({"model": {"name_or_path": "/no/such/checkpoint"}}, "model.name_or_path"),
        ({"sweep": {"signals": ["ops"]}}, "sweep.baseline"),
    ],
)
def test_semantic_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load(ROOT / "config.yaml", override)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load(tmp_path / "nope.yaml")


def test_section_hash_tracks_only_its_sections():
    a = load(ROOT / "config.yaml")
    b = load(ROOT / "config.yaml", {"aggregate": {"n_resamples": 999}})
    assert section_hash(a, "rl", "sft") == section_hash(b, "rl", "sft")
    assert section_hash(a, "aggregate") != section_hash(b, "aggregate")


def test_mlflow_init_hash_ignores_the_jobs_keys_and_kept_its_old_value():
    """Switching model logging or the flush cadence must not recreate the experiment (which reruns
    the whole DAG), and sweeps started before those keys existed keep their hash (5266a5e599c9 at
    020566d)."""
    from toolrl.config import MLFLOW_JOB_KEYS

    a = load(ROOT / "config.yaml")
    on = load(ROOT / "config.yaml", {"mlflow": {"log_models": True, "flush_steps": 1, "flush_seconds": 5}})
    server = load(ROOT / "config.yaml", {"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}})
    h = [section_hash(c, "mlflow", exclude=MLFLOW_JOB_KEYS) for c in (a, on, server)]
    assert h[0] == h[1] == "5266a5e599c9" != h[2]


def test_command_line_strings_are_read_as_scalars():
    from toolrl.config import coerce_scalars

    raw = {"sweep": {"seeds": ["0", "1"], "learning_rates": ["1e-4"], "name": "x"}, "model": {"name_or_path": "null"}}
    assert coerce_scalars(raw) == {
        "sweep": {"seeds": [0, 1], "learning_rates": [1e-4], "name": "x"},
        "model": {"name_or_path": None},
    }


def test_grid_builds_only_the_meaningful_pairs():
    from toolrl import plugins
    from toolrl.config import grid

    cfg = load(
        ROOT / "config.yaml",
        {
            "sweep": {
                "signals": list(plugins.signals()),
                "schemes": list(plugins.schemes()),
                "learning_rates": [1e-4, 1e-3],
                "seeds": [0, 1, 2],
                "exclude": [],
            }
        },
    )
    pairs = {(c.signal, c.scheme) for c in grid(cfg)}
    assert pairs == {(s, x) for s, xs in cfg.sweep.pairs.items() for x in xs}
    assert len(pairs) == 12 and len(grid(cfg)) == 12 * 2 * 3  # the paper's 10, random_reward × rl, sft × sft_only
    assert ("none", "sequential") not in pairs and ("ets", "rl") not in pairs


def test_cell_sections_follow_what_a_cell_reads():
    from toolrl.config import cell_sections

    a = load(ROOT / "config.yaml")
    b = load(ROOT / "config.yaml", {"signals": {"ops": {"k": 3}}})
    for sig, sch, same in (("none", "rl", True), ("ctrl", "rl", True), ("ops", "rl", False)):
        sections = cell_sections(sig, sch)
        assert (section_hash(a, *sections) == section_hash(b, *sections)) == same
    assert "schemes.interleaved" in cell_sections("prs", "interleaved")
    assert "signals.ets" in cell_sections("prs", "interleaved")


def test_a_cells_flags_are_what_the_train_command_reads_back():
    from toolrl import cli
    from toolrl.config import Cell

    for cell in (Cell("none", "rl", 3e-5, 0), Cell("ets", "interleaved", 1.5e-6, 12)):
        args = cli.build_parser().parse_args(
            ["train", "--config", "c", "--data", "d", "--base", "b"] + ["--experiment", "e", "--out", "o", *cell.flags]
        )
        assert cli._cell(args) == cell


def test_learning_rates_are_spelt_exactly():
    """A train job reads its rate back from the path's spelling: 1.5e-6 must not become 2e-6."""
    from toolrl.config import format_lr

    assert [format_lr(x) for x in (1e-3, 3e-5, 1e-6, 1.0, 1e3)] == ["1e-3", "3e-5", "1e-6", "1e0", "1e3"]
    for x in (1.5e-6, 2.5e-4, 1.25e-5, 7e-7, 0.1 + 0.2):
        assert float(format_lr(x)) == x
