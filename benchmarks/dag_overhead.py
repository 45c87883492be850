"""Planning overhead: how much longer does `snakemake -n -q` take on our Snakefile than on a bare
Snakefile with the same jobs? The target is ≤ 1.2×.

    .venv/bin/python benchmarks/dag_overhead.py                 # 2,400 cells, median of 5
    .venv/bin/python benchmarks/dag_overhead.py --seeds 4 --repeat 3   # 240 cells, quicker

Our side is the real workflow (Snakefile, workflow/rules/*.smk, config.yaml) over a grid of every
valid signal × scheme pair (12 pairs of `sweep.pairs`) × `--lrs` learning rates × `--seeds` seeds:
12 × 5 × 40 = 2,400 train jobs by default. The bare side is a Snakefile generated in a temporary
folder with the same stages, wildcards, `expand` calls, output files and dependencies (prepare,
mlflow_init, warmup, train per cell, evaluate per cell and for the base model, every split in one
job, aggregate, all) but no config, no imports, no params and `touch` for a shell; the script
checks that both plan the same number of jobs of each rule. What is left between the two is what our
workflow adds to planning: config loading and validation, hashing, imports, params and input
functions.

The two sides alternate (bare, ours, bare, ours, ...), each in a fresh temporary working folder,
in one process via subprocess; the table prints each side's median and the last line the ratio of
the medians. Absolute seconds depend on the machine and its load; the ratio is what to report.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolrl import plugins
from toolrl.config import SPLITS, format_lr, load

SIGNALS, SCHEMES = list(plugins.signals()), list(plugins.schemes())
from toolrl.config import grid as config_grid

# The same stages, outputs and dependencies as workflow/rules/*.smk, with nothing else.
BARE = """\
SWEEP = "results/{name}"
CELL = "signal={{signal}}/scheme={{scheme}}/lr={{lr}}/seed={{seed}}"
SPLITS = {splits!r}
RUN_DIRS = expand(f"{{SWEEP}}/runs/{{CELL}}", zip, signal={signals!r}, scheme={schemes!r}, lr={lrs!r}, seed={seeds!r})

wildcard_constraints:
    signal="[a-z_]+",
    scheme="[a-z_]+",
    lr="[0-9.e+-]+",
    seed="[0-9]+",
    run="base|runs/signal=[a-z_]+/scheme=[a-z_]+/lr=[0-9.e+-]+/seed=[0-9]+",


rule all:
    default_target: True
    input:
        f"{{SWEEP}}/summary.json",


rule prepare:
    output:
        expand(f"{{SWEEP}}/data/{{{{name}}}}.jsonl", name=["warmup", "rl", "id", "content_ood"]),
    shell:
        "touch {{output}}"


rule mlflow_init:
    output:
        f"{{SWEEP}}/mlflow/experiment.json",
    shell:
        "touch {{output}}"


rule warmup:
    input:
        data=rules.prepare.output,
        experiment=rules.mlflow_init.output,
    output:
        model=directory(f"{{SWEEP}}/base/model"),
        report=f"{{SWEEP}}/base/warmup.json",
    shell:
        "mkdir -p {{output.model}} && touch {{output.report}}"


rule train:
    input:
        data=rules.prepare.output,
        base=rules.warmup.output.model,
        experiment=rules.mlflow_init.output,
    output:
        model=directory(f"{{SWEEP}}/runs/{{CELL}}/model"),
        log=f"{{SWEEP}}/runs/{{CELL}}/train_log.jsonl",
        run=f"{{SWEEP}}/runs/{{CELL}}/run.json",
    shell:
        "mkdir -p {{output.model}} && touch {{output.log}} {{output.run}}"


rule evaluate:
    input:
        data=rules.prepare.output,
        model=f"{{SWEEP}}/{{{{run}}}}/model",
    output:
        expand(f"{{SWEEP}}/{{{{{{{{run}}}}}}}}/eval/{{{{split}}}}.json", split=SPLITS),
    shell:
        "touch {{output}}"


rule aggregate:
    input:
        expand("{{run}}/eval/{{split}}.json", run=RUN_DIRS, split=SPLITS),
        expand("{{run}}/train_log.jsonl", run=RUN_DIRS),
        expand("{{run}}/run.json", run=RUN_DIRS),
        experiment=rules.mlflow_init.output,
        base=expand(f"{{SWEEP}}/base/eval/{{{{split}}}}.json", split=SPLITS),
        warmup=rules.warmup.output.report,
    output:
        f"{{SWEEP}}/summary.json",
    shell:
        "touch {{output}}"
