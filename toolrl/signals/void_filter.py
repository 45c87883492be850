"""SimpleTIR's fix, a competitor from the literature: a trajectory with a void message (neither a
parsable call nor a final answer) keeps its place in its group's mean and std but gives no token
to the loss (its loss mask is zeroed)."""

from typing import Any

from toolrl.plugins import Signal


class VoidFilter(Signal):
    name = "void_filter"
    summary = "trajectories with a void message contribute no token to the loss (SimpleTIR)"
    schemes = ("rl",)

    def filter_rollouts(
        self, rollouts: list[Any], masks: list[list[int]], metrics: dict[str, float]
    ) -> list[list[int]]:
        metrics["void_filtered"] = sum(r.episode.voids > 0 for r in rollouts) / len(rollouts)
        return [[0] * len(m) if r.episode.voids else m for r, m in zip(rollouts, masks, strict=True)]
