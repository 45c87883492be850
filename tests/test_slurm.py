"""The Slurm profile against a real single-node Slurm started on this machine.

scripts/ci_slurm.sh starts slurmctld, slurmd and munge (installing them with apt-get if missing)
on a node with two fake GPUs; a one-cell sweep then runs with `--workflow-profile
profiles/slurm`, every job submitted with sbatch. The checks: the sweep finishes, each
job was its own Slurm job, and the sbatch flags carry the config's resources (--gpus=1 on the
GPU rules, --mem, -t, -p, and the train jobs' --signal=URG@ warning). The train job is warned
mid-run as its time limit would warn it (`scancel --signal=URG`, which reaches the job's step
like `--signal=URG@N`): it saves a checkpoint at the end of its step and exits, Snakemake's
retry resumes it, and the sweep's results equal those of the same sweep run locally without a
stop. Starting the daemons needs root; CI runs as root. A dry run through the profile, which
needs no Slurm, checks the partition and account lookups."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SNAKEMAKE_ENV, run_sweep, snakemake_command

from toolrl.models import model as models

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "ci_slurm.sh"
PROFILE = ROOT / "profiles" / "slurm"
GPU_RULES = {"warmup", "train", "evaluate"}
CPU_RULES = {"prepare", "mlflow_init", "aggregate"}
# One cell, one seed, a few steps of everything: 7 Slurm jobs, and the train job's retry. The
# train job has enough steps to be warned mid-run, and saves only when warned (save_every: 0).
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
    "rl": {"steps": 24, "prompts_per_step": 2, "num_generations": 2},
    "checkpoint": {"save_every": 0},
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


def _warn_the_train_job(work: Path, sweep: subprocess.Popen) -> str | None:
    """Once the train job has logged 3 steps, send its Slurm job SIGURG; returns the job id."""
    log = None
    while sweep.poll() is None:
        log = log or next(iter((work / "results" / "slurm" / "runs").rglob("train_log.jsonl")), None)
        if log is not None and log.exists() and log.read_bytes().count(b"\n") >= 3:
            q = subprocess.run(["squeue", "-h", "-t", "running", "-o", "%i|%k"], capture_output=True, text=True)
            running = (line.split("|", 1) for line in q.stdout.split())
            job = next((i for i, comment in running if comment.startswith("rule_train")), None)
            if job is not None:
                subprocess.run(["scancel", "--signal=URG", job], check=True, timeout=30)
                return job
        time.sleep(0.05)
    return None


@pytest.fixture(scope="module")
def sweep(slurm, tmp_path_factory):
    """The tiny sweep through sbatch, its train job warned mid-run; returns the work folder,
    Snakemake's output and the warned Slurm job's id."""
    work = tmp_path_factory.mktemp("slurm-sweep")
    shutil.copytree(ROOT / "workflow", work / "workflow")
    tiny = work / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    env = {**SNAKEMAKE_ENV, "TOOLRL_SLURM_PARTITION": "debug", "TOOLRL_SLURM_STATUS_COMMAND": "squeue"}
    env.pop("TOOLRL_SLURM_ACCOUNT", None)
    cmd = snakemake_command(
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
    )
    with (work / "snakemake.out").open("w+") as out_file:
        p = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            warned = _warn_the_train_job(work, p)
            p.wait(timeout=1500)
        finally:
            p.kill()
        out_file.seek(0)
        out = out_file.read()
    if p.returncode != 0:
        logs = "\n".join(f"== {f}\n{f.read_text()[-2000:]}" for f in sorted(work.rglob("*.log")))
        pytest.fail(f"snakemake under Slurm failed:\n{out[-6000:]}\n{logs[-20000:]}")
    return work, out, warned


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same sweep run locally, straight through."""
    work = tmp_path_factory.mktemp("local-sweep")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return run_sweep(work, ROOT / "config" / "smoke.yaml", work / "tiny.yaml", sweep="slurm")[0]


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
    work, _, _ = sweep
    d = work / "results" / "slurm"
    assert (d / "tables" / "main.md").exists()
    assert len(list((d / "runs").rglob("eval/*.json"))) == 3
    assert len(list((d / "base" / "eval").glob("*.json"))) == 3


@pytest.mark.slurm
def test_sbatch_flags_carry_the_resources(sweep):
    _, out, _ = sweep
    calls = _sbatch_calls(out)
    assert set(calls) == GPU_RULES | CPU_RULES, sorted(calls)
    assert {r: len(c) for r, c in calls.items()} == {
        "prepare": 1,
        "mlflow_init": 1,
        "warmup": 1,
        "train": 2,  # warned, then retried
        "evaluate": 1 + 1,  # cell, base: every split in one job
        "aggregate": 1,
    }
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
    # A quarter of the 10-minute limit: the default lead (600 s) would warn the job at its start.
    assert all("--signal=URG@150" in line for line in calls["train"])
    assert not any("--signal" in line for rule in calls if rule != "train" for line in calls[rule])
    assert all("--cpus-per-task=2" in line for line in calls["warmup"])
    assert all("--cpus-per-task=1" in line for line in calls["train"] + calls["evaluate"])


@pytest.mark.slurm
def test_each_job_was_its_own_slurm_job(sweep):
    """squeue still lists finished jobs (MinJobAge=600): one Slurm job per rule job, each
    COMPLETED but the warned train job."""
    _, out, warned = sweep
    n_calls = sum(len(c) for c in _sbatch_calls(out).values())
    ids = set(re.findall(r"submitted with SLURM jobid (\d+)", out))
    assert len(ids) == n_calls, out[-3000:]
    q = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    jobs = {i: (state, comment) for i, state, comment in (line.split("|", 2) for line in q.split())}
    assert ids <= set(jobs), (ids, jobs)
    assert warned in ids and jobs[warned][0] == "FAILED", jobs  # it exited 75 for the retry
    assert {jobs[i][0] for i in ids - {warned}} == {"COMPLETED"}, jobs
    assert {jobs[i][1].split("_wildcards")[0].removeprefix("rule_") for i in ids} == GPU_RULES | CPU_RULES


@pytest.mark.slurm
def test_a_warned_train_job_resumes_and_the_results_equal_an_uninterrupted_run(sweep, uninterrupted):
    work, _, warned = sweep
    assert warned is not None, "the train job ended before it could be warned"
    a, b = uninterrupted, work / "results" / "slurm"
    [log] = (b / "logs" / "train").rglob("*.log")
    assert "resuming" in log.read_text()  # the retry's log (the warned attempt's was replaced)
    [cell] = [p.parent.relative_to(a) for p in (a / "runs").rglob("run.json")]
    assert json.loads((b / cell / "run.json").read_text())["resumed"]
    timing = re.compile(r"(seconds|step_time|train_runtime|_per_second)$")

    def rows(d: Path) -> list[dict]:
        lines = (d / cell / "train_log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not timing.search(k)} for x in lines]

    assert len(rows(a)) == TINY["rl"]["steps"] and rows(a) == rows(b)
    wa, wb = (models.load(d / cell / "model")[0].state_dict() for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert [g["splits"] for g in sa["groups"]] == [g["splits"] for g in sb["groups"]]
    assert (a / "tables" / "main.md").read_text() == (b / "tables" / "main.md").read_text()
