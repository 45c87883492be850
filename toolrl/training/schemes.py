"""The built-in training schemes: how SFT on expert trajectories and RL combine in one job. Every
scheme gets the same number of RL steps (`rl.steps`); other packages add schemes through the
`toolrl.schemes` entry-point group."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolrl.config import Config, check
from toolrl.plugins import CellContext, LossTerm, Scheme


class RL(Scheme):
    name = "rl"
    summary = "RL only"


class Sequential(Scheme):
    """SFT through TRL's SFTTrainer first, then GRPO with a fresh optimizer: the paper's SFT→RL
    baseline."""

    name = "sequential"
    summary = "SFT (sft.steps), then RL with a fresh optimizer"
    reads = ("sft",)

    def before_rl(
        self, ctx: CellContext, model: Any, on_step: Callable[[dict[str, Any]], None], callbacks: list[Any]
    ) -> int:
        from toolrl.core.episode import expert_messages
        from toolrl.training import sft

        s, seed = self.cfg.sft, ctx.seed
        rng = random.Random(f"{self.cfg.world.seed}:sft:{seed}")
        tasks = list(ctx.tasks.values())
        examples = sft.curriculum(
            lambda: expert_messages(rng.choice(tasks), ctx.fmt), lambda: [], s.steps, s.batch_size, seed=seed
        )
        history = sft.train(
            model,
            ctx.tokenizer,
            examples,
            steps=s.steps,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            warmup_steps=0,
            value_token_ids=ctx.value_ids.tolist(),
            value_weight=s.value_weight,
            seed=seed,
            log_every=max(1, s.steps // 10),
            gradient_checkpointing=self.cfg.model.gradient_checkpointing,
            callbacks=callbacks,
        )
        for h in history:
            if "loss" in h:
                on_step({"phase": "sft", "step": h["step"], "sft_loss": h["loss"]})
        return s.steps


@dataclass
class SynchronousConfig:
    """L = L_rl + `sft_weight` · L_sft at every RL step, L_sft on `batch_size` expert trajectories."""

    sft_weight: float = field(default=0.1, metadata={"help": "λ in L_rl + λ·L_sft", "minimum": 0})
    batch_size: int = field(default=8, metadata={"help": "expert trajectories per RL step", "minimum": 1})


class Synchronous(Scheme):
    name = "synchronous"
    summary = "one loss L_rl + λ·L_sft on a fresh expert batch at every RL step"
    config = SynchronousConfig
    reads = ("sft",)

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        s = cfg.schemes.synchronous
        check(s.sft_weight >= 0, "schemes.synchronous.sft_weight", "must be >= 0")
        check(s.batch_size > 0, "schemes.synchronous.batch_size", "must be > 0")

    def loss_terms(self, ctx: CellContext) -> list[LossTerm]:
        s = self.section
        if s.sft_weight <= 0:
            return []
        from toolrl.core.supervision import weighted_nll

        weight = self.cfg.sft.value_weight
        return [
            LossTerm(
                "sync_sft_loss",
                s.sft_weight,
                s.batch_size,
                lambda logits, labels: weighted_nll(logits, labels, ctx.value_ids, weight),
            )
        ]


class SFTOnly(Synchronous):
    """The control for the supervised signals: the synchronous scheme's expert batches, weight,
    steps and learning rate, with GRPO's own loss weighted 0. Rollouts still run, so success,
    the probes and the collapse detector read the same as in every other cell: whatever such a
    cell gains or loses, the expert data did it alone."""

    name = "sft_only"
    summary = "the synchronous scheme's SFT term alone: rollouts are sampled and logged, GRPO's loss weighs 0"
    config = None
    reads = ("sft", "schemes.synchronous")
    rl_weight = 0.0

    @property
    def section(self) -> Any:
        return self.cfg.schemes.synchronous


@dataclass
class InterleavedConfig:
    """RL phases of `rl_phases` steps (summing to rl.steps, so every scheme gets the same RL
    budget) with an SFT phase of `sft_steps` steps (sft.learning_rate, sft.batch_size) between
    consecutive RL phases, all in one trainer: optimizer state and step counter carry over."""

    rl_phases: list[int] = field(
        default_factory=lambda: [2, 3, 3],
        metadata={"help": "must sum to rl.steps", "minItems": 1, "items": {"minimum": 1}},
    )
    sft_steps: int = field(default=5, metadata={"help": "steps of each SFT phase between RL phases", "minimum": 1})


class Interleaved(Scheme):
    name = "interleaved"
    summary = "RL phases with SFT phases between them, in one trainer (the signal picks the SFT data)"
    config = InterleavedConfig
    reads = ("sft",)

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        il = cfg.schemes.interleaved
        check(
            len(il.rl_phases) > 0 and all(n > 0 for n in il.rl_phases),
            "schemes.interleaved.rl_phases",
            "must be a non-empty list of positive step counts",
        )
        check(il.sft_steps > 0, "schemes.interleaved.sft_steps", "must be > 0")
        if used:
            check(
                sum(il.rl_phases) == cfg.rl.steps,
                "schemes.interleaved.rl_phases",
                f"must sum to rl.steps ({cfg.rl.steps}) so every scheme gets the same RL budget, "
                f"got {sum(il.rl_phases)}",
            )
            check(
                len(il.rl_phases) >= 2,
                "schemes.interleaved.rl_phases",
                "needs at least two RL phases (SFT phases go between them)",
            )

    def rl_phases(self) -> list[int]:
        return list(self.section.rl_phases)

    def sft_steps(self) -> int:
        return self.section.sft_steps
