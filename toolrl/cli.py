"""`python -m toolrl <stage>`: the one entry point every Snakemake rule calls.

Each stage reads the sweep's resolved config, writes its outputs atomically and logs its run to
MLflow. Paths come from the command line (Snakemake's inputs and outputs), never guessed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolrl.config import (
    SPLITS,
    Cell,
    Config,
    ConfigError,
    cell_sections,
    config_hash,
    grid,
    load,
    sections,
)
from toolrl.io import read_json, read_jsonl, require, write_json, write_jsonl

if TYPE_CHECKING:
    from toolrl.core.diagnostics import Pattern

log = logging.getLogger("toolrl")
EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; running the job again may succeed


def _config(args: argparse.Namespace) -> Config:
    return load(args.config)


def _tracker(
    cfg: Config,
    experiment: Path,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    run_id: str | None = None,
    job: str | None = None,
):
    from toolrl import tracking

    exp = tracking.read_experiment(experiment)
    return tracking.RunLogger(
        exp["tracking_uri"],
        exp["experiment_id"],
        run_name,
        {"sweep": cfg.sweep.name, **tags},
        params,
        run_id=run_id,
        job=job,
    )


def cmd_prepare(args: argparse.Namespace) -> None:
    from toolrl import plugins
    from toolrl.envs.data import make_splits, write_splits

    cfg = _config(args)
    splits = make_splits(cfg.world)
    # Counts the config cannot know before the data is read (held-out classes, skipped ACEBench tasks).
    where = plugins.backends()[cfg.world.backend].settings
    if len(splits["rl"]) < cfg.rl.prompts_per_step:
        raise ConfigError(
            f"config key '{where}': {len(splits['rl'])} RL tasks, fewer than rl.prompts_per_step "
            f"({cfg.rl.prompts_per_step})"
        )
    for name in ("id", "content_ood"):
        if not splits[name]:
            raise ConfigError(
                f"config key '{where}': the {name} split is empty (held_out_classes, "
                "acebench.categories without a user?)"
            )
    write_splits(splits, Path(args.out))
    log.info("tasks: %s", {k: len(v) for k, v in splits.items()})


def cmd_convert_model(args: argparse.Namespace) -> None:
    from toolrl.models import gguf
    from toolrl.models import model as models

    models.set_threads(args.threads)
    cfg = _config(args)
    report = gguf.convert(str(cfg.model.name_or_path), Path(args.out))
    log.info(
        "converted %s: %.1f M parameters in %.0f s, max |logit difference| %.2g",
        report["gguf"],
        report["parameters"] / 1e6,
        report["seconds"],
        report["max_abs_logit_diff"],
    )


def cmd_mlflow_init(args: argparse.Namespace) -> None:
    from toolrl import tracking

    cfg = _config(args)
    uri = cfg.mlflow.tracking_uri or tracking.default_tracking_uri(cfg.sweep_dir)
    name = cfg.mlflow.experiment or f"toolrl-{cfg.sweep.name}"
    tracking.init_store(uri, name, (cfg.sweep_dir / "mlruns").resolve(), Path(args.out))


def cmd_warmup(args: argparse.Namespace) -> None:
    from toolrl.models import model as models
    from toolrl.training import warmup

    models.set_threads(args.threads)
    cfg = _config(args)
    out = Path(args.out)
    report = warmup.run(cfg, Path(args.data), out, pretrained=args.pretrained)
    with _tracker(
        cfg,
        Path(args.experiment),
        "warmup",
        {"stage": "warmup"},
        {"config_hash": config_hash(cfg), **sections(cfg, "warmup", "model")},
        job="warmup",
    ) as run:
        for point in report["loss"]:
            run.log_metrics({"warmup/loss": point["loss"]}, step=point["step"])
        for point in report["curve"]:
            run.log_metrics({"warmup/id_success": point["id_success"]}, step=point["step"])
        if cfg.mlflow.log_models:
            run.log_artifact(out / "model", "model")
        report["mlflow_run_id"] = run.run_id
        run.flush()
        write_json(out / "warmup.json", report)  # before the run is FINISHED: see cmd_train
    if report["curve"]:
        log.info(
            "warm-up: %d steps in %.0f s; id success %.1f%%",
            report["steps"],
            report["train_seconds"],
            100 * report["curve"][-1]["id_success"],
        )


def _cell(args: argparse.Namespace) -> Cell:
    return Cell(args.signal, args.scheme, float(args.lr), int(args.seed))


def cmd_train(args: argparse.Namespace) -> None:
    from toolrl import tracking
    from toolrl.models import model as models
    from toolrl.training import train

    models.set_threads(args.threads)
    cfg = _config(args)
    cell = _cell(args)
    out = Path(args.out)
    # The config sections this job read, flattened by MLflow.
    params = {
        "config_hash": config_hash(cfg),
        "signal": cell.signal,
        "scheme": cell.scheme,
        "lr": cell.lr,
        "seed": cell.seed,
        **sections(cfg, *cell_sections(cell.signal, cell.scheme)),
    }
    tags = {
        "stage": "train",
        "cell": cell.path,
        "signal": cell.signal,
        "scheme": cell.scheme,
        "lr": str(cell.lr),
        "seed": str(cell.seed),
    }
    # The run exists from the first step, and the train log grows a line per step (tracking.LiveLog).
    with _tracker(cfg, Path(args.experiment), cell.path, tags, params, job=cell.path) as run:
        with tracking.LiveLog(run, out / "train_log.jsonl", cfg.mlflow.flush_steps, cfg.mlflow.flush_seconds) as live:
            report = train.run(cfg, cell, Path(args.base), Path(args.data), out / "model", live, out / "checkpoints")
        if cfg.mlflow.log_models:  # off by default: a model is large, the metrics are what is compared
            run.log_artifact(out / "model", "model")
        report["mlflow_run_id"] = run.run_id
        # The outputs are written before the run is marked FINISHED, so a FINISHED run always has
        # them; a job killed before that leaves its run RUNNING, and the rerun marks it KILLED.
        run.flush()
        write_jsonl(out / "train_log.jsonl", live.rows)
        write_json(out / "run.json", {"cell": cell.__dict__, **report})


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Every split of --splits in one job: the model, the task files and the run's collapse
    verdict are loaded once, and each split's result goes to --out-dir/<split>.json as it is done."""
    from toolrl.config import parse_cell
    from toolrl.models import model as models
    from toolrl.training import evaluate

    # --run is the evaluate rule's {run} wildcard: `base` (the warm-up model) or `runs/<cell path>`.
    cell = None
    if args.run != "base":
        fields = dict(part.partition("=")[::2] for part in args.run.removeprefix("runs/").split("/"))
        if not args.run.startswith("runs/") or list(fields) != ["signal", "scheme", "lr", "seed"]:
            raise ValueError(f"--run {args.run}: expected base or runs/signal=S/scheme=S/lr=LR/seed=N")
        cell = parse_cell(**fields)
    models.set_threads(args.threads)
    cfg = _config(args)
    model, tokenizer = models.load(args.model)
    mode, patterns = None, []
    if cell is not None and set(args.splits) & set(cfg.diagnostics.restore_splits):
        mode, patterns = _shown(cfg, Path(args.model).parent / "train_log.jsonl")
    splits = list(dict.fromkeys(args.splits))  # each once, in the order given
    results = evaluate.run_splits(model, tokenizer, cfg, splits, Path(args.data), mode, patterns)
    for result in results:
        write_json(Path(args.out_dir) / f"{result['split']}.json", {"cell": cell.__dict__ if cell else None, **result})
        log.info(
            "%s on %s: %.1f%% success (%d tasks)",
            cell.path if cell else "base",
            result["split"],
            100 * result["success_rate"],
            result["n"],
        )


