"""A signal from outside toolrl/: an installed distribution (a package and its dist-info with an
entry point in the `toolrl.signals` group, as `pip install` lays them out) that the registry
finds, the config validates, `snakemake -n` plans and the GRPO trainer runs for one real step.
No file under toolrl/ names it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import snakemake

from toolrl import config, plugins
from toolrl.formats import get_format
from toolrl.training import grpo

ROOT = Path(__file__).resolve().parents[1]
NAME = "entropy_nudge"

PACKAGE = '''
"""A toy signal: one extra loss term on expert batches (their mean token entropy, weighted) and a
count of the trajectories it saw, so a test can see each hook act."""

from dataclasses import dataclass, field

import torch

from toolrl.config import check
from toolrl.plugins import LossTerm, Signal


@dataclass
class NudgeConfig:
    weight: float = field(default=0.5, metadata={"help": "weight of the entropy term", "minimum": 0})
    batch_size: int = field(default=2, metadata={"help": "expert trajectories per step", "minimum": 1})


def entropy(logits, labels):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    where = labels[:, 1:] != -100
    return -((logp.exp() * logp).sum(-1) * where).sum() / where.sum().clamp(min=1)


class EntropyNudge(Signal):
    name = "entropy_nudge"
    summary = "a toy: mean token entropy of expert batches, added to the loss"
    schemes = ("rl",)
    config = NudgeConfig
    reads = ("diagnostics.window",)

    @classmethod
    def validate(cls, cfg, used):
        check(cfg.signals.entropy_nudge.weight < 10, "signals.entropy_nudge.weight", "must be < 10")

    def loss_terms(self, ctx):
        return [LossTerm("nudge_entropy", self.section.weight, self.section.batch_size, entropy)]

    def filter_rollouts(self, rollouts, masks, metrics):
        metrics["nudge/seen"] = float(len(rollouts))
        return masks
'''


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """The toy package installed into a folder on sys.path (and PYTHONPATH, for subprocesses)."""
    site = tmp_path / "site"
    (site / "toy_nudge").mkdir(parents=True)
    (site / "toy_nudge" / "__init__.py").write_text(PACKAGE)
    info = site / "toy_nudge-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-nudge\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[toolrl.signals]\n{NAME} = toy_nudge:EntropyNudge\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    _reload()
    yield site
    monkeypatch.undo()
    sys.modules.pop("toy_nudge", None)
    _reload()


def _reload() -> None:
    for f in (plugins.signals, plugins.schemes, config._section_classes, config.config_class):
        f.cache_clear()


def _override(**rl) -> dict:
    return {
        "results_dir": "results",
        "sweep": {
            "name": "toy",
            "signals": ["none", NAME],
            "schemes": ["rl"],
            "learning_rates": [1e-3],
            "seeds": [0],
            "exclude": [],
            "baseline": {"signal": "none", "scheme": "rl", "lr": 1e-3},
        },
        "signals": {NAME: {"weight": 0.25}},
        "rl": rl or {},
    }


def test_no_file_under_toolrl_names_the_toy():
    hits = [p for p in (ROOT / "toolrl").rglob("*.py") if NAME in p.read_text()]
    assert hits == []


def test_the_registry_and_the_config_take_the_installed_signal(site):
    assert NAME in plugins.signals() and plugins.default_pairs()[NAME] == ["rl"]
    cfg = config.load(ROOT / "config.yaml", _override())
    assert cfg.signals.entropy_nudge.weight == 0.25 and cfg.signals.entropy_nudge.batch_size == 2
    assert [c.path for c in config.grid(cfg)][-1] == f"signal={NAME}/scheme=rl/lr=1e-3/seed=0"
    assert config.cell_sections(NAME, "rl") == ["rl", "rollout", f"signals.{NAME}", "diagnostics.window"]
    with pytest.raises(config.ConfigError, match=f"config key 'signals.{NAME}.weight': must be < 10"):
        config.load(ROOT / "config.yaml", {**_override(), "signals": {NAME: {"weight": 50}}})
    with pytest.raises(config.ConfigError, match=f"signals.{NAME}.colour"):
        config.load(ROOT / "config.yaml", {**_override(), "signals": {NAME: {"colour": "red"}}})
    listing = subprocess.run(
        [sys.executable, "-m", "toolrl", "signals"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
        cwd=site,
    ).stdout
    assert f"{NAME} " in listing and "[toy_nudge]" in listing
    named = [line for line in listing.splitlines() if re.match(r"  \S", line)]
    assert len({re.match(r"  \S+ +", line).end() for line in named}) == 1  # one column, however long a name
    schema = subprocess.run(
        [sys.executable, "-m", "toolrl", "schema"], capture_output=True, text=True, check=True, env=os.environ, cwd=site
    ).stdout
    assert f"  {NAME}:" in schema and "weight of the entropy term" in schema


def test_snakemake_plans_the_toy_cells(site, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    good, bad = work / "toy.yaml", work / "bad.yaml"
    good.write_text(yaml.safe_dump(_override()))
    bad.write_text(yaml.safe_dump({**_override(), "signals": {NAME: {"weight": -1}}}))
    p = snakemake(work, good, args=("-n", "--cores", "1"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"signal={NAME}/scheme=rl/lr=1e-3/seed=0" in p.stdout
    # Snakemake validated against a schema generated with the plugin's section, in its own folder.
    assert f"  {NAME}:" in (work / ".snakemake" / "toolrl" / "config.schema.yaml").read_text()
    p = snakemake(work, bad, args=("-n", "--cores", "1"))
    assert p.returncode != 0 and "-1 is less than the minimum of 0" in p.stdout + p.stderr


def test_one_real_grpo_step_runs_the_toys_hooks(site, splits, tokenizer):
    from toolrl.config import TinyModelConfig
    from toolrl.models.model import build_tiny_model

    cfg = config.load(ROOT / "config.yaml", _override(steps=1, prompts_per_step=2, num_generations=2))
    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    )
    before = [p.detach().clone() for p in model.parameters()]
    cfg.rollout.max_new_tokens, cfg.rollout.max_messages = 12, 8
    fmt = get_format("json")
    ctx = grpo.cell_context(cfg, tokenizer, splits["rl"][:8], fmt, 0)
    signal, scheme = grpo.plugins_for(cfg, NAME, "rl")
    rows: list[dict] = []
    grpo.train(model, ctx, signal, scheme, 1e-3, rows.append)
    assert len(rows) == 1 and rows[0]["phase"] == "rl"
    assert rows[0]["nudge/seen"] == 4.0  # filter_rollouts saw the step's 2 × 2 rollouts
    assert rows[0]["nudge_entropy"] > 0  # the loss term ran on an expert batch
    # A random model never succeeds, so GRPO alone leaves the weights; the toy's term moves them.
    assert any(not (a == b).all() for a, b in zip(before, model.parameters(), strict=True))


def test_an_unknown_member_kind_is_refused(splits, tokenizer):
    from toolrl.config import RLConfig, RolloutConfig

    class Typo(plugins.Signal):
        name = "typo"

        def member_kind(self, member):
            return "experts" if member == 0 else "policy"

    cfg = config.load(ROOT / "config.yaml")
    ctx = grpo.cell_context(cfg, tokenizer, splits["rl"][:4], get_format("json"), 0)
    with pytest.raises(plugins.PluginError, match="signal 'typo': member_kind gave experts"):
        grpo.MultiTurnRollout(ctx, Typo(cfg), RolloutConfig(), RLConfig(num_generations=4))


def test_a_broken_entry_point_is_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[toolrl.signals]\nbroken = no_such_module:Nothing\n")
    monkeypatch.syspath_prepend(str(site))
    _reload()
    try:
        with pytest.raises(plugins.PluginError, match=r"entry point 'broken' of group 'toolrl\.signals'"):
            plugins.signals()
    finally:
        monkeypatch.undo()
        _reload()


def test_every_builtin_declares_what_the_sweep_needs():
    cfg = config.load(ROOT / "config.yaml")
    for name, cls in [*plugins.signals().items(), *plugins.schemes().items()]:
        assert cls.summary, name
        config.sections(cfg, *cls.sections())  # every section it reads exists (a KeyError otherwise)
    for name, cls in plugins.signals().items():
        assert cls.schemes and set(cls.schemes) <= set(plugins.schemes()), name
