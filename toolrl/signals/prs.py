"""Process-reflection supervision (PRS): ETS plus, for each selected task, one SFT example whose
assistant message is a judge's reflection on the task's latest failed trajectory (the first
deviating step, the wrong call, the right one, why), rendered with the policy's chat template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from toolrl.config import Config, JudgeConfig, check
from toolrl.plugins import CellContext, Message
from toolrl.signals.ets import ETS

if TYPE_CHECKING:
    from toolrl.core.supervision import GroupOutcome


@dataclass
class PRSConfig:
    """Process-reflection supervision: ETS plus SFT on a reflection of each selected failure."""

    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "who writes the reflections"})


class PRS(ETS):
    name = "prs"
    summary = "ETS plus SFT on a judge's reflection on each selected failed trajectory"
    config = PRSConfig
    reads = ("signals.ets",)

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        j = cfg.signals.prs.judge
        check(
            j.kind in ("rule", "hf", "openai"),
            "signals.prs.judge.kind",
            f"choose from rule, hf, openai, got '{j.kind}'",
        )
        if j.kind == "hf":
            check(j.model is not None, "signals.prs.judge.model", "the hf judge needs a model path")
        if j.kind == "openai":
            check(
                j.url is not None and j.model is not None,
                "signals.prs.judge.url",
                "the openai judge needs url and model",
            )

    def setup(self, ctx: CellContext) -> None:
        from toolrl.core import reflect

        self.judge = reflect.make_judge(self.section.judge)

    def more_examples(self, ctx: CellContext, chosen: dict[str, GroupOutcome]) -> list[list[Message]]:
        from toolrl.core import reflect

        return [
            reflect.reflection_example(
                ctx.tasks[t], ctx.fmt, g.failed_messages, self.judge.reflect(ctx.tasks[t], ctx.fmt, g.failed_messages)
            )
            for t, g in sorted(chosen.items())
            if g.failed_messages
        ]
