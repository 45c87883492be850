"""kill -9 resumability: a tiny sweep killed six times, resumed the way a user would, must finish
with the uninterrupted run's results, redoing only the jobs that had not finished.

The sweep is the smoke sweep cut down (one seed, a 20-step warm-up, 6 evaluation tasks per
split) so that two full runs fit: it keeps two train jobs, their evaluations, the base model's,
the aggregate and MLflow. The interrupted copy is killed with SIGKILL of Snakemake's whole
process group (the local executor runs every job in Snakemake's own group, so this is what a
kill of the sweep does), at:

  1. a seeded-random moment after the first job started (prepare, MLflow setup, the warm-up);
  2. inside `toolrl.io.atomic_dir`, a train checkpoint in its temporary folder, before the swap;
  3. in a train job between its MLflow writes (the run exists, RUNNING, without its metrics);
  4. a seeded-random moment after the first job started (train and evaluation jobs);
  5. inside `toolrl.io.write_bytes`, an evaluation JSON written and synced, before the rename;
  6. in the aggregate between its MLflow writes (one run has its evaluations, the rest not).

The exact points come from tests/killpoints/sitecustomize.py, loaded through PYTHONPATH; after
each kill the test runs `snakemake --unlock` and the same command again (README, Resume).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE_ENV, run_sweep, snakemake, snakemake_command

pytestmark = pytest.mark.slow

TINY = {
    "sweep": {"name": "resume", "seeds": [0]},
    "world": {"n_warmup_tasks": 300, "n_eval_tasks": 6},
    "warmup": {"steps": 20, "batch_size": 8, "warmup_steps": 2, "echo_steps": 5, "echo_replay_until": 10},
    "rl": {"steps": 2},
    "aggregate": {"n_resamples": 100},
    "resources": {"warmup_threads": 1},
}
KILLS = ["random", "checkpoint", "mlflow_train", "random", "eval_json", "mlflow_aggregate"]
# Seconds after the first job of an attempt started: what follows the first job is always
# longer (a chain of at least three jobs, each with ~8 s of imports).
RANDOM_WINDOW = (0.0, 12.0)
SEED = 7
KILLPOINTS = Path(__file__).resolve().parent / "killpoints"
# Keys that measure time, not results.
TIMING = re.compile(r"(^|/)(seconds|wall_seconds|train_seconds|sft_seconds|step_time|tokens_per_second)$")


@dataclass
class Attempt:
    kill: str
    returncode: int
    output: str
    marker: dict[str, Any] | None
    started: list[tuple[str, str]] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # finished jobs' files: (inode, mtime)


def jobs(output: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (rule, outputs) of every job Snakemake started and finished, from its log."""
    by_id: dict[str, tuple[str, str]] = {}
    started, finished = [], []
    rule = outputs = None
    for line in output.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            rule, outputs = m[1], ""
        elif rule is not None and (m := re.fullmatch(r"    output: (.*)", line)):
            outputs = m[1]
        elif rule is not None and (m := re.fullmatch(r"    jobid: (\d+)", line)):
            by_id[m[1]] = (rule, outputs)
            started.append((rule, outputs))
            rule = None
        elif m := re.fullmatch(r"Finished jobid: (\d+) \(Rule: \w+\)", line):
            finished.append(by_id[m[1]])
    return started, finished


