"""Supervised fine-tuning on expert trajectories, through TRL's SFTTrainer.

Two additions on top of SFTTrainer, both needed for a 1 M model to learn to copy argument values
(measured in `shared/reference/tiny-model.md`, Addendum 2):
- a fixed curriculum order (an echo phase first, then length-bucketed batches), which we lay out
  in the dataset itself and feed with the trainer's `sequential` sampling strategy;
- a loss that weights argument-value tokens (`value_weight`), by overriding `compute_loss`.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from toolrl.core.supervision import weighted_nll
from toolrl.models import model as models

Messages = list[dict[str, str]]


def _length(m: Messages) -> int:
    return sum(len(x["content"]) + 8 for x in m)


def curriculum(
    trajectories: Callable[[], Messages],
    echo: Callable[[], Messages],
    steps: int,
    batch_size: int,
    echo_steps: int = 0,
    replay_until: int = 0,
    replay_per_batch: int = 0,
    bucket: int = 8,
    seed: int = 0,
) -> list[Messages]:
    """The training examples in the exact order they will be seen, `batch_size` per step.

    Steps 1..echo_steps are echo-only; until `replay_until` each batch keeps `replay_per_batch`
    echo examples; then trajectories only. Trajectories are drawn `bucket` batches at a time,
    sorted by length and cut into batches (about a third less padding), and the batches shuffled."""
    rng = random.Random(seed)
    order: list[Messages] = []
    pending: list[list[Messages]] = []
    for step in range(1, steps + 1):
        if step <= echo_steps:
            order += [echo() for _ in range(batch_size)]
            continue
        n_echo = replay_per_batch if step <= replay_until else 0
        n_traj = batch_size - n_echo
        if not pending or len(pending[-1]) != n_traj:
            pool = sorted((trajectories() for _ in range(bucket * n_traj)), key=_length)
            pending = [pool[i : i + n_traj] for i in range(0, len(pool), n_traj)]
            rng.shuffle(pending)
        order += pending.pop() + [echo() for _ in range(n_echo)]
    return order


class ValueWeightedSFTTrainer(SFTTrainer):
    """SFTTrainer whose token loss weights argument-value tokens by `value_weight`.

    The loss is normalised by the total weight of the batch's assistant tokens, so a weight of 1
    reproduces SFTTrainer's token-mean cross-entropy. Gradient accumulation is not used here."""

    def __init__(self, *args: Any, value_token_ids: list[int], value_weight: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.value_ids = torch.tensor(sorted(value_token_ids), dtype=torch.long)
        self.value_weight = value_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
        outputs = model(**model_inputs, use_cache=False)
        loss = weighted_nll(outputs.logits, inputs["labels"], self.value_ids, self.value_weight)
        return (loss, outputs) if return_outputs else loss


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Messages],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    value_token_ids: list[int],
    value_weight: float,
    seed: int,
    callbacks: list[TrainerCallback] | None = None,
    log_every: int = 25,
    gradient_checkpointing: bool = False,
) -> list[dict[str, Any]]:
    """Run `steps` optimizer steps over `examples` in order; return the trainer's log history."""
    if len(examples) < steps * batch_size:
        raise ValueError(f"curriculum has {len(examples)} examples, {steps * batch_size} needed")
    with tempfile.TemporaryDirectory(prefix="toolrl-sft-") as scratch:
        args = TRLSFTConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1},
            warmup_steps=warmup_steps,
            adam_beta1=0.9,
            adam_beta2=0.95,
            weight_decay=0.0,
            max_grad_norm=1.0,
            train_sampling_strategy="sequential",
            assistant_only_loss=True,
            packing=False,
            max_length=tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else 4096,
            logging_steps=log_every,
            **models.trainer_defaults(seed, gradient_checkpointing),
            dataloader_drop_last=True,
        )
        trainer = ValueWeightedSFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{"messages": m} for m in examples[: steps * batch_size]]),
            processing_class=tokenizer,
            callbacks=callbacks,
            value_token_ids=value_token_ids,
            value_weight=value_weight,
        )
        trainer.train()
        return list(trainer.state.log_history)