def _shown(cfg: Config, train_log: Path) -> tuple[str | None, list[Pattern]]:
    """A run's collapse mode and the patterns it showed, from its own train log: what its
    restoration probe forbids."""
    from toolrl.analysis import collapse
    from toolrl.core.diagnostics import shown_patterns

    d = cfg.diagnostics
    verdict = collapse.detect(read_jsonl(train_log), d.window, d.reward_drop, d.token_shift, d.pollution_rise)
    patterns = shown_patterns(verdict["shifts"], d.token_shift) if verdict["mode"] == "token" else []
    if verdict["collapsed"]:
        log.info("collapse (%s) at step %s; restoration forbids: %s", verdict["mode"], verdict["step"],
                 ", ".join(p.name for p in patterns) or "nothing (no control-token pattern)")  # fmt: skip
    return verdict["mode"], patterns


def cmd_aggregate(args: argparse.Namespace) -> None:
    from toolrl import tracking
    from toolrl.analysis import outputs, report

    cfg = _config(args)
    a = cfg.aggregate
    summary = report.aggregate(
        cfg.sweep_dir,
        cfg.sweep.baseline.__dict__,
        SPLITS,
        confidence=a.confidence,
        n_resamples=a.n_resamples,
        correction=a.correction,
        seed=cfg.world.seed,
        diagnostics=cfg.diagnostics,
        paper=a.paper,
        alpha=a.alpha,
        power=a.power,
    )
    exp = tracking.read_experiment(Path(args.experiment))
    _log_evaluations(cfg, Path(args.experiment))
    for g in summary["groups"]:
        if g["collapse"] and g["collapse"]["collapsed"]:
            log.info("collapse: %s in %d of %d runs", g["name"], g["collapse"]["collapsed"], g["collapse"]["runs"])
    log.info("tables: %s", (cfg.sweep_dir / outputs.path("table")).parent)
    log.info("training curves: %s", cfg.sweep_dir / outputs.path("curves"))
    log.info("open the runs in MLflow: %s", tracking.ui_command(exp["tracking_uri"]))