def identities(work: Path, jobs_: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each output of `jobs_`, and of each file inside an output folder."""
    found = {}
    for _, outputs in jobs_:
        for out in filter(None, outputs.split(", ")):
            path = work / out
            for p in [path, *(sorted(path.rglob("*")) if path.is_dir() else [])]:
                st = p.stat()
                found[str(p.relative_to(work))] = (st.st_ino, st.st_mtime_ns)
    return found


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies left to init do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def attempt(work: Path, config: Path, kill: str, index: int, rng: random.Random) -> Attempt:
    """One run of the sweep, killed at `kill` (a kill point, or "random"), from a clean lock."""
    marker = work / f"kill-{index}.json"
    env = {
        **SNAKEMAKE_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(KILLPOINTS), os.environ.get("PYTHONPATH")])),
    }
    if kill != "random":
        env |= {"TOOLRL_TEST_KILL": kill, "TOOLRL_TEST_KILL_MARK": str(marker)}
    log = work / f"attempt-{index}.log"
    with log.open("w") as sink:
        p = subprocess.Popen(
            snakemake_command(work, ROOT / "config/smoke.yaml", config),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        if kill == "random":
            while "\nrule " not in (text := "\n" + log.read_text()) and "\nlocalrule " not in text:
                assert p.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(rng.uniform(*RANDOM_WINDOW))
            assert p.poll() is None, f"the sweep finished before the random kill:\n{log.read_text()[-3000:]}"
            os.killpg(p.pid, signal.SIGKILL)
        returncode = p.wait(timeout=900)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    deadline = time.monotonic() + 30
    while group_alive(p.pid):
        assert time.monotonic() < deadline, "processes of the killed sweep still run"
        time.sleep(0.2)
    output = log.read_text()
    started, finished = jobs(output)
    return Attempt(
        kill,
        returncode,
        output,
        json.loads(marker.read_text()) if marker.exists() else None,
        started,
        finished,
        identities(work, finished),
    )


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("resume")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    t0 = time.monotonic()
    reference, ref_output = run_sweep(root / "reference", ROOT / "config/smoke.yaml", config, sweep="resume")
    t1 = time.monotonic()

    work = root / "interrupted"
    shutil.copytree(ROOT / "workflow", work / "workflow")
    rng = random.Random(SEED)
    attempts, lock_error = [], None
    for i, kill in enumerate(KILLS):
        if i:
            if lock_error is None:  # once: what a user sees after the kill without --unlock
                lock_error = snakemake(work, ROOT / "config/smoke.yaml", config)
            unlock = snakemake(work, ROOT / "config/smoke.yaml", config, args=("--unlock",))
            assert unlock.returncode == 0, unlock.stderr[-3000:]
        attempts.append(attempt(work, config, kill, i, rng))
    unlock = snakemake(work, ROOT / "config/smoke.yaml", config, args=("--unlock",))
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    final = snakemake(work, ROOT / "config/smoke.yaml", config)
    started, finished = jobs(final.stdout + final.stderr)
    attempts.append(Attempt("none", final.returncode, final.stdout + final.stderr, None, started, finished))
    t2 = time.monotonic()
    print(f"\nreference run {t1 - t0:.0f} s; interrupted run with {len(KILLS)} kills and resumes {t2 - t1:.0f} s")
    return {
        "reference": reference,
        "ref_output": ref_output,
        "interrupted": work / "results" / "resume",
        "work": work,
        "attempts": attempts,
        "lock_error": lock_error,
    }


def test_every_kill_happened_where_it_was_meant_to(sweeps):
    attempts = sweeps["attempts"]
    assert [a.returncode for a in attempts] == [-signal.SIGKILL] * len(KILLS) + [0], attempts[-1].output[-5000:]
    for a in attempts[:-1]:
        if a.kill == "random":
            assert a.marker is None and a.started
            continue
        assert a.marker is not None and a.marker["point"] == a.kill, (a.kill, a.output[-3000:])
    marks = {a.kill: a.marker for a in attempts if a.marker}
    ckpt = marks["checkpoint"]
    assert Path(ckpt["dst"]).name == "model" and "/runs/" in ckpt["dst"]
    assert re.fullmatch(r"\.model\.\w+\.tmp", Path(ckpt["src"]).name), ckpt
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(ckpt["src_listing"])
    assert marks["mlflow_train"]["params"] > 0 and marks["mlflow_train"]["metrics"] == 0
    ev = marks["eval_json"]
    assert ev["src_bytes"] > 100 and not ev["dst_exists"] and Path(ev["dst"]).parent.name == "eval"
    assert marks["mlflow_aggregate"]["metrics"] > 0
    # The rerun after a kill needs `snakemake --unlock` first, as the README says.
    assert sweeps["lock_error"].returncode != 0
    assert "cannot be locked" in sweeps["lock_error"].stdout + sweeps["lock_error"].stderr


def test_only_unfinished_jobs_are_redone(sweeps):
    attempts = sweeps["attempts"]
    done: set[tuple[str, str]] = set()
    for a in attempts:
        assert not done & set(a.started), f"attempt killed at {a.kill} reran finished jobs: {done & set(a.started)}"
        done |= set(a.finished)
    # Every job of the uninterrupted run finished exactly once over all attempts.
    reference = Counter(jobs(sweeps["ref_output"])[1])
    assert Counter(j for a in attempts for j in a.finished) == reference
    assert max(reference.values()) == 1 and len(reference) == 10
    # Their files were never touched again.
    final = identities(sweeps["work"], [j for a in attempts for j in a.finished])
    for a in attempts:
        assert {k: final[k] for k in a.outputs} == a.outputs, a.kill


def _without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not TIMING.search(k) and k != "mlflow_run_id"}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_results_equal_the_uninterrupted_run(sweeps):
    ref, got = sweeps["reference"], sweeps["interrupted"]
    tables = sorted(p.relative_to(ref).as_posix() for p in (ref / "tables").iterdir())
    assert "tables/main.csv" in tables and "tables/main.md" in tables
    assert sorted(p.relative_to(got).as_posix() for p in (got / "tables").iterdir()) == tables
    for name in tables:
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    # Deeper than the tables: every evaluation (each task's outcome), train log and weight.
    files = sorted(
        p.relative_to(ref)
        for p in ref.rglob("*")
        if p.suffix in (".json", ".jsonl", ".safetensors") and "mlflow" not in p.parts
    )
    assert len(files) > 20
    for name in files:
        if name.suffix == ".safetensors":
            assert (got / name).read_bytes() == (ref / name).read_bytes(), name
        elif name.suffix == ".jsonl":
            rows = [[json.loads(line) for line in (d / name).read_text().splitlines()] for d in (ref, got)]
            assert _without_timing(rows[1]) == _without_timing(rows[0]), name
        else:
            docs = [json.loads((d / name).read_text()) for d in (ref, got)]
            assert _without_timing(docs[1]) == _without_timing(docs[0]), name
    # A killed writer's temporary checkpoint folder is removed by the job's rerun.
    assert not [p for p in got.rglob(".model.*.tmp")]
    assert not [p for p in got.glob(".mlflow.db.*")]


def _runs(sweep: Path) -> tuple[Any, list[Any]]:
    from mlflow import MlflowClient

    exp = json.loads((sweep / "mlflow" / "experiment.json").read_text())
    client = MlflowClient(exp["tracking_uri"])
    assert not client.search_runs(["0"])  # nothing misfiled under Default
    return client, client.search_runs([exp["experiment_id"]])


def _content(client: Any, run: Any) -> dict[str, Any]:
    """What a run says about its job: params, our tags, every metric's history."""
    metrics = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
        for k in run.data.metrics
        if not TIMING.search(k)
    }
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    return {"params": run.data.params, "tags": tags, "metrics": metrics}


