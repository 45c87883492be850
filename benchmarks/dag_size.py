"""How long Snakemake takes to plan a paper-size sweep: the DAG of every valid signal × scheme pair
(8 signals × 4 schemes give the 10 pairs of `sweep.pairs`) × 3 learning rates × 5 seeds.

    .venv/bin/python benchmarks/dag_size.py            # plain `snakemake -n`
    .venv/bin/python benchmarks/dag_size.py --slurm    # with --workflow-profile profiles/slurm

Runs `snakemake -n --quiet rules` (only the job-count table is printed; `-q` alone prints nothing,
the per-job listing of `-n` costs more than the planning) in a temporary folder and prints the
number of jobs and the wall time. Nothing is submitted: a dry run never calls sbatch.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "signals": ["none", "sft", "ops", "hbg", "ets", "prs", "ctrl", "void_filter"],
    "schemes": ["rl", "sequential", "synchronous", "interleaved"],
    "learning_rates": [3.0e-5, 1.0e-4, 1.0e-3],
    "seeds": [0, 1, 2, 3, 4],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slurm", action="store_true", help="plan with the Slurm workflow profile")
    ap.add_argument("--repeat", type=int, default=1, help="runs to time (the minimum is reported too)")
    args = ap.parse_args()

    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    with tempfile.TemporaryDirectory(prefix="toolrl-dag-") as tmp:
        cfg = Path(tmp) / "grid.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "results_dir": str(Path(tmp) / "results"),
                    "sweep": {
                        "name": "dag",
                        **GRID,
                        "exclude": [],
                        "baseline": {"signal": "none", "scheme": "rl", "lr": 1.0e-3},
                    },
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            tmp,
            "--configfile",
            str(ROOT / "config.yaml"),
            str(cfg),
            "-n",
            "--quiet",
            "rules",
            "--cores",
            "2",
        ]
        if args.slurm:
            cmd += ["--workflow-profile", str(ROOT / "profiles" / "slurm")]
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            times.append(time.perf_counter() - t0)
            if p.returncode != 0:
                sys.exit(f"snakemake failed:\n{p.stderr[-3000:]}")
        out = p.stdout + p.stderr
        total = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
        counts = dict(re.findall(r"^(train|evaluate)\s+(\d+)$", out, re.MULTILINE))
    grid = " × ".join(f"{len(v)} {k}" for k, v in GRID.items())
    print(f"grid: {grid} ({counts.get('train', '?')} valid cells)")
    print(
        f"jobs: {total.group(1) if total else '?'} "
        f"({counts.get('train', '?')} train, {counts.get('evaluate', '?')} evaluate)"
    )
    print(
        f"snakemake -n{' --workflow-profile profiles/slurm' if args.slurm else ''}: "
        + ", ".join(f"{t:.1f} s" for t in times)
        + (f" (min {min(times):.1f} s)" if len(times) > 1 else "")
        + f" on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
