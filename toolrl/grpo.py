"""GRPO on multi-turn tool use: TRL's GRPOTrainer driven by our rollout engine.

TRL's built-in tool loop handles one user turn and needs a stock chat template; our tasks have up
to three user turns, so we plug the batched multi-turn engine in through `rollout_func` and mark
inserted tokens with `env_mask`. Everything else (advantages, clipping, KL, optimizer) is TRL's.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from typing import Any, Callable

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from toolrl import model as models, rollout
from toolrl.config import RLConfig, RolloutConfig
from toolrl.diagnostics import STATES
from toolrl.envs.base import Task
from toolrl.formats import Format

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def rollout_metrics(rollouts: list[rollout.Rollout]) -> dict[str, float]:
    """Per-step diagnostics of a batch of episodes: success, format errors, the four output states,
    and the mean probability of each control token at the probed positions."""
    n = len(rollouts)
    states: Counter[str] = Counter()
    for r in rollouts:
        states.update(r.episode.states)
    n_msgs = max(1, sum(states.values()))
    out = {
        "success": sum(r.success for r in rollouts) / n,
        "format_error_rate": sum(r.episode.format_errors > 0 for r in rollouts) / n,
        "messages_per_episode": n_msgs / n,
        "truncated_rate": sum(r.episode.truncated for r in rollouts) / n,
    }
    out.update({f"state/{s}": states[s] / n_msgs for s in STATES})
    pooled: dict[str, list[float]] = {}
    for r in rollouts:
        for k, v in r.probes.items():
            pooled.setdefault(k, []).extend(v)
    out.update({k: sum(v) / len(v) for k, v in sorted(pooled.items()) if v})
    return out


class MultiTurnRollout:
    """A `rollout_func` for GRPOTrainer. Prompts are task ids (TRL passes only the prompt column,
    already repeated `num_generations` times); each comes back as one multi-turn completion."""

    def __init__(self, tasks: list[Task], fmt: Format, tokenizer: PreTrainedTokenizerBase, cfg: RolloutConfig,
                 temperature: float, seed: int):
        self.tasks = {t.id: t for t in tasks}
        self.fmt = fmt
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.temperature = temperature
        self.seed = seed
        self.last: dict[str, float] = {}

    def __call__(self, prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        torch.manual_seed(self.seed * 1_000_003 + trainer.state.global_step)
        model = trainer.accelerator.unwrap_model(trainer.model)
        rs = rollout.run(model, self.tokenizer, [self.tasks[p] for p in prompts], self.fmt, self.cfg,
                         sample=True, temperature=self.temperature)
        self.last = rollout_metrics(rs)
        return {
            "prompt_ids": [r.prompt_ids for r in rs],
            "completion_ids": [r.completion_ids for r in rs],
            "logprobs": None,
            "env_mask": [r.env_mask for r in rs],
            "success": [float(r.success) for r in rs],
        }


def success_reward(prompts: list[str], completions: list[Any], success: list[float], **_: Any) -> list[float]:
    """The 0/1 task outcome computed by the checker during the rollout; no format reward."""
    return success


class StepLogger(TrainerCallback):
    """Joins TRL's per-step logs with the rollout's diagnostics into one record per step."""

    def __init__(self, source: MultiTurnRollout, on_step: Callable[[dict[str, float]], None]):
        self.source = source
        self.on_step = on_step

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[override]
        if not logs or "train_runtime" in logs:
            return
        record = {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
        record.update(self.source.last)
        self.on_step({k: v for k, v in record.items() if math.isfinite(v)})


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    fmt: Format,
    rl: RLConfig,
    rollout_cfg: RolloutConfig,
    learning_rate: float,
    seed: int,
    on_step: Callable[[dict[str, float]], None],
) -> None:
    source = MultiTurnRollout(tasks, fmt, tokenizer, rollout_cfg, rl.temperature, seed)
    with tempfile.TemporaryDirectory(prefix="toolrl-grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch,
            max_steps=rl.steps,
            per_device_train_batch_size=rl.prompts_per_step * rl.num_generations,
            num_generations=rl.num_generations,
            gradient_accumulation_steps=1,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            beta=rl.beta,
            temperature=rl.temperature,
            loss_type=rl.loss_type,
            max_completion_length=rollout_cfg.max_total_tokens,
            logging_steps=1,
            **models.trainer_defaults(seed),
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[success_reward],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": t.id} for t in tasks]),
            processing_class=tokenizer,
            rollout_func=source,
            callbacks=[StepLogger(source, on_step)],
        )
        trainer.train()
