"""A control, not a fix: each RL step's rewards are shuffled across the step's rollouts (a seeded
permutation per step), so a rollout's reward says nothing about what it did while the step's
rewards keep their mean and spread. If vanilla GRPO collapses no slower than this arm, the
collapse is the optimizer's noise on a 0/1 gradient, not what the reward teaches."""

import random
from typing import Any

from toolrl.plugins import CellContext, Signal


class RandomReward(Signal):
    name = "random_reward"
    summary = "control: each step's rewards permuted across its rollouts (reward carries no information)"
    schemes = ("rl",)

    def rewards(self, ctx: CellContext, rollouts: list[Any], rewards: list[float], rl_step: int) -> list[float]:
        # Seeded by the cell and the step alone, so a resumed job draws the same permutation.
        shuffled = list(rewards)
        random.Random(f"{ctx.seed}:random_reward:{rl_step}").shuffle(shuffled)
        return shuffled
