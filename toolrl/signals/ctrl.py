"""A causal intervention on the control tokens alone (beyond the paper). If the collapse is caused
by spikes of `<|im_end|>` / `<tool_call>` where content should follow, this arm alone should
prevent it. `penalty` pushes down only spikes above a threshold at expert positions; `clamp`
forbids the collapsed patterns (`diagnostics.forbid`) while sampling, never in the loss."""

from dataclasses import dataclass, field

from toolrl.config import Config, check
from toolrl.plugins import CellContext, LossTerm, Signal


@dataclass
class CtrlConfig:
    """An intervention on control tokens alone. penalty: at each RL step, add
    `coef` · mean(relu(log p − log `threshold`)) of `<|im_end|>` and `<tool_call>` over the
    positions of `batch_size` expert trajectories where the expert emits neither; clamp: forbid
    the collapsed patterns (`diagnostics.forbid`) while sampling rollouts."""

    mode: str = field(
        default="penalty",
        metadata={"help": "penalty (a loss term) or clamp (a sampling mask)", "enum": ["penalty", "clamp"]},
    )
    coef: float = field(default=1.0, metadata={"help": "weight of the penalty in the loss", "minimum": 0})
    threshold: float = field(
        default=0.01,
        metadata={
            "help": "probability above which a control token is penalised",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
        },
    )
    batch_size: int = field(
        default=8, metadata={"help": "expert trajectories per RL step for the penalty", "minimum": 1}
    )


class Ctrl(Signal):
    name = "ctrl"
    summary = "a penalty on control-token spikes at expert positions, or a clamp while sampling"
    schemes = ("rl",)
    config = CtrlConfig
    reads = ("diagnostics.forbid",)

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        c = cfg.signals.ctrl
        check(c.mode in ("penalty", "clamp"), "signals.ctrl.mode", f"choose from penalty, clamp, got '{c.mode}'")
        check(0 < c.threshold < 1, "signals.ctrl.threshold", "must be in (0, 1)")
        check(c.batch_size > 0, "signals.ctrl.batch_size", "must be > 0")
        check(c.coef >= 0, "signals.ctrl.coef", "must be >= 0")

    def sampling_mask(self, ctx: CellContext):  # type: ignore[no-untyped-def]
        if self.section.mode != "clamp":
            return None
        from toolrl.core.diagnostics import ForbidPatterns, forbid_rules

        return ForbidPatterns(ctx.tokenizer, forbid_rules(self.cfg.diagnostics.forbid), "diagnostics.forbid")

    def loss_terms(self, ctx: CellContext) -> list[LossTerm]:
        c = self.section
        if c.mode != "penalty":
            return []
        from toolrl.core.supervision import control_penalty

        return [
            LossTerm(
                "ctrl_penalty",
                c.coef,
                c.batch_size,
                lambda logits, labels: control_penalty(logits, labels, ctx.control_ids, c.threshold),
            )
        ]
