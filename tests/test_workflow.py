"""The DAG: what `snakemake -n` plans for the default sweep, overrides, and bad config; the
aggregate rule's outputs against the list its job writes by."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SNAKEMAKE_ENV, snakemake_command

from toolrl.analysis.outputs import OUTPUTS


def snakemake(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        snakemake_command(tmp, args=("--cores", "2", *args)),
        capture_output=True,
        text=True,
        env=SNAKEMAKE_ENV,
        cwd=ROOT,
        timeout=300,
    )


def job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture()
def workdir(tmp_path):
    """An empty working folder: the schema and the report captions are found beside the rule
    files, not in the working folder."""
    return tmp_path


def test_dry_run_lists_every_job(workdir):
    p = snakemake(workdir, "-n")
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout)
    # none, random_reward, ops and sft × synchronous at two lrs, sft × sft_only at the collapsing one
    assert counts["train"] == 9 * 3
    assert counts["evaluate"] == 27 + 1  # one per cell (every split) and one of the base model
    assert counts["aggregate"] == 1 and counts["warmup"] == 1 and counts["prepare"] == 1
    assert counts["mlflow_init"] == 1 and counts["all"] == 1 and counts["total"] == 60
    assert "signal=sft/scheme=sft_only/lr=3e-4/seed=2" in p.stdout
    assert "signal=ops/scheme=rl/lr=3e-5/seed=0" in p.stdout
    assert "signal=sft/scheme=sft_only/lr=3e-5" not in p.stdout


def test_one_evaluate_rule_for_the_cells_and_the_base_model(workdir):
    """The base model is the pseudo-cell `base`: its evaluations are where they always were, from
    the warm-up's model, with `--run base` (the cell in the evaluation JSON is then null). One job
    per model evaluates every split into the split's own file, and writes one log."""
    p = snakemake(workdir, "-n", "-p")
    assert p.returncode == 0, p.stderr
    d = "results/default"
    shells = re.findall(r"^Shell command: (python -m toolrl evaluate .*)$", p.stdout, re.M)
    assert len(shells) == 28
    assert all(" --splits id format_ood content_ood " in s for s in shells)
    [base] = [s for s in shells if " --run base " in s]
    assert f"--model {d}/base/model " in base and f"--out-dir {d}/base/eval " in base
    assert base.endswith(f"2> {d}/logs/eval/base.log")
    cell = "signal=sft/scheme=synchronous/lr=3e-4/seed=2"
    [mine] = [s for s in shells if f" --run runs/{cell} " in s]
    assert f"--model {d}/runs/{cell}/model " in mine and f"--out-dir {d}/runs/{cell}/eval " in mine
    assert mine.endswith(f"2> {d}/logs/eval/runs/{cell}.log")
    outputs = re.findall(r"^rule evaluate:\n    input: .*\n    output: (.*)$", p.stdout, re.M)
    assert f"{d}/base/eval/id.json, {d}/base/eval/format_ood.json, {d}/base/eval/content_ood.json" in outputs


def test_aggregate_outputs_are_the_list_its_job_writes(workdir):
    """The aggregate rule's outputs are toolrl.analysis.outputs.OUTPUTS, and every caption the
    list names is a file of workflow/report/ (and each of those files is named)."""
    p = snakemake(workdir, "--summary")
    assert p.returncode == 0, p.stderr
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    declared = [row[0] for row in rows if len(row) > 2 and row[2] == "aggregate"]
    assert declared == [f"results/default/{o.path}" for o in OUTPUTS]
    captions = {o.caption for o in OUTPUTS if o.caption}
    assert captions == {f.name for f in (ROOT / "workflow" / "report").glob("*.rst")}
    assert all(o.category in ("Tables", "Figures") for o in OUTPUTS if o.caption)


def test_aggregate_writes_exactly_the_list(tmp_path):
    """`report.aggregate` on a small fake sweep writes the files of OUTPUTS and no others."""
    from test_report import BASELINE, _write_sweep

    from toolrl.analysis.report import aggregate

    _write_sweep(tmp_path)
    before = {f for f in tmp_path.rglob("*") if f.is_file()}
    aggregate(tmp_path, BASELINE, n_resamples=50)
    written = {f.relative_to(tmp_path).as_posix() for f in tmp_path.rglob("*") if f.is_file()} - {
        f.relative_to(tmp_path).as_posix() for f in before
    }
    assert written == {o.path for o in OUTPUTS}