def _log_evaluations(cfg: Config, experiment: Path) -> None:
    """Every evaluation's numbers into its model's MLflow run (the warm-up run or the cell's run).
    Done once here rather than in each evaluate job: it spares every one of them MLflow's 2.5 s
    import and sqlite writes, and the numbers reach MLflow with the table they belong to. Every
    file is read before the first run is touched, so a damaged one stops the job with MLflow
    unchanged."""
    from toolrl.analysis.report import read_eval

    sweep = cfg.sweep_dir
    runs = [(sweep / "base", sweep / "base" / "warmup.json")] + [
        (sweep / "runs" / c.path, sweep / "runs" / c.path / "run.json") for c in grid(cfg)
    ]
    logged: list[tuple[str, dict[str, float]]] = []
    for run_dir, info in runs:
        metrics: dict[str, float] = {}
        for split in SPLITS:
            result = read_eval(run_dir / "eval" / f"{split}.json")
            metrics[f"{split}/success"] = result["success_rate"]
            metrics[f"{split}/format_error_rate"] = result["format_error_rate"]
            if "restored" in result:
                metrics[f"{split}/restored_success"] = result["restored"]["success_rate"]
        logged.append((require(info, read_json(info), "mlflow_run_id", str), metrics))
    for run_id, metrics in logged:
        with _tracker(cfg, experiment, "", {}, {}, run_id=run_id) as run:
            run.log_metrics(metrics, step=0)


def cmd_signals(args: argparse.Namespace) -> None:
    from toolrl import plugins

    def where(cls: type) -> str:
        return "" if cls.__module__.startswith("toolrl.") else f"  [{cls.__module__}]"

    signals, schemes = plugins.signals(), plugins.schemes()
    w = max(map(len, [*signals, *schemes]))  # the name column, as wide as the longest name
    c = max(len(", ".join(cls.schemes)) for cls in signals.values())
    print("signals (signal: schemes it pairs with; config sections a cell reads)")
    for name, cls in signals.items():
        print(f"  {name:<{w}} {', '.join(cls.schemes):<{c}} {', '.join(cls.sections()) or '-'}{where(cls)}")
        print(f"  {'':<{w}} {cls.summary}")
    print("schemes (scheme: config sections a cell reads)")
    for name, cls in schemes.items():
        print(f"  {name:<{w}} {', '.join(cls.sections()) or '-':<{c}} {cls.summary}{where(cls)}")


def cmd_schema(args: argparse.Namespace) -> None:
    from toolrl import schema

    sys.stdout.write(schema.render())


