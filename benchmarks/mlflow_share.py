"""MLflow's share of a train job's wall time, with 1, 2 and 8 jobs writing to one sqlite store.
The target is ≤ 2%.

    .venv/bin/python benchmarks/mlflow_share.py                        # ~6 min on 2 loaded cores
    .venv/bin/python benchmarks/mlflow_share.py --job-seconds 95 --rows train_log.jsonl  # no real job
    .venv/bin/python benchmarks/mlflow_share.py --log-models           # models as run artifacts too

Two parts, in one temporary sweep folder with its own store (`default_tracking_uri`, created as
the `mlflow-init` job creates it):

1. One real train job (`python -m toolrl train`, the default config.yaml, `--cell`, from the
   warm-up checkpoint `--base` and the tasks in `--data`, both made by `snakemake --cores all`)
   in a child process, with every `RunLogger` method timed. Its wall time (process start to
   exit, imports included, as Snakemake sees it) is the denominator, and its train_log.jsonl
   and config give the volume every writer below replays.
2. Writers: `--writers` processes that replay what MLflow sees of one cell: the store's first
   open (`open`), then the train job's run (supersede search, create, params, every metric of
   its train log, end) and the aggregate job's resume of the run with the cell's evaluation
   metrics (`log`). Each phase starts in all writers at once, the worst case for the store's
   write lock. Each count runs twice: `batched` (RunLogger, as the sweep logs) and `per-value`
   (the same run, but one `log_metric` call per value: the unbatched baseline).

Printed: MLflow seconds per job (median and max over the writers; wall, and the writer's own CPU
time), the job's wall seconds, the share, and last the ratio per-value / batched at the largest
writer count. With more writers than cores, a writer's wall time includes waiting for a core; the
CPU column does not. Not counted: `import mlflow`, which trl (`trl.extras.profiling`) pays in
every train job whether we log or not; its time is printed. Absolute seconds depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolrl.config import Cell, cell_sections, config_hash, load, sections, to_dict

SPLITS_METRICS = 7  # what the aggregate job logs per run: success and format errors per split, restored id


def child_job(argv: list[str], out: Path) -> None:
    """Run `python -m toolrl train argv` here with every RunLogger method timed (nested calls once)."""
    from toolrl import cli, tracking

    spent = {"seconds": 0.0, "depth": 0, "values": 0}

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            spent["depth"] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent["depth"] -= 1
                if spent["depth"] == 0:
                    spent["seconds"] += time.perf_counter() - t0

        return wrapper

    for name in ("__init__", "log_metrics", "flush", "log_artifact", "__exit__"):
        setattr(tracking.RunLogger, name, timed(getattr(tracking.RunLogger, name)))
    rc = cli.main(["train", *argv])
    out.write_text(json.dumps({"rc": rc, "mlflow_s": spent["seconds"]}))


PHASES = ("open", "log")


def child_writer(a: argparse.Namespace) -> None:
    """Replay one cell's MLflow traffic (see the module docstring) in two phases, each started
    together with the other writers: `open`, the store's first open, as in a fresh train job (it
    imports MLflow's SQL store: sqlalchemy's ORM and alembic, ~1 s of CPU that `import mlflow`
    does not pay), then `log`, every call the train job and the aggregate make for the cell."""
    t0 = time.perf_counter()
    from mlflow import MlflowClient

    from toolrl import tracking

    import_s = time.perf_counter() - t0
    cfg = load(a.config)
    cell = Cell(a.signal, a.scheme, a.lr, a.seed)
    params = {
        "config_hash": config_hash(cfg),
        "signal": cell.signal,
        "scheme": cell.scheme,
        "lr": cell.lr,
        "seed": cell.seed,
        **sections(cfg, *cell_sections(cell.signal, cell.scheme)),
    }
    tags = {"sweep": cfg.sweep.name, "stage": "train", "cell": cell.path}
    rows = [json.loads(line) for line in Path(a.rows).read_text().splitlines()]
    exp = tracking.read_experiment(Path(a.experiment))
    uri, experiment_id = exp["tracking_uri"], exp["experiment_id"]
    evaluation = {f"split{i}/metric": 0.5 for i in range(SPLITS_METRICS)}

    def barrier(phase: str) -> None:
        Path(f"{a.barrier}.{phase}.ready.{a.seed}").touch()
        while not Path(f"{a.barrier}.{phase}.go").exists():
            time.sleep(0.01)

    barrier("open")
    t0, c0 = time.perf_counter(), time.process_time()
    client = MlflowClient(uri)  # opens the store; RunLogger's clients below reuse it, as in one job
    open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0

    barrier("log")
    t0, c0 = time.perf_counter(), time.process_time()
    with tracking.RunLogger(uri, experiment_id, cell.path, tags, params, job=cell.path) as run:
        for row in rows:
            metrics = {f"train/{k}": v for k, v in row.items() if k not in ("step", "phase")}
            if a.mode == "batched":
                run.log_metrics(metrics, step=row["step"])
            else:
                for key, value in metrics.items():
                    client.log_metric(run.run_id, key, float(value), step=row["step"], synchronous=True)
        if a.artifact:
            run.log_artifact(Path(a.artifact), "model")
    with tracking.RunLogger(uri, experiment_id, "", {}, {}, run_id=run.run_id) as resumed:
        if a.mode == "batched":
            resumed.log_metrics(evaluation, step=0)
        else:
            for key, value in evaluation.items():
                client.log_metric(run.run_id, key, value, step=0, synchronous=True)
    log_s, log_cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(a.out).write_text(
        json.dumps({"import_s": import_s, "open_s": open_s, "log_s": log_s, "cpu_s": open_cpu + log_cpu})
    )


def writers(n: int, mode: str, work: Path, common: list[str], env: dict[str, str]) -> list[dict[str, float]]:
    """`n` writer processes, each phase started in all of them at once; their timings."""
    barrier = work / f"barrier-{mode}-{n}"
    # Each writer is its own cell (the seed), so no run supersedes another's.
    seeds = [10_000 * n + (0 if mode == "batched" else 5_000) + k for k in range(n)]
    procs, outs = [], []
    for seed in seeds:
        out = work / f"writer-{seed}.json"
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child-writer",
                    "--mode",
                    mode,
                    "--seed",
                    str(seed),
                    "--barrier",
                    str(barrier),
                    "--out",
                    str(out),
                    *common,
                ],
                env=env,
            )
        )
    for phase in PHASES:
        while sum(Path(f"{barrier}.{phase}.ready.{seed}").exists() for seed in seeds) < n:
            if any(p.poll() not in (None, 0) for p in procs):
                sys.exit("a writer failed")
            time.sleep(0.02)
        Path(f"{barrier}.{phase}.go").touch()
    if any(p.wait() != 0 for p in procs):
        sys.exit("a writer failed")
    return [json.loads(o.read_text()) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=str(ROOT / "results/default/base/model"), help="the warm-up checkpoint")
    ap.add_argument("--data", default=str(ROOT / "results/default/data"), help="the sweep's task splits")
    ap.add_argument("--cell", default="none/rl/1e-3/0", help="signal/scheme/lr/seed of the real job")
    ap.add_argument(
        "--writers", type=int, nargs="+", default=[1, 2, 8], help="concurrent writer counts (2: a sweep on 2 cores)"
    )
    ap.add_argument(
        "--job-seconds",
        type=float,
        default=None,
        help="a train job's measured wall time: skip the real job (its rows are then the "
        "default config's step count × the key count of --rows)",
    )
    ap.add_argument("--rows", default=None, help="a train_log.jsonl to replay (with --job-seconds)")
    ap.add_argument("--log-models", action="store_true", help="log the model as run artifacts (mlflow.log_models)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the real job")
    # The children's arguments.
    ap.add_argument("--child-job", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--child-writer", action="store_true", help=argparse.SUPPRESS)
    for flag in ("mode", "barrier", "out", "config", "experiment", "artifact", "signal", "scheme"):
        ap.add_argument(f"--{flag}", help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_job is not None:
        child_job(args.child_job[1:], Path(args.child_job[0]))
        return
    if args.child_writer:
        child_writer(args)
        return

    from toolrl import tracking

    signal, scheme, lr, seed = args.cell.split("/")
    cell = Cell(signal, scheme, float(lr), int(seed))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    with tempfile.TemporaryDirectory(prefix="toolrl-mlflow-share-") as tmp:
        work = Path(tmp)
        overrides: dict[str, Any] = {
            "results_dir": str(work / "results"),
            "sweep": {"name": "share"},
            "mlflow": {"log_models": args.log_models},
        }
        cfg = load(ROOT / "config.yaml", overrides)
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        experiment = work / "experiment.json"
        tracking.init_store(
            tracking.default_tracking_uri(cfg.sweep_dir), "toolrl-share", cfg.sweep_dir / "mlruns", experiment
        )

        if args.job_seconds is None:
            out = work / "runs" / cell.path
            timings = work / "job.json"
            argv = [
                "--config",
                str(config),
                "--data",
                args.data,
                "--base",
                args.base,
                "--experiment",
                str(experiment),
                "--out",
                str(out),
                *cell.flags,
                "--threads",
                str(args.threads),
            ]
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, __file__, "--child-job", str(timings), *argv],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            job_s = time.perf_counter() - t0
            if p.returncode != 0 or json.loads(timings.read_text())["rc"] != 0:
                sys.exit(f"the train job failed:\n{p.stderr[-3000:]}")
            job_mlflow_s = json.loads(timings.read_text())["mlflow_s"]
            rows_file = out / "train_log.jsonl"
        else:
            if args.rows is None:
                sys.exit("--job-seconds needs --rows (a train_log.jsonl of the same config)")
            job_s, job_mlflow_s, rows_file = args.job_seconds, None, Path(args.rows)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
        values = sum(len([k for k in r if k not in ("step", "phase")]) for r in rows)

        common = [
            "--config",
            str(config),
            "--experiment",
            str(experiment),
            "--rows",
            str(rows_file),
            "--signal",
            cell.signal,
            "--scheme",
            cell.scheme,
            "--lr",
            lr,
        ]
        if args.log_models:
            common += ["--artifact", args.base]
        results = {
            (n, mode): writers(n, mode, work, common, env) for n in args.writers for mode in ("batched", "per-value")
        }

    print(
        f"job: train {cell.path}, default config.yaml, {args.threads} thread(s), {os.cpu_count()} cores: "
        f"{job_s:.1f} s wall" + ("" if args.job_seconds is None else " (given)")
    )
    if job_mlflow_s is not None:
        print(f"     of which in RunLogger calls: {job_mlflow_s:.2f} s = {100 * job_mlflow_s / job_s:.2f}%")
    print(
        f"volume per cell: {len(rows)} train-log rows, {values} metric values (+ {SPLITS_METRICS} evaluation "
        f"values, resumed by the aggregate job){', the model as artifacts' if args.log_models else ''}"
    )
    imports = [r["import_s"] for rs in results.values() for r in rs]
    print(
        f"mlflow import per process (paid by trl in every train job anyway, not counted): "
        f"median {statistics.median(imports):.1f} s"
    )
    print()
    print(
        f"{'writers':>7} {'mode':<10} {'open s':>7} {'log s':>7} {'MLflow s':>9} {'max':>6} {'CPU s':>6} "
        f"{'job s':>6} {'share %':>8} {'max %':>6}"
    )
    for (n, mode), rs in results.items():
        total = [r["open_s"] + r["log_s"] for r in rs]
        print(
            f"{n:>7} {mode:<10} {statistics.median(r['open_s'] for r in rs):>7.2f} "
            f"{statistics.median(r['log_s'] for r in rs):>7.2f} {statistics.median(total):>9.2f} {max(total):>6.2f} "
            f"{statistics.median(r['cpu_s'] for r in rs):>6.2f} {job_s:>6.1f} "
            f"{100 * statistics.median(total) / job_s:>8.2f} {100 * max(total) / job_s:>6.2f}"
        )
    print("(medians over the writers; MLflow s = open + log, wall; CPU s = the writer's own CPU time in both)")
    n = max(args.writers)

    def median(mode: str, key: str) -> float:
        return statistics.median(sum(r[k] for k in key.split("+")) for r in results[n, mode])

    print(
        f"ratio (per-value / batched MLflow seconds, {n} writers): "
        f"{median('per-value', 'open_s+log_s') / median('batched', 'open_s+log_s'):.1f}x "
        f"(logging alone: {median('per-value', 'log_s') / median('batched', 'log_s'):.1f}x)"
    )


if __name__ == "__main__":
    main()