"""


def job_counts(out: str) -> dict[str, int]:
    """Snakemake's `Job stats` table (rule → jobs), as `-n --quiet rules` prints it."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.MULTILINE) if m[1] != "total"}


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one command, and its output."""
    t0, c0 = time.perf_counter(), cpu_children()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.perf_counter() - t0, cpu_children() - c0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return wall, cpu, p.stdout + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", type=int, default=5, help="learning rates in the grid")
    ap.add_argument("--seeds", type=int, default=40, help="seeds in the grid")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each side (alternating)")
    args = ap.parse_args()

    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    sweep = {
        "name": "dag",
        "signals": list(SIGNALS),
        "schemes": list(SCHEMES),
        "learning_rates": [float(f"{k + 1}e-4") for k in range(args.lrs)],
        "seeds": list(range(args.seeds)),
        "exclude": [],
        "baseline": {"signal": "none", "scheme": "rl", "lr": 1.0e-4},
    }
    with tempfile.TemporaryDirectory(prefix="toolrl-dag-overhead-") as tmp:
        grid_yaml = Path(tmp) / "grid.yaml"
        grid_yaml.write_text(yaml.safe_dump({"sweep": sweep}))
        cells = config_grid(load(ROOT / "config.yaml", {"sweep": sweep}))
        bare = Path(tmp) / "Snakefile.bare"
        bare.write_text(
            BARE.format(
                name=sweep["name"],
                splits=list(SPLITS),
                signals=[c.signal for c in cells],
                schemes=[c.scheme for c in cells],
                lrs=[format_lr(c.lr) for c in cells],
                seeds=[c.seed for c in cells],
            )
        )

        def cmd(side: str, work: str, *quiet: str) -> list[str]:
            base = [sys.executable, "-m", "snakemake", "--directory", work, "--cores", "2", "-n", "-q", *quiet]
            if side == "bare":
                return base + ["--snakefile", str(bare)]
            return base + [
                "--snakefile",
                str(ROOT / "Snakefile"),
                "--configfile",
                str(ROOT / "config.yaml"),
                str(grid_yaml),
            ]

        def workdir() -> str:
            return tempfile.mkdtemp(dir=tmp)

        counts = {side: job_counts(run(cmd(side, workdir(), "rules"), env)[2]) for side in ("bare", "ours")}
        if counts["bare"] != counts["ours"]:
            sys.exit(f"the two DAGs differ: bare {counts['bare']}, ours {counts['ours']}")
        wall: dict[str, list[float]] = {"bare": [], "ours": []}
        cpu: dict[str, list[float]] = {"bare": [], "ours": []}
        for _ in range(args.repeat):
            for side in ("bare", "ours"):
                w, c, _ = run(cmd(side, workdir()), env)
                wall[side].append(w)
                cpu[side].append(c)

    c = counts["ours"]
    print(
        f"grid: {len(SIGNALS)} signals × {len(SCHEMES)} schemes ({c['train'] // (args.lrs * args.seeds)} valid pairs)"
        f" × {args.lrs} lrs × {args.seeds} seeds"
        f" = {c['train']} cells"
    )
    print(f"jobs: {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))}), the same on both sides")
    print(f"`snakemake -n -q`, {args.repeat} runs each, alternating, {os.cpu_count()} cores")
    print(f"{'side':<6} {'wall s':>7} {'min':>6} {'max':>6} {'CPU s':>7}  wall of each run")
    for side in ("bare", "ours"):
        w = wall[side]
        print(
            f"{side:<6} {statistics.median(w):>7.2f} {min(w):>6.1f} {max(w):>6.1f} "
            f"{statistics.median(cpu[side]):>7.2f}  " + ", ".join(f"{t:.1f}" for t in w)
        )
    ratio = statistics.median(wall["ours"]) / statistics.median(wall["bare"])
    cpu_ratio = statistics.median(cpu["ours"]) / statistics.median(cpu["bare"])
    print(f"ratio (ours / bare, median wall): {ratio:.2f}x (CPU: {cpu_ratio:.2f}x)")


if __name__ == "__main__":
    main()
