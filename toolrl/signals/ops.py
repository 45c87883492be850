"""Off-policy supervision (OPS): the first `k` members of each GRPO group are the expert
trajectory, replayed through the same episode and checker (so its tool results are real), under
the ordinary GRPO loss. `success` in the train log counts the on-policy members only."""

from dataclasses import dataclass, field

from toolrl.config import Config, check
from toolrl.plugins import Signal


@dataclass
class OPSConfig:
    """Off-policy supervision: `k` rollouts of each GRPO group are the expert trajectory."""

    k: int = field(default=1, metadata={"help": "rollouts per group replaced by the expert trajectory", "minimum": 1})


class OPS(Signal):
    name = "ops"
    summary = "the expert trajectory replaces k rollouts of each GRPO group"
    schemes = ("rl",)
    config = OPSConfig

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        check_group_share(cfg, "ops", cfg.signals.ops.k, used)

    def member_kind(self, member: int) -> str:
        return "expert" if member < self.section.k else "policy"


def check_group_share(cfg: Config, name: str, k: int, used: bool) -> None:
    """`k` of a group's members supervised: at least one, and at least one left on-policy."""
    check(k > 0, f"signals.{name}.k", f"must be > 0, got {k}")
    if used:
        n = cfg.rl.num_generations
        check(k < n, f"signals.{name}.k", f"must be in [1, rl.num_generations - 1] = [1, {n - 1}], got {k}")