def cmd_coverage(args: argparse.Namespace) -> None:
    from toolrl.analysis import coverage

    sys.stdout.write(
        coverage.table(
            args.seeds, args.tasks, offsets=args.offsets, experiments=args.experiments, confidence=args.confidence
        )
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m toolrl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name: str, help_: str, fn: Any, *flags: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="the sweep's YAML config")
        for f in flags:
            s.add_argument(f"--{f}", required=f not in ("signal", "scheme", "lr", "seed"))
        if name in ("warmup", "train", "evaluate", "convert-model"):
            s.add_argument("--threads", type=int, default=1, help="torch threads (Snakemake passes {threads})")
        s.set_defaults(fn=fn)
        return s

    stage("prepare", "generate the task splits", cmd_prepare, "out")
    stage("convert-model", "convert a GGUF model.name_or_path into an ordinary checkpoint", cmd_convert_model, "out")
    stage("mlflow-init", "create the MLflow store and experiment once", cmd_mlflow_init, "out")
    wu = stage("warmup", "build and SFT the base model", cmd_warmup, "data", "experiment", "out")
    wu.add_argument("--pretrained", default=None, help="the converted checkpoint to start from (GGUF models)")
    stage(
        "train", "train one grid cell", cmd_train, "data", "base", "experiment", "out", "signal", "scheme", "lr", "seed"
    )
    ev = stage("evaluate", "greedy evaluation of one model on the splits", cmd_evaluate, "data", "model", "out-dir")
    ev.add_argument(
        "--splits",
        required=True,
        nargs="+",
        choices=SPLITS,
        metavar="SPLIT",
        help=f"the splits to evaluate ({', '.join(SPLITS)}), each into OUT_DIR/<split>.json",
    )
    ev.add_argument(
        "--run",
        required=True,
        help="base (the warm-up model) or runs/<cell path>, e.g. runs/signal=sft/scheme=synchronous/lr=1e-3/seed=0",
    )
    stage("aggregate", "statistics, tables and plots over the sweep", cmd_aggregate, "experiment")
    sub.add_parser("signals", help="list the installed signals and schemes, and what each pairs with").set_defaults(
        fn=cmd_signals
    )
    sub.add_parser(
        "schema",
        help="print the config's JSON schema (YAML), generated from the config dataclasses "
        "with the installed plugins' sections",
    ).set_defaults(fn=cmd_schema)
    cov = sub.add_parser(
        "coverage",
        help="simulate the tables' intervals at your seeds and tasks and print their empirical coverage",
    )
    cov.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10], help="seeds per group")
    cov.add_argument("--tasks", type=int, nargs="+", default=[64], help="tasks per split")
    cov.add_argument(
        "--offsets",
        type=float,
        nargs="+",
        default=[0.0],
        help="logit offsets of the task categories (the tasks split evenly among them; a seed's effect is shared)",
    )
    cov.add_argument("--experiments", type=int, default=2000, help="simulated sweeps per setting")
    cov.add_argument("--confidence", type=float, default=0.95, help="nominal coverage")
    cov.set_defaults(fn=cmd_coverage)
    return p


def main(argv: list[str] | None = None, job: bool = False) -> int:
    """Run one command. `job`: this process is a workflow job (`python -m toolrl`), whose rule
    writes stderr to the job's log; a stage (a command that takes --config) then sends stdout
    there too, at the file-descriptor level so C extensions follow. Libraries print to stdout
    (TRL a dictionary per step), which would otherwise reach the console of `snakemake --cores
    all`; redirecting in the rules instead would change every rule's shell command and make
    Snakemake rerun every finished job of an existing sweep."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if job and hasattr(args, "config"):
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        args.fn(args)
    # FloatingPointError: toolrl.models.guards.NonFiniteError (not imported here: it pulls in torch).
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError) as e:
        log.error("%s", e)
        return 2
    # toolrl.training.checkpoints.Preempted: a checkpoint is saved, a retry resumes from it.
    except InterruptedError as e:
        log.error("%s", e)
        return EX_TEMPFAIL
    return 0


if __name__ == "__main__":
    sys.exit(main())
