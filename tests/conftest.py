from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolrl.config import WorldConfig
from toolrl.core.episode import expert_messages
from toolrl.envs.data import echo_messages, make_splits
from toolrl.envs.synthetic import VALUE_TOKENS
from toolrl.formats import get_format


@pytest.fixture(scope="session")
def world() -> WorldConfig:
    return WorldConfig(n_warmup_tasks=600, n_rl_tasks=200, n_eval_tasks=24, chain_prob=0.2, ask_back_prob=0.2)


@pytest.fixture(scope="session")
def splits(world):
    return make_splits(world)


@pytest.fixture(scope="session")
def tokenizer(splits):
    from toolrl.models.model import build_tokenizer

    rng = random.Random(0)
    fmts = [get_format("json"), get_format("python")]
    corpus = [
        "\n".join(
            m["role"] + "\n" + m["content"] for m in expert_messages(rng.choice(splits["warmup"]), rng.choice(fmts))
        )
        for _ in range(400)
    ] + [m["content"] for _ in range(100) for m in echo_messages(rng)]
    return build_tokenizer(corpus, VALUE_TOKENS)


ROOT = Path(__file__).resolve().parents[1]
# Rules call `python -m toolrl`: put this interpreter first on PATH, as an activated venv does.
SNAKEMAKE_ENV = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def snakemake_command(work: Path, *configfiles: Path, args: tuple[str, ...] = ("--cores", "2")) -> list[str]:
    """The command line of the workflow over `config.yaml` + `configfiles`, in the folder `work`."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(ROOT / "config.yaml"),
        *map(str, configfiles),
        *args,
    ]


def snakemake(work: Path, *configfiles: Path, args: tuple[str, ...] = ("--cores", "2")) -> subprocess.CompletedProcess:
    """The workflow over `config.yaml` + `configfiles`, in the folder `work`."""
    return subprocess.run(
        snakemake_command(work, *configfiles, args=args),
        check=False,
        capture_output=True,
        text=True,
        # The environment as it is now (a test may have set PYTHONPATH), the venv's bin first.
        env={**os.environ, "PATH": SNAKEMAKE_ENV["PATH"]},
        timeout=1500,
    )


def run_sweep(work: Path, *configfiles: Path, sweep: str) -> tuple[Path, str]:
    """Run the workflow in the folder `work` on 2 cores; return the sweep's results folder and
    Snakemake's output, or fail the test with Snakemake's error and every job log."""
    shutil.copytree(ROOT / "workflow", work / "workflow", dirs_exist_ok=True)
    p = snakemake(work, *configfiles)
    if p.returncode != 0:
        logs = "\n".join(f"== {f}\n{f.read_text()[-3000:]}" for f in (work / "results").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{p.stderr[-5000:]}\n{logs}")
    return work / "results" / sweep, p.stdout + p.stderr


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu` where torch sees no CUDA GPU (torch is imported only if any is collected)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
