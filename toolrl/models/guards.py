"""Stop (or skip) a training step whose gradient is NaN or inf, and never save such weights.

One bad step is enough: Adam carries a NaN into its moments and every later step, so a job that
goes on writes a checkpoint of NaNs hours later that evaluates to 0% and looks like a collapse.
The check sits on `on_pre_optimizer_step` (after backward and clipping, before the update), so
it sees exactly what the optimizer would apply, for TRL's SFT and GRPO trainers alike.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

MODES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """A NaN or inf in a gradient or in weights: the message names the step and the run."""


def _bad_grads(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]


class NonFiniteGuard(TrainerCallback):
    """`stop`: raise, naming the step and `where` (the cell). `skip`: drop this step's gradients
    (a parameter without a gradient is left alone by the optimizer, moments included), log it and
    count it in `skipped`."""

    def __init__(self, where: str, mode: str = "stop"):
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
        self.where = where
        self.mode = mode
        self.skipped: list[int] = []

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None, **kwargs: Any
    ) -> None:
        if model is None:
            return
        bad = _bad_grads(model)
        if not bad:
            return
        step = state.global_step + 1
        what = f"non-finite gradient at step {step} of {self.where} in {len(bad)} tensors (first: {bad[0]})"
        if self.mode == "stop":
            raise NonFiniteError(what + "; set numerics.on_nonfinite: skip to drop such steps instead")
        for p in model.parameters():
            p.grad = None
        self.skipped.append(step)
        log.warning("%s: update skipped", what)


@torch.no_grad()
def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """The parameters holding a NaN or inf: checked on save and again on load. A NaN or inf
    anywhere makes a tensor's sum non-finite, and the sum is 20x faster than `isfinite` on every
    element (135 M float32 weights, one CPU thread: 0.12 s against 2.7 s); a sum that overflows
    on finite weights is checked element by element."""
    return [n for n, p in model.named_parameters() if not torch.isfinite(p.sum()) and not torch.isfinite(p).all()]


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Refuse to save weights with a NaN or inf in them."""
    bad = nonfinite_weights(model)
    if bad:
        raise NonFiniteError(f"{where}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}); not saved")


__all__ = ["MODES", "NonFiniteError", "NonFiniteGuard", "check_finite", "nonfinite_weights"]
