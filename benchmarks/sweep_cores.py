"""Sweep wall time with `--cores 1` against `--cores 2`: do two jobs side by side pay off?

    .venv/bin/python benchmarks/sweep_cores.py                          # the default sweep (~45 min)
    .venv/bin/python benchmarks/sweep_cores.py --configfile config/smoke.yaml

The warm-up is one job that every other job waits for, so it is run once, with `--cores 2`, and
its folder (results, MLflow store and Snakemake's metadata, modification times kept) is copied
twice. The rest of the DAG (training, evaluation, aggregation) then runs in each copy, once
with `--cores 1` and once with `--cores 2`, one after the other in this process, and the ratio of
the two wall times is printed: above 1, running two one-thread jobs side by side is faster.
config.yaml gives each train and evaluate job one thread (`resources.threads`), so with 2 cores
two jobs run at once without oversubscribing; the warm-up takes 2 threads and runs alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snakemake(work: Path, configfiles: list[str], *args: str) -> float:
    """Run the workflow in `work`; its wall seconds (exits with Snakemake's output on failure)."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(ROOT / "config.yaml"),
        *configfiles,
        *args,
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(p.stdout + p.stderr)[-4000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", action="append", default=[], help="merged over config.yaml (repeatable)")
    ap.add_argument("--sweep", default=None, help="the sweep's name (default: read from the config files)")
    args = ap.parse_args()
    configfiles = [str(Path(c).resolve()) for c in args.configfile]

    sys.path.insert(0, str(ROOT))
    from toolrl import config as configs

    name = args.sweep or configs.load(ROOT / "config.yaml", _merged(configfiles)).sweep.name
    with tempfile.TemporaryDirectory(prefix="toolrl-cores-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        warm = snakemake(base, configfiles, "--cores", "2", f"results/{name}/base/model")
        times = {}
        for cores in ("1", "2"):
            work = Path(tmp) / f"cores{cores}"
            shutil.copytree(base, work, symlinks=True)  # copy2: modification times kept
            times[cores] = snakemake(work, configfiles, "--cores", cores)
            shutil.rmtree(work)
    print(
        f"sweep '{name}' ({', '.join(Path(c).name for c in configfiles) or 'config.yaml'}); "
        f"warm-up (run once, --cores 2): {warm:.0f} s"
    )
    for cores, seconds in times.items():
        print(f"rest of the DAG with --cores {cores}: {seconds:8.1f} s")
    print(f"ratio (--cores 1 / --cores 2): {times['1'] / times['2']:.2f}×")


def _merged(configfiles: list[str]) -> dict:
    """The config files' keys merged in order (later files win), as Snakemake merges them."""
    import yaml
    from omegaconf import OmegaConf

    merged = (
        OmegaConf.merge(*[OmegaConf.create(yaml.safe_load(Path(c).read_text()) or {}) for c in configfiles])
        if configfiles
        else OmegaConf.create({})
    )
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


if __name__ == "__main__":
    main()
