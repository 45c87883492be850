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
    assert {(c.signal, c.scheme) for c in cells} == {("none", "rl"), ("sft", "sequential")}
    assert len(cells) == 2 * len(cfg.sweep.seeds) * len(cfg.sweep.learning_rates)


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
]


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
        ({"sweep": {"exclude": []}}, "signal 'none' does not combine with scheme 'sequential'"),
        ({"sweep": {"baseline": {"signal": "sft", "scheme": "rl"}}}, "sweep.baseline"),
        ({"world": {"ood_domains": ["bank"]}}, "world.ood_domains"),
        ({"world": {"train_domains": ["mars"]}}, "world.train_domains"),
        ({"world": {"ood_format": "json"}}, "world.ood_format"),
        ({"model": {"name_or_path": "/no/such/checkpoint"}}, "model.name_or_path"),
        ({"sweep": {"signals": ["ops"]}}, "not implemented yet"),
    ],
)
def test_semantic_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load(ROOT / "config.yaml", override)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load(tmp_path / "nope.yaml")


def test_section_hash_tracks_only_its_sections():
    a = load(ROOT / "config.yaml")
    b = load(ROOT / "config.yaml", {"aggregate": {"n_resamples": 999}})
    assert section_hash(a, "rl", "sft") == section_hash(b, "rl", "sft")
    assert section_hash(a, "aggregate") != section_hash(b, "aggregate")


def test_command_line_strings_are_read_as_scalars():
    from toolrl.config import coerce_scalars

    raw = {"sweep": {"seeds": ["0", "1"], "learning_rates": ["1e-4"], "name": "x"}, "model": {"name_or_path": "null"}}
    assert coerce_scalars(raw) == {"sweep": {"seeds": [0, 1], "learning_rates": [1e-4], "name": "x"},
                                   "model": {"name_or_path": None}}
