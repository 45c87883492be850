"""scripts/gpu_check.sh, the one-GPU proof of the real-model path, kept working on a CPU: its
`--tiny` mode runs the same steps (workflow for one cell, the GRPO job again, the summary) with
the tiny model, and must report every number without writing into the checkout."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import ROOT, SNAKEMAKE_ENV

pytestmark = pytest.mark.slow


def _status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_gpu_check_tiny_reports_every_number(tmp_path):
    before = _status()
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", str(tmp_path)],
        env=SNAKEMAKE_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["device"] == "cpu"
    runs = [v for k, v in result.items() if k.startswith(("transformers", "vllm"))]
    assert len(runs) == 2  # the workflow's job, and the GRPO job again
    for run in runs:
        assert run["grpo_steps"] == 4
        assert run["step_seconds"] > 0 and run["rollout_tokens_per_second"] > 0
        assert 0 < run["checkpoint_share_of_step"] < 10
    assert result["id_success"]["tasks"] > 0 and 0 <= result["id_success"]["trained"] <= 1
    assert _status() == before  # nothing written into the checkout