def test_config_overrides_reshape_the_grid(workdir):
    p = snakemake(
        workdir,
        "-n",
        "--config",
        "sweep={'seeds': [0, 1, 2, 3, 4], 'learning_rates': [1e-4, 1e-3], "
        "'exclude': [], 'baseline': {'signal': 'none'}}",
    )
    assert p.returncode == 0, p.stderr
    assert job_counts(p.stdout)["train"] == 5 * 5 * 2  # the default's 5 pairs, 5 seeds, 2 lrs, none excluded


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
    assert counts["evaluate"] == counts["train"] + 1  # and the base model
    built = set(re.findall(r"signal=(\w+)/scheme=(\w+)/lr=", p.stdout))
    assert built == {
        ("none", "rl"),
        ("sft", "sequential"),
        ("sft", "synchronous"),
        ("sft", "interleaved"),
        ("ops", "rl"),
        ("hbg", "rl"),
        ("ets", "interleaved"),
        ("prs", "interleaved"),
        ("ctrl", "rl"),
        ("void_filter", "rl"),
    }


@pytest.mark.parametrize(
    "preset, extra, trains, converts",
    [
        ("bfcl-qwen2.5-1.5b.yaml", "world={'bfcl': {'acebench': {'path': '.'}}}", 30, 0),
        ("bfcl-qwen3-1.7b.yaml", "world={'bfcl': {'acebench': {'path': '.'}}}", 30, 0),
        ("smollm2-135m.yaml", None, 18, 1),
        ("bfcl-smollm2-135m.yaml", None, 18, 1),
    ],
)
def test_every_preset_plans(workdir, preset, extra, trains, converts):
    """The real-model presets validate and plan: the paper's 10 pairs × 3 seeds for Qwen (given
    an ACEBench checkout), and a GGUF conversion before the warm-up for SmolLM2."""
    args = ["-n", "--configfile", str(ROOT / "config.yaml"), str(ROOT / "config" / preset)]
    p = snakemake(workdir, *args, *(["--config", extra] if extra else []))
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout)
    assert counts["train"] == trains and counts.get("convert_model", 0) == converts


def test_the_paper_preset_names_the_missing_acebench_checkout(workdir):
    preset = ROOT / "config" / "bfcl-qwen2.5-1.5b.yaml"
    p = snakemake(workdir, "-n", "--configfile", str(ROOT / "config.yaml"), str(preset))
    assert p.returncode != 0 and "world.bfcl.acebench.path" in p.stdout + p.stderr


def test_a_stage_prints_nothing_to_stdout(tmp_path):
    """`python -m toolrl <stage>` (every command that takes --config, the ones the rules run) sends
    stdout to stderr, which the rules write to the job's log: TRL prints a dictionary per step,
    which would otherwise fill Snakemake's console. Checked with a print at exit, after each stage
    failed on a missing config; `schema` keeps printing."""
    import argparse
    import subprocess

    from toolrl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes_config = {n for n, p in sub.choices.items() if any("--config" in a.option_strings for a in p._actions)}
    assert {"prepare", "warmup", "train", "evaluate", "aggregate"} <= takes_config
    code = (
        "import atexit, runpy, sys; atexit.register(print, 'FROM-STDOUT'); "
        "sys.argv = ['toolrl'] + sys.argv[1:]; runpy.run_module('toolrl', run_name='__main__')"
    )
    for stage in ("prepare", "aggregate"):
        required = {"prepare": ["--out", str(tmp_path)], "aggregate": ["--experiment", str(tmp_path / "e.json")]}
        p = subprocess.run(
            [sys.executable, "-c", code, stage, "--config", str(tmp_path / "none.yaml"), *required[stage]],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 2 and p.stdout == "" and "FROM-STDOUT" in p.stderr, (stage, p.stdout, p.stderr)
    p = subprocess.run([sys.executable, "-c", code, "schema"], capture_output=True, text=True)
    assert p.returncode == 0 and "FROM-STDOUT" in p.stdout and "properties" in p.stdout


def test_every_plugin_name_matches_the_cell_wildcards():
    """A signal or scheme whose name the rules' wildcard constraints cannot match would leave its
    cells' files without a rule (sft_only, with an underscore, first did)."""
    import ast

    from toolrl import plugins

    source = (ROOT / "workflow/rules/common.smk").read_text()
    constraints = ast.literal_eval(re.search(r"^CELL_WILDCARDS = (\{.*\})$", source, re.M)[1])
    for kind, names in (("signal", plugins.signals()), ("scheme", plugins.schemes())):
        for name in names:
            assert re.fullmatch(constraints[kind], name), f"{kind} {name!r} does not match {constraints[kind]!r}"