def test_mlflow_holds_one_finished_run_per_job_and_no_live_one(sweeps):
    ref_client, ref_runs = _runs(sweeps["reference"])
    client, runs = _runs(sweeps["interrupted"])
    ref_by_job = {r.data.tags["job"]: r for r in ref_runs}
    assert len(ref_by_job) == len(ref_runs) == 3 and {r.info.status for r in ref_runs} == {"FINISHED"}

    by_id = {r.info.run_id: r for r in runs}
    assert {r.data.tags["job"] for r in runs} == set(ref_by_job)
    assert Counter(r.info.status for r in runs)["FINISHED"] == 3
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    finished = {r.data.tags["job"]: r for r in runs if r.info.status == "FINISHED"}
    for run in runs:
        if run.info.status == "KILLED":  # an attempt killed midway, superseded by its job's rerun
            nxt = run
            while nxt.info.status == "KILLED":
                nxt = by_id[nxt.data.tags["superseded_by"]]
                assert nxt.data.tags["job"] == run.data.tags["job"]
            assert nxt is finished[run.data.tags["job"]]
    # The run killed between its MLflow writes is among them.
    killed = by_id[next(a.marker["run_id"] for a in sweeps["attempts"] if a.kill == "mlflow_train")]
    assert killed.info.status == "KILLED"

    # Each finished run says what the reference's says (metric histories included: the
    # aggregate's rerun after its kill did not log any evaluation twice), and run.json points at it.
    for job, ref_run in ref_by_job.items():
        assert _content(client, finished[job]) == _content(ref_client, ref_run), job
        info = sweeps["interrupted"] / ("base/warmup.json" if job == "warmup" else f"runs/{job}/run.json")
        assert json.loads(info.read_text())["mlflow_run_id"] == finished[job].info.run_id
