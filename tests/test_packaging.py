from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower()


def test_conda_env_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs/toolrl.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(project) == sorted(p for p in pip if not p.startswith("-e"))
    assert {_name(p) for p in project} >= {"snakemake", "torch", "trl", "transformers", "mlflow", "omegaconf", "scipy"}


def test_cli_lists_the_stages():
    out = subprocess.run([sys.executable, "-m", "toolrl", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("prepare", "warmup", "train", "evaluate", "aggregate"):
        assert stage in out


def test_no_eval_or_exec_in_the_package():
    pattern = re.compile(r"(?<![\w.])(eval|exec)\(")
    hits = [
        f"{p}:{i}"
        for p in (ROOT / "toolrl").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == []
