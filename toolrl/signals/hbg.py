"""Hint-based guidance (HBG): `k` members of each group are sampled with the correct call sequence
appended to the system prompt; the prompt TRL scores them on is the un-hinted one, so old and new
log-probs are both computed without the hint, as in the paper (no importance correction)."""

from dataclasses import dataclass, field

from toolrl.config import Config
from toolrl.envs.base import Task
from toolrl.plugins import CellContext, Signal
from toolrl.signals.ops import check_group_share


@dataclass
class HBGConfig:
    """Hint-based guidance: `k` rollouts of each group are sampled with the correct call sequence
    in the system prompt, and scored without it (the paper's hint_num=2)."""

    k: int = field(default=2, metadata={"help": "rollouts per group sampled with the hint", "minimum": 1})


class HBG(Signal):
    name = "hbg"
    summary = "k rollouts of each group sampled with the call sequence as a hint, scored without it"
    schemes = ("rl",)
    config = HBGConfig

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        check_group_share(cfg, "hbg", cfg.signals.hbg.k, used)

    def member_kind(self, member: int) -> str:
        return "hinted" if member < self.section.k else "policy"

    def hint(self, ctx: CellContext, task: Task) -> str:
        from toolrl.core.supervision import hint_text

        return hint_text(task, ctx.fmt)
