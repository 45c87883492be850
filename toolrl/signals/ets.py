"""Erroneous-trajectory supervision (ETS): each interleaved SFT phase trains on the expert
trajectories of the tasks that failed in the last `window` RL steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolrl.config import Config, check
from toolrl.plugins import CellContext, Message, PhaseData, Signal

if TYPE_CHECKING:
    from toolrl.core.supervision import GroupOutcome


@dataclass
class ETSConfig:
    """Erroneous-trajectory supervision: the SFT phase trains on the expert trajectories of tasks
    that failed in the last `window` RL steps; `rule` any: one failed rollout selects a task,
    all: a whole group must have failed."""

    window: int = field(default=10, metadata={"help": "RL steps whose failures select SFT tasks", "minimum": 1})
    rule: str = field(
        default="any",
        metadata={"help": "any: one failed rollout selects a task; all: a whole group", "enum": ["any", "all"]},
    )


class ETS(Signal):
    name = "ets"
    summary = "SFT phases on the expert trajectories of tasks failed in the last window RL steps"
    schemes = ("interleaved",)
    config = ETSConfig

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        e = cfg.signals.ets
        check(e.window > 0, "signals.ets.window", f"must be > 0, got {e.window}")
        check(e.rule in ("any", "all"), "signals.ets.rule", f"choose from any, all, got '{e.rule}'")

    def phase_data(self, ctx: CellContext, failures: Any, rl_step: int, need: int, rng: Any) -> PhaseData:
        e = self.cfg.signals.ets
        chosen = failures.select(rl_step, e.window, e.rule)
        selected = sorted(chosen)
        examples = [ctx.pool.messages(ctx.tasks[t]) for t in selected] + self.more_examples(ctx, chosen)
        if not examples:
            return PhaseData([], selected)
        rng.shuffle(examples)  # before the cut, so a surplus drops no task or kind first
        order = [examples[i % len(examples)] for i in range(need)]
        rng.shuffle(order)
        return PhaseData(order, selected)

    def more_examples(self, ctx: CellContext, chosen: dict[str, GroupOutcome]) -> list[list[Message]]:
        """Examples besides the selected tasks' expert trajectories (PRS adds reflections)."""
        return []
