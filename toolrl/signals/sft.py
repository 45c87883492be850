"""Plain SFT on expert trajectories of random RL tasks, combined with RL by a scheme: before it
(sequential), in its loss (synchronous), between its phases (interleaved), or alone with the
same batches as synchronous (sft_only, the control)."""

from typing import Any

from toolrl.plugins import CellContext, PhaseData, Signal


class SFT(Signal):
    name = "sft"
    summary = "SFT on expert trajectories of random RL tasks, as the scheme places it"
    schemes = ("sequential", "synchronous", "interleaved", "sft_only")

    def phase_data(self, ctx: CellContext, failures: Any, rl_step: int, need: int, rng: Any) -> PhaseData:
        return PhaseData(ctx.pool.sample(need))
