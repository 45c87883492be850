"""The warm-up: the base model every cell starts from, trained by SFT on expert trajectories.

For the tiny default it also builds the tokenizer and the model from scratch. The warm-up covers
every domain (content_ood's too, never its test tasks) and both syntaxes, as pre-training does for
a real model. Where it stops is a choice: GRPO needs groups with mixed rewards, and a saturated
base leaves RL nothing to gain (measured: from 86%, 30 GRPO steps changed nothing at lr ≤ 1e-4).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, TrainerCallback

from toolrl.config import Config
from toolrl.core.episode import Message, expert_messages
from toolrl.envs.base import Task
from toolrl.envs.data import echo_messages, read_tasks
from toolrl.envs.synthetic import VALUE_TOKENS
from toolrl.formats import FORMATS, get_format
from toolrl.models import model as models
from toolrl.models.guards import NonFiniteGuard
from toolrl.training import evaluate

log = logging.getLogger(__name__)


def value_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of argument values that are single tokens (all of them for the tiny tokenizer; for a
    real tokenizer, only values that happen to be one token get the extra loss weight)."""
    ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in VALUE_TOKENS]
    return sorted({i[0] for i in ids if len(i) == 1})


class CurveCallback(TrainerCallback):
    """Greedy success on held-out tasks every `every` steps: the warm-up's learning curve.
    Evaluation time is kept out of the training clock, so the curve reports pure training time."""

    def __init__(self, evaluate_fn: Any, every: int):
        self.evaluate_fn = evaluate_fn
        self.every = every
        self.curve: list[dict[str, float]] = []
        self._start = time.perf_counter()
        self._eval_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[override]
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
        if self.every and state.global_step % self.every == 0:
            self.record(state.global_step, kwargs["model"])

    def record(self, step: int, model: Any) -> None:
        t0 = time.perf_counter()
        train_s = t0 - self._start - self._eval_seconds
        success = self.evaluate_fn(model)
        self._eval_seconds += time.perf_counter() - t0
        self.curve.append({"step": step, "train_seconds": round(train_s, 1), "id_success": success})
        log.info("warm-up step %d: id success %.1f%% after %.0f s of training", step, 100 * success, train_s)


def trajectory_source(cfg: Config, tasks: list[Task], rng: random.Random) -> Callable[[], list[Message]]:
    """Expert trajectories of random warm-up tasks: in the train format with probability
    `warmup.train_format_share`, otherwise in another format."""
    train_fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    other_fmts = [get_format(n, cfg.world.prompt_style) for n in FORMATS if n != cfg.world.train_format]

    def trajectory() -> list[Message]:
        fmt = train_fmt if rng.random() < cfg.warmup.train_format_share else rng.choice(other_fmts)
        return expert_messages(rng.choice(tasks), fmt)

    return trajectory


def build_tiny(
    cfg: Config, trajectory: Callable[[], list[Message]], rng: random.Random, seed: int
) -> tuple[Any, PreTrainedTokenizerBase]:
    """The tiny default, untrained: a tokenizer trained on 5,000 trajectories and 500 echo
    examples, then a model of `model.tiny`'s shape. Needs neither trl nor datasets, so
    benchmarks/rollout_throughput.py builds the same model on a machine without them."""
    corpus = ["\n".join(m["role"] + "\n" + m["content"] for m in trajectory()) for _ in range(5000)]
    corpus += [m["content"] for _ in range(500) for m in echo_messages(rng)]
    tokenizer = models.build_tokenizer(corpus, VALUE_TOKENS)
    return models.build_tiny_model(cfg.model.tiny, tokenizer, seed), tokenizer


def run(cfg: Config, data_dir: Path, out_dir: Path, seed: int = 0, pretrained: str | None = None) -> dict[str, Any]:
    """`pretrained` replaces model.name_or_path where the workflow converted it first (GGUF)."""
    from toolrl.training import sft  # imports trl: here, so that build_tiny's importers need not have it

    source = pretrained or cfg.model.name_or_path
    rng = random.Random(f"{cfg.world.seed}:warmup-sft:{seed}")
    train_fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    trajectory = trajectory_source(cfg, read_tasks(data_dir / "warmup.jsonl"), rng)

    def echo() -> list[dict[str, str]]:
        return echo_messages(rng)

    if cfg.warmup.steps == 0:
        # A pretrained checkpoint used as it is: the base evaluation measures it, no curve needed.
        model, tokenizer = models.load(source, cfg.model.enable_thinking)
        models.save(model, tokenizer, out_dir / "model")
        return {
            "params": models.n_params(model),
            "steps": 0,
            "wall_seconds": 0.0,
            "train_seconds": 0.0,
            "curve": [],
            "loss": [],
        }
    if source is None:
        model, tokenizer = build_tiny(cfg, trajectory, rng, seed)
    else:
        model, tokenizer = models.load(source, cfg.model.enable_thinking)
    log.info("warm-up model: %.2f M parameters, vocabulary %d", models.n_params(model) / 1e6, len(tokenizer))

    w = cfg.warmup
    examples = sft.curriculum(
        trajectory, echo, w.steps, w.batch_size, w.echo_steps, w.echo_replay_until, w.echo_replay_per_batch, seed=seed
    )
    id_tasks = read_tasks(data_dir / "id.jsonl")
    curve = CurveCallback(
        lambda m: evaluate.run(m, tokenizer, id_tasks, train_fmt, cfg.rollout)["success_rate"], w.eval_every
    )
    t0 = time.perf_counter()
    history = sft.train(
        model,
        tokenizer,
        examples,
        steps=w.steps,
        batch_size=w.batch_size,
        learning_rate=w.learning_rate,
        warmup_steps=w.warmup_steps,
        value_token_ids=value_token_ids(tokenizer),
        value_weight=w.value_weight,
        seed=seed,
        callbacks=[curve, NonFiniteGuard("the warm-up", cfg.numerics.on_nonfinite)],
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    wall = time.perf_counter() - t0
    if not curve.curve or curve.curve[-1]["step"] != w.steps:
        curve.record(w.steps, model)
    models.save(model, tokenizer, out_dir / "model")
    return {
        "params": models.n_params(model),
        "steps": w.steps,
        "wall_seconds": round(wall, 1),
        "train_seconds": curve.curve[-1]["train_seconds"],
        "curve": curve.curve,
        "loss": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
    }
