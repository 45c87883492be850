"""The DAG: what `snakemake -n` plans for the default sweep, overrides, and bad config."""

from __future__ import annotations

import re
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Rules call `python -m toolrl`: put this interpreter first on PATH, as an activated venv does.
ENV = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def snakemake(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp),
         "--configfile", str(ROOT / "config.yaml"), "--cores", "2", *args],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
    )


def job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture()
def workdir(tmp_path):
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    return tmp_path


def test_dry_run_lists_every_job(workdir):
    p = snakemake(workdir, "-n")
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout)
    assert counts["train"] == 12  # none at two lrs, sft and ops at the collapsing one, 3 seeds
    assert counts["evaluate"] == 36  # three evaluations per cell
    assert counts["evaluate_base"] == 3
    assert counts["aggregate"] == 1 and counts["warmup"] == 1 and counts["prepare"] == 1
    assert "signal=sft/scheme=synchronous/lr=1e-3/seed=2" in p.stdout
    assert "signal=ops/scheme=rl/lr=3e-5" not in p.stdout


def test_config_overrides_reshape_the_grid(workdir):
    p = snakemake(workdir, "-n", "--config", "sweep={'seeds': [0, 1, 2, 3, 4], 'learning_rates': [1e-4, 1e-3], "
                  "'exclude': [], 'baseline': {'signal': 'none'}}")
    assert p.returncode == 0, p.stderr
    assert job_counts(p.stdout)["train"] == 3 * 5 * 2


@pytest.mark.parametrize(
    "override,needle",
    [
        ("sweep={'signals': ['bogus']}", "bogus"),
        ("rl={'steps': 0}", "minimum"),
        ("sweep={'seeds': []}", "seeds"),
        ("sweep={'signals': ['ets'], 'schemes': ['rl']}", "no signal × scheme pair"),
        ("signals={'ets': {'rule': 'most'}}", "most"),
    ],
)
def test_bad_config_stops_before_any_job(workdir, override, needle):
    p = snakemake(workdir, "-n", "--config", override)
    assert p.returncode != 0
    assert needle in p.stdout + p.stderr
    assert not (workdir / "results").exists() or not any((workdir / "results").rglob("*.jsonl"))


def test_all_signals_and_schemes_build_exactly_the_meaningful_cells(workdir):
    p = snakemake(workdir, "-n", "--configfile", str(ROOT / "config" / "full.yaml"))
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout)
    assert counts["train"] == 10 * 3 * 3  # 10 meaningful signal × scheme pairs, 3 lrs, 3 seeds
    assert counts["evaluate"] == 3 * counts["train"]
    built = set(re.findall(r"signal=(\w+)/scheme=(\w+)/lr=", p.stdout))
    assert built == {("none", "rl"), ("sft", "sequential"), ("sft", "synchronous"), ("sft", "interleaved"),
                     ("ops", "rl"), ("hbg", "rl"), ("ets", "interleaved"), ("prs", "interleaved"),
                     ("ctrl", "rl"), ("void_filter", "rl")}


@pytest.mark.parametrize("preset, extra, trains, converts", [
    ("bfcl-qwen2.5-1.5b.yaml", "world={'bfcl': {'acebench': {'path': '.'}}}", 30, 0),
    ("bfcl-qwen3-1.7b.yaml", "world={'bfcl': {'acebench': {'path': '.'}}}", 30, 0),
    ("smollm2-135m.yaml", None, 18, 1),
    ("bfcl-smollm2-135m.yaml", None, 18, 1),
])
def test_every_preset_plans(workdir, preset, extra, trains, converts):
    """The real-model presets validate and plan: the paper's 10 pairs × 3 seeds for Qwen (given
    an ACEBench checkout), and a GGUF conversion before the warm-up for SmolLM2."""
    args = ["-n", "--configfile", str(ROOT / "config.yaml"), str(ROOT / "config" / preset)]
    p = snakemake(workdir, *args, *(["--config", extra] if extra else []))
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout)
    assert counts["train"] == trains and counts.get("convert_model", 0) == converts


def test_the_paper_preset_names_the_missing_acebench_checkout(workdir):
    p = snakemake(workdir, "-n", "--configfile", str(ROOT / "config.yaml"), str(ROOT / "config" / "bfcl-qwen2.5-1.5b.yaml"))
    assert p.returncode != 0 and "world.bfcl.acebench.path" in p.stdout + p.stderr
