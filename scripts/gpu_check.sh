#!/usr/bin/env bash
# The real-model path end to end on one GPU, as one script (about 8 minutes on one GPU):
#   bash scripts/gpu_check.sh [WORKDIR]           # SmolLM2-135M-Instruct, bf16, vLLM where it imports
#   bash scripts/gpu_check.sh --tiny [WORKDIR]    # the same steps with the tiny model, for a CPU
# One cell (vanilla GRPO, one rate, one seed) of config/smollm2-135m.yaml through the whole
# workflow: GGUF conversion, warm-up SFT, GRPO with checkpoints, evaluation of the base model and
# the cell, aggregate. Then the same GRPO job again with the other generator (vLLM if the first
# used transformers' decoding, and the other way round), when vLLM imports (with --tiny and no
# vLLM, again with transformers, so that the step is tested). It prints, and writes
# to WORKDIR/gpu_check.json: the device, the mean GRPO step time, rollout tokens/s with each
# generator, the checkpoint's cost as a share of a step, and `id` success before and after.
# WORKDIR (default: a new temporary folder) holds everything the run writes; the checkout is
# only read. tests/test_gpu_check.py runs `--tiny` on CPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The checkout's environment (scripts/setup.sh), else the active one.
PY=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PATH="$(dirname "$PY"):$PATH"  # the rules call `python -m toolrl`
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
WORK=${1:-$(mktemp -d -t toolrl-gpu-check.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
CORES=$(nproc)
vllm=$("$PY" -c "import importlib.util as u; print('true' if u.find_spec('vllm') else 'false')")

if [ "$TINY" = 1 ]; then
  PRESET=()
  LR=1e-4
  THREADS=$CORES
  cat >"$WORK/check.yaml" <<EOF
results_dir: $WORK/results
sweep: {name: gpu-check, signals: [none], schemes: [rl], learning_rates: [$LR], seeds: [0],
        exclude: [], baseline: {signal: none, scheme: rl, lr: $LR}}
world: {n_warmup_tasks: 200, n_rl_tasks: 20, n_eval_tasks: 4}
warmup: {steps: 10, batch_size: 8, warmup_steps: 1, echo_steps: 3, echo_replay_until: 6, eval_every: 0}
rl: {steps: 4, prompts_per_step: 2, num_generations: 4}
rollout: {max_new_tokens: 24}
checkpoint: {save_every: 2}
aggregate: {n_resamples: 100}
resources: {threads: $THREADS, warmup_threads: $THREADS}
EOF
else
  PRESET=("$ROOT/config/smollm2-135m.yaml")
  LR=1e-5
  THREADS=8
  cat >"$WORK/check.yaml" <<EOF
results_dir: $WORK/results
sweep: {name: gpu-check, signals: [none], schemes: [rl], learning_rates: [$LR], seeds: [0],
        exclude: [], baseline: {signal: none, scheme: rl, lr: $LR}}
world: {n_warmup_tasks: 600, n_rl_tasks: 64, n_eval_tasks: 60}
warmup: {steps: 100}
rl: {steps: 12, prompts_per_step: 16, num_generations: 8}
checkpoint: {save_every: 4}
resources: {threads: $THREADS, warmup_threads: $THREADS, gpus: 1}
EOF
fi

snakemake() {  # the workflow over config.yaml + the preset + the check's own settings
  "$PY" -m snakemake --snakefile "$ROOT/Snakefile" --directory "$WORK" --cores "$CORES" \
    --configfile "$ROOT/config.yaml" "${PRESET[@]}" "$WORK/check.yaml" "$@"
}

echo "=== gpu_check: the workflow, one cell (log: $WORK/workflow.log)"
start=$(date +%s)
snakemake >"$WORK/workflow.log" 2>&1 || { tail -n 40 "$WORK/workflow.log"; exit 1; }
workflow_seconds=$(($(date +%s) - start))

# The same GRPO job with the other generator, into its own folder, when vLLM imports.
SWEEP=$WORK/results/gpu-check
CELL=signal=none/scheme=rl/lr=$LR/seed=0
first=$("$PY" -c "import sys; sys.path.insert(0, '$ROOT'); from toolrl.config import load; from toolrl.training.grpo import use_vllm; print(str(use_vllm(load('$SWEEP/config.yaml').rl)).lower())")
other=""
if [ "$vllm" = true ]; then other=$([ "$first" = true ] && echo false || echo true); fi
if [ "$TINY" = 1 ] && [ -z "$other" ]; then other=false; fi  # without vLLM, --tiny still runs this step
if [ -n "$other" ]; then
  echo "=== gpu_check: the GRPO job again with rl.vllm: $other"
  "$PY" - "$SWEEP/config.yaml" "$WORK/other.yaml" "$other" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["rl"]["vllm"] = sys.argv[3] == "true"
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
EOF
  (cd "$WORK" && "$PY" -m toolrl train --config "$WORK/other.yaml" --data "$SWEEP/data" --base "$SWEEP/base/model" \
    --experiment "$SWEEP/mlflow/experiment.json" --out "$WORK/other" --signal none --scheme rl \
    --lr "$LR" --seed 0 --threads "$THREADS") 2>"$WORK/other.log" \
    || { tail -n 40 "$WORK/other.log"; exit 1; }
fi

"$PY" - "$SWEEP" "$CELL" "$WORK" "$first" "$other" "$workflow_seconds" <<'EOF'
import json, statistics, sys
from pathlib import Path

import torch

sweep, cell, work, first, other, wall = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), *sys.argv[4:]


def train_stats(log: Path) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    grpo = [r for r in rows if "rollout/seconds" in r]
    saves = [r["checkpoint/seconds"] for r in rows if "checkpoint/seconds" in r]
    step = statistics.mean(r["step_time"] for r in grpo)
    return {
        "grpo_steps": len(grpo),
        "step_seconds": step,
        "rollout_seconds": statistics.mean(r["rollout/seconds"] for r in grpo),
        "rollout_tokens_per_second": statistics.mean(r["rollout/tokens_per_second"] for r in grpo),
        "checkpoint_seconds": statistics.mean(saves) if saves else None,
        "checkpoint_share_of_step": statistics.mean(saves) / step if saves else None,
        "sampled_success": statistics.mean(r["success"] for r in grpo),
    }


generator = {"true": "vllm", "false": "transformers"}
result = {
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "torch": torch.__version__,
    "workflow_seconds": int(wall),
    generator[first]: train_stats(sweep / "runs" / cell / "train_log.jsonl"),
}
if other:
    key = generator[other] if other != first else f"{generator[other]} (again)"
    result[key] = train_stats(work / "other" / "train_log.jsonl")
groups = json.loads((sweep / "summary.json").read_text())["groups"]
base = next(g for g in groups if g["signal"] is None)
trained = next(g for g in groups if g["signal"] == "none")
# Greedy `id` success of the one seed, over this many tasks.
result["id_success"] = {
    "tasks": trained["tasks"]["id"],
    "base": base["splits"]["id"]["values"][0],
    "trained": trained["splits"]["id"]["values"][0],
}
(work / "gpu_check.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
EOF
echo "gpu_check: done ($WORK/gpu_check.json)"
