"""The knob search behind docs/organism.md: vanilla GRPO and its controls from one base model,
each variant with several seeds, judged on a validation split that no table reports.

Each variant is the default config plus overrides (dotted keys) and a cell (signal, scheme, lr).
Every run is `python -m toolrl train` and `python -m toolrl evaluate` on the validation split
(held-out tasks of the training domains, drawn apart from every other split), two jobs at a time
at one thread each. Prints a Markdown table and writes every run's numbers to runs.jsonl.

    python scripts/organism_search.py --base results/default --out /tmp/search [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolrl.analysis import collapse  # noqa: E402
from toolrl.config import format_lr, load  # noqa: E402
from toolrl.envs.data import read_tasks, write_splits  # noqa: E402
from toolrl.envs.synthetic import validation_split  # noqa: E402

# name: (overrides, signal, scheme, lr)
VARIANTS: dict[str, tuple[dict[str, Any], str, str, float]] = {
    "default-3e-5": ({}, "none", "rl", 3e-5),
    "default-3e-5-random": ({}, "random_reward", "rl", 3e-5),
    "8steps-1e-3": ({}, "none", "rl", 1e-3),
    "8steps-1e-3-random": ({}, "random_reward", "rl", 1e-3),
    "32steps-3e-5": ({"rl.steps": 32}, "none", "rl", 3e-5),
    "32steps-1e-4": ({"rl.steps": 32}, "none", "rl", 1e-4),
    "16steps-3e-4": ({"rl.steps": 16}, "none", "rl", 3e-4),
    "16steps-3e-4-random": ({"rl.steps": 16}, "random_reward", "rl", 3e-4),
    "8steps-3e-4": ({}, "none", "rl", 3e-4),
    "8steps-3e-4-random": ({}, "random_reward", "rl", 3e-4),
    "32steps-1e-4-random": ({"rl.steps": 32}, "random_reward", "rl", 1e-4),
    "32steps-1e-4-t0.7": ({"rl.steps": 32, "rl.temperature": 0.7}, "none", "rl", 1e-4),
    "16steps-8x8-1e-4": ({"rl.steps": 16, "rl.prompts_per_step": 8}, "none", "rl", 1e-4),
    "32steps-1e-4-kl0.04": ({"rl.steps": 32, "rl.beta": 0.04}, "none", "rl", 1e-4),
    "32steps-1e-4-grpo": ({"rl.steps": 32, "rl.loss_type": "grpo"}, "none", "rl", 1e-4),
    # Without Adam's momentum: does a collapsed run (gradient 0) stop drifting, and does it still collapse?
    "16steps-3e-4-beta1-0": ({"rl.steps": 16, "rl.adam_beta1": 0.0}, "none", "rl", 3e-4),
    "16steps-3e-4-beta1-0-random": ({"rl.steps": 16, "rl.adam_beta1": 0.0}, "random_reward", "rl", 3e-4),
}


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def one(name: str, seed: int, base: Path, out: Path, val: Path) -> dict[str, Any]:
    _, signal, scheme, lr = VARIANTS[name]
    cfg_path = out / name / "config.yaml"
    run_dir = out / name / f"seed={seed}"
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "toolrl"]
    common = ["--config", str(cfg_path), "--threads", "1"]
    run(
        [*py, "train", *common, "--data", str(base / "data"), "--base", str(base / "base/model"),
         "--experiment", str(out / "experiment.json"), "--out", str(run_dir), "--signal", signal,
         "--scheme", scheme, "--lr", str(lr), "--seed", str(seed)],
        run_dir / "train.log",
    )  # fmt: skip
    run(
        [*py, "evaluate", *common, "--data", str(val), "--model", str(run_dir / "model"), "--splits", "id",
         "--run", f"runs/signal={signal}/scheme={scheme}/lr={format_lr(lr)}/seed={seed}",
         "--out-dir", str(run_dir / "val")],
        run_dir / "eval.log",
    )  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    cfg = load(cfg_path)
    d = cfg.diagnostics
    verdict = collapse.detect(rows, d.window, d.reward_drop, d.token_shift, d.pollution_rise)
    rl = collapse.rl_rows(rows)
    q = max(1, len(rl) // 4)
    result = {
        "variant": name,
        "seed": seed,
        "val": json.loads((run_dir / "val" / "id.json").read_text())["success_rate"],
        "sampled_first": mean(r["success"] for r in rl[:q]),
        "sampled_last": mean(r["success"] for r in rl[-q:]),
        "collapsed": verdict["collapsed"],
        "mode": verdict["mode"],
        "step": verdict["step"],
        "probe_tool_call_call_last": rl[-1].get("probe/p_tool_call/call"),
        "probe_value_accuracy_last": rl[-1].get("probe/value_accuracy"),
        "train_seconds": sum(r.get("step_time", 0.0) or 0.0 for r in rl),
    }
    done.write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="a sweep folder with data/ and base/model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-tasks", type=int, default=128)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args()
    out, base = args.out.resolve(), args.base.resolve()  # the jobs run in the checkout
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = OmegaConf.load(ROOT / "config.yaml")
    base_cfg.results_dir = str(out / "sweep")
    base_cfg.diagnostics.restore_splits = []
    names = args.only or list(VARIANTS)
    for name in names:
        cfg = base_cfg.copy()
        for key, value in VARIANTS[name][0].items():
            OmegaConf.update(cfg, key, value)
        (out / name).mkdir(exist_ok=True)
        OmegaConf.save(cfg, out / name / "config.yaml")
    val = out / "val"
    if not (val / "id.jsonl").exists():
        world = load(out / names[0] / "config.yaml").world
        splits = ("warmup", "rl", "id", "content_ood")
        taken = [t for s in splits for t in read_tasks(base / "data" / f"{s}.jsonl")]
        write_splits({"id": validation_split(world, args.val_tasks, taken)}, val)
    if not (out / "experiment.json").exists():
        run([sys.executable, "-m", "toolrl", "mlflow-init", "--config", str(out / names[0] / "config.yaml"),
             "--out", str(out / "experiment.json")], out / "mlflow_init.log")  # fmt: skip
    if not (out / "base_val" / "id.json").exists():
        run([sys.executable, "-m", "toolrl", "evaluate", "--config", str(out / names[0] / "config.yaml"),
             "--threads", "1", "--data", str(val), "--model", str(base / "base/model"), "--splits", "id",
             "--run", "base", "--out-dir", str(out / "base_val")], out / "base_val.log")  # fmt: skip
    jobs = [(n, s) for n in names for s in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: one(job[0], job[1], base, out, val), jobs))
    with (out / "runs.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"base val success: {100 * json.loads((out / 'base_val' / 'id.json').read_text())['success_rate']:.1f}%")
    print("| variant | seeds | val success % (each seed) | sampled 1st → last quarter | collapsed (mode, step) |")
    print("|---|---:|---|---|---|")
    for name in names:
        rs = [r for r in results if r["variant"] == name]
        vals = " / ".join(f"{100 * r['val']:.1f}" for r in rs)
        first, last = mean(r["sampled_first"] for r in rs), mean(r["sampled_last"] for r in rs)
        coll = [f"{r['mode']}@{r['step']}" for r in rs if r["collapsed"]]
        print(
            f"| {name} | {len(rs)} | {100 * mean(r['val'] for r in rs):.1f} ({vals}) | {first:.2f} → {last:.2f} "
            f"| {len(coll)}/{len(rs)} {', '.join(coll)} |"
        )


if __name__ == "__main__":
    main()
