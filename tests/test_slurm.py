"""The Slurm profile against a real single-node Slurm started on this machine.

scripts/ci_slurm.sh starts slurmctld, slurmd and munge (installing them with apt-get if missing)
on a node with two fake GPUs; a one-cell sweep then runs with `--workflow-profile
profiles/slurm`, every job submitted with sbatch. The checks: the sweep finishes, each
job was its own Slurm job and completed, and the sbatch flags carry the config's resources
(--gpus=1 on the GPU rules, --mem, -t, -p). Starting the daemons needs root; CI runs as root.
A dry run through the profile, which needs no Slurm, checks the partition and account lookups."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE_ENV, snakemake_command

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "ci_slurm.sh"
PROFILE = ROOT / "profiles" / "slurm"
GPU_RULES = {"warmup", "train", "evaluate"}
CPU_RULES = {"prepare", "mlflow_init", "aggregate"}
# One cell, one seed, a few steps of everything: 11 Slurm jobs.
TINY = {
    "sweep": {
        "name": "slurm",
        "signals": ["none"],
        "schemes": ["rl"],
        "learning_rates": [1.0e-3],
        "seeds": [0],
        "exclude": [],
        "baseline": {"signal": "none", "scheme": "rl", "lr": 1.0e-3},
    },
    "world": {"n_warmup_tasks": 200, "n_rl_tasks": 20, "n_eval_tasks": 4},
    "warmup": {"steps": 4, "echo_steps": 2, "echo_replay_until": 3, "eval_every": 0, "batch_size": 4},
    "rl": {"steps": 1, "prompts_per_step": 2, "num_generations": 2},
    "rollout": {"max_new_tokens": 16},
    "aggregate": {"n_resamples": 50},
    "resources": {"gpus": 1, "train_mem_mb": 1000, "eval_mem_mb": 500, "train_runtime": 10, "eval_runtime": 5},
}


def _daemons_env(logdir: Path) -> dict[str, str]:
    # Two fake GPUs, so that two GPU jobs can share the two cores.
    return {**os.environ, "SLURM_CI_DIR": str(logdir), "SLURM_CI_GPUS": "2"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running local Slurm for this module; stopped afterwards, whatever happened."""
    if os.geteuid() != 0:
        why = "is installed but" if shutil.which("slurmctld") else "is not installed, and"
        pytest.skip(f"Slurm {why} scripts/ci_slurm.sh needs root to configure and start it (CI runs as root)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it (scripts/ci_slurm.sh)")
    logdir = tmp_path_factory.mktemp("slurm-daemons")
    env = _daemons_env(logdir)
    try:
        p = subprocess.run(
            ["bash", str(SCRIPT), "start"], check=False, capture_output=True, text=True, env=env, timeout=900
        )
        if p.returncode != 0:
            pytest.fail(f"scripts/ci_slurm.sh start failed:\n{p.stdout}\n{p.stderr}")
        yield logdir
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], check=False, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def sweep(slurm, tmp_path_factory):
    """The tiny sweep through sbatch; returns the work folder and Snakemake's output."""
    work = tmp_path_factory.mktemp("slurm-sweep")
    shutil.copytree(ROOT / "workflow", work / "workflow")
    tiny = work / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    env = {**SNAKEMAKE_ENV, "TOOLRL_SLURM_PARTITION": "debug", "TOOLRL_SLURM_STATUS_COMMAND": "squeue"}
    env.pop("TOOLRL_SLURM_ACCOUNT", None)
    p = subprocess.run(
        snakemake_command(
            work,
            ROOT / "config" / "smoke.yaml",
            tiny,
            args=(
                "--workflow-profile",
                str(PROFILE),
                "--verbose",
                # Poll soon: these jobs take seconds, not hours. Keep the job logs for the failure report.
                "--slurm-init-seconds-before-status-checks",
                "1",
                "--slurm-keep-successful-logs",
            ),
        ),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    out = p.stdout + p.stderr  # Snakemake logs to both
    if p.returncode != 0:
        logs = "\n".join(f"== {f}\n{f.read_text()[-2000:]}" for f in sorted(work.rglob("*.log")))
        pytest.fail(f"snakemake under Slurm failed:\n{p.stderr[-6000:]}\n{logs[-20000:]}")
    return work, out


def test_profile_reads_partition_account_and_gpus_without_slurm(tmp_path):
    """A dry run needs no Slurm: the profile's environment lookups and the config's resources."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    cmd = snakemake_command(tmp_path, tmp_path / "tiny.yaml", args=("-n", "--workflow-profile", str(PROFILE)))
    for extra, partition, account in (
        ({"TOOLRL_SLURM_PARTITION": "gpu-a100", "TOOLRL_SLURM_ACCOUNT": "1234"}, "gpu-a100", "1234"),
        ({}, "", ""),
    ):
        env = {k: v for k, v in SNAKEMAKE_ENV.items() if not k.startswith("TOOLRL_SLURM_")} | extra
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        res = dict(re.findall(r"^rule (\w+):.*?^\s+resources: (.*?)$", p.stdout + p.stderr, re.MULTILINE | re.DOTALL))
        assert set(res) >= GPU_RULES | CPU_RULES, sorted(res)
        for rule, line in res.items():
            assert f"slurm_partition={partition}," in line and f"slurm_account={account}," in line, line
            assert ("gpu=1" in line) == (rule in GPU_RULES), line
        assert "runtime=10" in res["train"] and "mem_mb=1000," in res["train"]
        assert "runtime=5" in res["evaluate"] and "runtime=30" in res["aggregate"]


def _sbatch_calls(out: str) -> dict[str, list[str]]:
    """The `sbatch call:` lines, by rule (the plugin puts `--comment rule_<name>...` in each)."""
    calls: dict[str, list[str]] = {}
    for line in dict.fromkeys(ln for ln in out.splitlines() if "sbatch call:" in ln):  # stdout and stderr repeat
        rule = re.search(r"--comment '?rule_([a-z_]+?)(?:_wildcards\S*)?'? ", line)
        assert rule, line
        calls.setdefault(rule.group(1), []).append(line)
    return calls


@pytest.mark.slurm
def test_sweep_finishes_through_slurm(sweep):
    work, _ = sweep
    d = work / "results" / "slurm"
    assert (d / "tables" / "main.md").exists()
    assert len(list((d / "runs").rglob("eval/*.json"))) == 3
    assert len(list((d / "base" / "eval").glob("*.json"))) == 3


@pytest.mark.slurm
def test_sbatch_flags_carry_the_resources(sweep):
    _, out = sweep
    calls = _sbatch_calls(out)
    assert set(calls) == GPU_RULES | CPU_RULES, sorted(calls)
    assert {r: len(c) for r, c in calls.items()} == {
        "prepare": 1,
        "mlflow_init": 1,
        "warmup": 1,
        "train": 1,
        "evaluate": 3 + 3,
        "aggregate": 1,
    }  # cell, base
    expect = {
        "warmup": (1000, 10),
        "train": (1000, 10),
        "evaluate": (500, 5),
        "prepare": (2000, 30),
        "mlflow_init": (2000, 30),
        "aggregate": (2000, 30),
    }
    for rule, lines in calls.items():
        mem, minutes = expect[rule]
        for line in lines:
            assert re.search(r" -p '?debug'? ", line), line
            assert f" --mem {mem} " in line, line
            assert f" -t {minutes} " in line, line
            assert " -A " not in line, line  # no account set: none sent
            assert ("--gpus=1" in line) == (rule in GPU_RULES), line
    assert all("--cpus-per-task=2" in line for line in calls["warmup"])
    assert all("--cpus-per-task=1" in line for line in calls["train"] + calls["evaluate"])


@pytest.mark.slurm
def test_each_job_was_its_own_slurm_job(sweep):
    """squeue still lists finished jobs (MinJobAge=600): one COMPLETED Slurm job per rule job."""
    _, out = sweep
    n_calls = sum(len(c) for c in _sbatch_calls(out).values())
    ids = set(re.findall(r"submitted with SLURM jobid (\d+)", out))
    assert len(ids) == n_calls, out[-3000:]
    q = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    jobs = {i: (state, comment) for i, state, comment in (line.split("|", 2) for line in q.split())}
    assert ids <= set(jobs), (ids, jobs)
    assert {jobs[i][0] for i in ids} == {"COMPLETED"}, jobs
    assert {jobs[i][1].split("_wildcards")[0].removeprefix("rule_") for i in ids} == GPU_RULES | CPU_RULES
