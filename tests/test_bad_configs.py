"""The error a user gets for each kind of bad configuration, word for word.

A sweep that starts with a bad config should stop before the first job, with one message that
names the key and says what is allowed; these are the messages of `config.load` (every job and the
Snakefile go through it). Snakemake validates the schema first, so for type and enum errors a user
of `snakemake` sees the schema's message: the last test checks that both layers stop the run and
name the culprit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, snakemake

from toolrl.config import ConfigError, load

# (override merged over config.yaml, the exact message)
TABLE: list[tuple[dict, str]] = [
    # unknown keys
    ({"sweep": {"bogus": 1}}, "config key 'sweep.bogus': Key 'bogus' not in 'SweepConfig'"),
    ({"typo_section": {}}, "config key 'typo_section': Key 'typo_section' not in 'Config'"),
    # wrong types and out-of-range values
    ({"rl": {"steps": "many"}}, "config key 'rl.steps': Value 'many' of type 'str' could not be converted to Integer"),
    ({"rl": {"steps": 0}}, "config key 'rl.steps': must be > 0, got 0"),
    ({"rl": {"temperature": -1.0}}, "config key 'rl.temperature': must be > 0 (GRPO samples), got -1.0"),
    ({"rl": {"num_generations": 1}}, "config key 'rl.num_generations': GRPO needs at least 2 generations per group"),
    (
        {"rl": {"micro_batch_size": 5}},
        "config key 'rl.micro_batch_size': must divide rl.prompts_per_step × rl.num_generations = 32, got 5",
    ),
    ({"rollout": {"max_new_tokens": 0}}, "config key 'rollout.max_new_tokens': must be > 0, got 0"),
    ({"resources": {"threads": 0}}, "config key 'resources.threads': must be > 0, got 0"),
    ({"resources": {"gpus": -1}}, "config key 'resources.gpus': must be >= 0, got -1"),
    ({"aggregate": {"confidence": 1.5}}, "config key 'aggregate.confidence': must be in (0, 1)"),
    ({"aggregate": {"correction": "fdr"}}, "config key 'aggregate.correction': choose from holm, bonferroni, bh, none"),
    ({"world": {"n_eval_tasks": 0}}, "config key 'world.n_eval_tasks': must be > 0, got 0"),
    # impossible grids
    (
        {"sweep": {"signals": ["magic"]}},
        "config key 'sweep.signals': unknown value 'magic' "
        "(choose from ctrl, ets, hbg, none, ops, prs, random_reward, sft, void_filter)",
    ),
    (
        {"sweep": {"schemes": ["sometimes"]}},
        "config key 'sweep.schemes': unknown value 'sometimes' "
        "(choose from interleaved, rl, sequential, sft_only, synchronous)",
    ),
    ({"sweep": {"learning_rates": [0.0]}}, "config key 'sweep.learning_rates': learning rate 0.0 must be > 0"),
    ({"sweep": {"seeds": []}}, "config key 'sweep.seeds': must not be empty"),
    ({"sweep": {"seeds": [0, 0]}}, "config key 'sweep.seeds': must not repeat a seed"),
    (
        {"sweep": {"exclude": [{"signal": s} for s in ("none", "random_reward", "sft", "ops")]}},
        "config key 'sweep.signals': no signal × scheme pair of the grid is in sweep.pairs "
        "(or sweep.exclude drops every cell)",
    ),
    (
        {"sweep": {"baseline": {"signal": "sft", "scheme": "rl"}}},
        "config key 'sweep.baseline': matches no cell of the grid",
    ),
    (
        {"signals": {"ops": {"k": 8}}},
        "config key 'signals.ops.k': must be in [1, rl.num_generations - 1] = [1, 7], got 8",
    ),
    # unknown formats and backends
    ({"world": {"backend": "gym"}}, "config key 'world.backend': unknown backend 'gym' (choose from bfcl, synthetic)"),
    (
        {"world": {"train_format": "xml"}},
        "config key 'world.train_format': unknown format 'xml' (choose from json, python)",
    ),
    ({"world": {"ood_format": "json"}}, "config key 'world.ood_format': must differ from world.train_format"),
    ({"world": {"prompt_style": "verbose"}}, "config key 'world.prompt_style': choose from compact, full"),
    (
        {"world": {"backend": "bfcl", "prompt_style": "compact"}},
        "config key 'world.prompt_style': the bfcl backend shows the function docs as they are: set it to full",
    ),
    # missing files and folders
    (
        {"model": {"name_or_path": "/no/such/checkpoint"}},
        "config key 'model.name_or_path': path '/no/such/checkpoint' does not exist",
    ),
]


def _blocked_results_dir(tmp_path: Path) -> str:
    """A results_dir that cannot be created even by root: its parent is a file."""
    (tmp_path / "a_file").write_text("")
    return str(tmp_path / "a_file" / "results")


def test_the_table_is_big_enough():
    assert len(TABLE) + 1 >= 20  # + the unwritable results_dir below


@pytest.mark.parametrize("override,message", TABLE, ids=[m.split("'")[1] for _, m in TABLE])
def test_bad_config_gives_exactly_this_error(override, message):
    with pytest.raises(ConfigError) as e:
        load(ROOT / "config.yaml", override)
    assert str(e.value) == message


def test_unwritable_results_dir(tmp_path):
    bad = _blocked_results_dir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load(ROOT / "config.yaml", {"results_dir": bad})
    assert str(e.value) == (
        f"config key 'results_dir': '{bad}' cannot be created or written here (the sweep writes every output under it)"
    )


@pytest.mark.parametrize(
    "override,shown",
    [
        ({"sweep": {"bogus": 1}}, "Additional properties are not allowed ('bogus' was unexpected)"),  # the schema
        ({"world": {"backend": "gym"}}, "'gym' is not one of ['bfcl', 'synthetic']"),  # the schema
        ({"model": {"name_or_path": "/no/such/checkpoint"}}, "config key 'model.name_or_path'"),  # config.load
        ("results_dir", "config key 'results_dir'"),  # config.load
    ],
)
def test_snakemake_stops_before_any_job_and_names_the_key(tmp_path, override, shown):
    if override == "results_dir":
        override = {"results_dir": _blocked_results_dir(tmp_path)}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    p = snakemake(tmp_path, tmp_path / "bad.yaml", args=("-n", "--cores", "1"))
    assert p.returncode != 0
    assert shown in p.stdout + p.stderr
    assert not (tmp_path / "results").exists()
