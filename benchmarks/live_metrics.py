"""How late a train job's steps reach MLflow, and what a mid-run checkpoint costs against a step.

    .venv/bin/python benchmarks/live_metrics.py --base results/default/base/model \
        --data results/default/data                                       # ~10 min on 2 cores
    .venv/bin/python benchmarks/live_metrics.py                          # + the warm-up, ~6 min
    .venv/bin/python benchmarks/live_metrics.py --flush-steps 10 1 --steps 30 --wall-steps 30

Everything runs in a temporary sweep folder with its own sqlite store, as the sweep's jobs do:
`python -m toolrl prepare` (without `--data`), `mlflow-init`, and without `--base` the default
`warmup` (its `warmup.steps`, 600, or `--warmup-steps`: 300 steps gave a base model that solved
0% of the `id` tasks, 600 one that solved 48%, like a sweep's); then real train jobs
(`python -m toolrl train`, one cell, the default config.yaml with `rl.steps: --steps`), each a
child process started as the Snakemake rule starts it, four in all, one after the other.

1. Delay to MLflow. A train job appends each step's record to `train_log.jsonl` when the step ends
   and sends the records to its MLflow run in batches (`tracking.LiveLog`: every
   `mlflow.flush_steps` steps or `mlflow.flush_seconds` seconds, whichever comes first). While
   each job runs, this process polls both every `--poll` seconds: the file (when each step's line
   first appears) and the store (the job's run, found by its `job` tag, and its
   `train/loss` history). Per step: delay = when its point was first seen in MLflow − when its line
   was first seen in the file. Both are times of the poll that saw them, so each is late by up to
   one poll period (plus the query's time); the cross-check column measures from the point's own
   MLflow timestamp, set in the job when the step was logged. One job per `--flush-steps` value,
   `mlflow.flush_seconds` at its default (30 s); the first also measures part 2.
2. Checkpoint share. With `checkpoint.save_every: 4` (the default) the job saves its state every
   4 steps; each save's seconds are in the next step's record (`checkpoint/seconds`), and every
   step has TRL's `step_time` (the rollout, forward and backward passes) and `rollout/seconds`.
   Printed: mean save seconds, mean step_time, their ratio (one save against one step), and that
   ratio spread over `save_every` steps. Second estimate: two more jobs of `--wall-steps` steps,
   `save_every: 0` then `save_every: 1`, back to back; the ratio of their train wall times
   (`wall_seconds` in run.json: model load to model save, imports excluded) is 1 + what saving
   after every step adds. Both are the same cell and seed; the script checks that their losses match.

Absolute seconds depend on the machine and its load; the poller itself takes a little CPU and
reads the sqlite store the job writes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolrl.config import Cell, load, to_dict

KEY = "train/loss"


@dataclass
class Job:
    """What the poller saw of one train job."""

    label: str
    out: Path
    line_seen: dict[int, float] = field(default_factory=dict)  # step -> time its line was first read
    point_seen: dict[int, float] = field(default_factory=dict)  # step -> time its point was first in MLflow
    point_stamp: dict[int, float] = field(default_factory=dict)  # step -> the point's own timestamp (s)
    query_s: list[float] = field(default_factory=list)
    process_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def toolrl(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "toolrl", *map(str, args)]


def write_config(work: Path, name: str, overrides: dict[str, Any]) -> Path:
    """config.yaml with the benchmark's overrides, resolved as the sweep resolves it."""
    cfg = load(ROOT / "config.yaml", {"results_dir": str(work / "results"), "sweep": {"name": "live"}, **overrides})
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def run_step(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> float:
    """Run a setup command; its wall seconds. Exit with its log's tail if it fails."""
    t0 = time.perf_counter()
    with log.open("w") as sink:
        rc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False).returncode
    if rc != 0:
        sys.exit(f"{' '.join(cmd[2:4])} failed ({rc}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def train_job(
    label: str,
    config: Path,
    common: list[str | Path],
    cell: Cell,
    work: Path,
    env: dict[str, str],
    uri: str,
    experiment_id: str,
    poll: float,
) -> Job:
    """Start one train job and poll its train log and its MLflow run until it exits."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    job_filter = f"tags.job = '{cell.path}'"
    known = {r.info.run_id for r in client.search_runs([experiment_id], filter_string=job_filter)}
    out = work / "runs" / label
    job = Job(label, out)
    log = work / f"train-{label}.log"
    args = ["--config", config, *common, "--out", out, *cell.flags]
    train_log = out / "train_log.jsonl"
    run_id: str | None = None
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(toolrl("train", *args), stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=work)
        while True:
            done = proc.poll() is not None
            t_file = time.time()
            if train_log.exists():
                for line in train_log.read_text().splitlines():
                    try:
                        step = json.loads(line)["step"]
                    except ValueError:  # a line being written
                        continue
                    job.line_seen.setdefault(step, t_file)
            t_query = time.time()
            c0 = time.perf_counter()
            if run_id is None:
                runs = client.search_runs([experiment_id], filter_string=job_filter)
                new = [r.info.run_id for r in runs if r.info.run_id not in known]
                run_id = new[0] if new else None
            if run_id is not None:
                for m in client.get_metric_history(run_id, KEY):
                    if m.step not in job.point_seen:
                        job.point_seen[m.step] = t_query
                        job.point_stamp[m.step] = m.timestamp / 1000
                        job.line_seen.setdefault(m.step, t_query)  # written between the two reads
            job.query_s.append(time.perf_counter() - c0)
            if done:
                break
            time.sleep(max(0.0, poll - (time.time() - t_file)))
    job.process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"train job {label} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    job.rows = [json.loads(line) for line in train_log.read_text().splitlines()]
    job.report = json.loads((out / "run.json").read_text())
    missing = sorted(set(job.line_seen) - set(job.point_seen))
    if missing:
        sys.exit(f"train job {label}: steps {missing} never seen in MLflow")
    return job


def base_success(base: Path) -> str:
    """The warm-up's last greedy `id` success, from the warmup.json beside the model, if any."""
    report = base.parent / "warmup.json"
    curve = json.loads(report.read_text())["curve"] if report.exists() else []
    return f", greedy id success {100 * curve[-1]['id_success']:.1f}%" if curve else ""


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):7.2f} {max(values):6.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="a base model (default: a short warm-up builds one)")
    ap.add_argument("--data", default=None, help="the task splits of --base (default: prepared here)")
    ap.add_argument(
        "--warmup-steps", type=int, default=None, help="warm-up SFT steps without --base (default: warmup.steps)"
    )
    ap.add_argument("--warmup-threads", type=int, default=2, help="threads of the warm-up")
    ap.add_argument("--cell", default="none/rl/3e-5/0", help="signal/scheme/lr/seed of the train jobs")
    ap.add_argument("--steps", type=int, default=30, help="rl.steps of the delay jobs")
    ap.add_argument("--flush-steps", type=int, nargs="+", default=[10, 1], help="mlflow.flush_steps, one job each")
    ap.add_argument("--wall-steps", type=int, default=30, help="rl.steps of the save_every 0 and 1 jobs (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="threads of each train job (resources.threads)")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between two polls of the file and the store")
    args = ap.parse_args()

    from mlflow import MlflowClient

    signal, scheme, lr, seed = args.cell.split("/")
    cell = Cell(signal, scheme, float(lr), int(seed))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    with tempfile.TemporaryDirectory(prefix="toolrl-live-metrics-") as tmp:
        work = Path(tmp)
        base_cfg = write_config(work, "config", {})
        experiment = work / "experiment.json"
        run_step(toolrl("mlflow-init", "--config", base_cfg, "--out", experiment), work / "init.log", env, work)
        exp = json.loads(experiment.read_text())
        uri, experiment_id = exp["tracking_uri"], exp["experiment_id"]
        MlflowClient(uri).search_runs([experiment_id])  # this process opens the store before any job
        data = Path(args.data) if args.data else work / "data"
        if args.data is None:
            run_step(toolrl("prepare", "--config", base_cfg, "--out", data), work / "prepare.log", env, work)
        setup = ""
        if args.base is None:
            steps = load(ROOT / "config.yaml").warmup.steps if args.warmup_steps is None else args.warmup_steps
            wcfg = write_config(work, "warmup", {"warmup": {"steps": steps, "eval_every": 0}})
            threads = str(args.warmup_threads)
            cmd = toolrl("warmup", "--config", wcfg, "--data", data, "--experiment", experiment)
            seconds = run_step([*cmd, "--out", work / "base", "--threads", threads], work / "warmup.log", env, work)
            base = work / "base" / "model"
            setup = f"warm-up: {steps} steps, {threads} threads, {seconds:.0f} s{base_success(base)}"
        else:
            base = Path(args.base)
            setup = f"base: {base}{base_success(base)}"
        load_before = os.getloadavg()[0]
        common: list[str | Path] = ["--data", data, "--base", base, "--experiment", experiment]
        common += ["--threads", str(args.threads)]

        def job(label: str, overrides: dict[str, Any]) -> Job:
            config = write_config(work, label, overrides)
            return train_job(label, config, common, cell, work, env, uri, experiment_id, args.poll)

        flush_jobs = [
            job(f"flush{n}", {"rl": {"steps": args.steps}, "mlflow": {"flush_steps": n}}) for n in args.flush_steps
        ]
        wall_jobs = (
            [job(f"save{k}", {"rl": {"steps": args.wall_steps}, "checkpoint": {"save_every": k}}) for k in (0, 1)]
            if args.wall_steps
            else []
        )

    defaults = load(ROOT / "config.yaml")
    load_after = os.getloadavg()[0]
    print(
        f"{os.cpu_count()} cores, train jobs with {args.threads} thread(s); cell {cell.path}; {setup}; "
        f"rl: {defaults.rl.prompts_per_step} prompts x {defaults.rl.num_generations}, poll every {args.poll} s; "
        f"load average {load_before:.1f} before the train jobs, {load_after:.1f} after"
    )
    print()
    print("1. delay from a step's line in train_log.jsonl to its point in MLflow (seconds)")
    print(
        f"{'flush_steps':>11} {'flush_s':>7} {'steps':>5} {'job s':>6} {'sends':>5} "
        f"{'min':>6} {'median':>7} {'max':>6}   {'from the point timestamp: min median max':>40}"
    )
    for j, n in zip(flush_jobs, args.flush_steps, strict=True):
        steps = sorted(j.point_seen)
        delay = [j.point_seen[s] - j.line_seen[s] for s in steps]
        stamp = [j.point_seen[s] - j.point_stamp[s] for s in steps]
        sends = len(set(j.point_seen.values()))
        print(
            f"{n:>11} {defaults.mlflow.flush_seconds:>7.0f} {len(steps):>5} {j.process_s:>6.1f} {sends:>5} "
            f"{spread(delay)}   {spread(stamp):>40}"
        )
    queries = [q for j in flush_jobs for q in j.query_s]
    print(
        f"(one poll of the store: median {1000 * statistics.median(queries):.0f} ms; sends: polls that saw new points)"
    )

    print()
    print("2. checkpoint seconds against a step")
    first = flush_jobs[0]
    save_every = defaults.checkpoint.save_every
    rows = [r for r in first.rows if r.get("phase") == "rl"]
    saves = [r["checkpoint/seconds"] for r in rows if "checkpoint/seconds" in r]
    step_s = [r["step_time"] for r in rows]
    rollout_s = [r["rollout/seconds"] for r in rows]
    lines = sorted(first.line_seen.values())
    between = [b - a for a, b in itertools.pairwise(lines)]
    if saves:
        share = statistics.mean(saves) / statistics.mean(step_s)
        print(f"   save_every {save_every}, {len(rows)} steps: {len(saves)} saves, mean {statistics.mean(saves):.3f} s")
        print(
            f"   step_time mean {statistics.mean(step_s):.2f} s (rollout {statistics.mean(rollout_s):.2f} s); "
            f"line to line in the file: median {statistics.median(between):.2f} s"
        )
        print(
            f"   one save / one step: {100 * share:.1f}%; spread over {save_every} steps: "
            f"{100 * share / save_every:.2f}% of training"
        )
    else:
        print(f"   no checkpoint/seconds in {len(rows)} steps (save_every {save_every})")
    if wall_jobs:
        off, on = wall_jobs
        saves = [r["checkpoint/seconds"] for r in on.rows if "checkpoint/seconds" in r]
        w_off, w_on = off.report["wall_seconds"], on.report["wall_seconds"]
        print(
            f"   {args.wall_steps} steps, train wall (run.json wall_seconds): save_every 0 {w_off:.1f} s, "
            f"save_every 1 {w_on:.1f} s ({len(saves)} saves in the log, mean {statistics.mean(saves):.3f} s); "
            f"process wall {off.process_s:.1f} s vs {on.process_s:.1f} s"
        )
        same = [r.get("loss") for r in off.rows] == [r.get("loss") for r in on.rows]
        print(f"   same losses at every step in both jobs: {'yes' if same else 'NO (different steps)'}")
        print(f"   ratio (save_every 1 / save_every 0 train wall): {w_on / w_off:.3f}x")


if __name__ == "__main__":
    main()
