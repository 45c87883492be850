"""The supervision that signals add to GRPO: hints (HBG), expert batches (synchronous SFT and the
ctrl penalty), and the choice of which tasks an SFT phase trains on (ETS, PRS).

Everything here is data on the policy's own chat template: expert trajectories are rendered
with `apply_chat_template` and their loss mask is the template's assistant mask, so a real
checkpoint's layout is followed exactly, and no example is ever a Python repr of a message list.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from toolrl.core.episode import Message, expert_messages
from toolrl.envs.base import Task
from toolrl.formats import Format


def hint_text(task: Task, fmt: Format) -> str:
    """The HBG hint: the task's correct call sequence, turn by turn, in the prompt's own syntax."""
    lines = ["Hint: the correct tool calls, turn by turn."]
    for i, turn in enumerate(task.turns, 1):
        if turn.rounds:
            calls = "\n".join(fmt.render_calls(r) for r in turn.rounds)
            lines.append(f"Turn {i}:\n{calls}")
        else:
            lines.append(f"Turn {i}: no call; ask the user for the missing value.")
    return "\n".join(lines)


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: list[list[Message]]) -> dict[str, torch.Tensor]:
    """Chat examples → right-padded `input_ids`, `attention_mask` and `labels` (-100 outside the
    assistant messages), as SFTTrainer's assistant-only loss sees them."""
    rows = [
        tokenizer.apply_chat_template(m, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        for m in examples
    ]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id
    ids, att, labels = [], [], []
    for r in rows:
        n = len(r["input_ids"])
        ids.append(r["input_ids"] + [pad] * (width - n))
        att.append([1] * n + [0] * (width - n))
        labels.append(
            [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"], strict=True)] + [-100] * (width - n)
        )
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att), "labels": torch.tensor(labels)}


def token_weights(labels: torch.Tensor, value_ids: torch.Tensor, value_weight: float) -> torch.Tensor:
    """The weight of each next-token target: 0 unlabelled, `value_weight` argument values, else 1."""
    target = labels[:, 1:]
    mask = (target != -100).float()
    return torch.where(torch.isin(target, value_ids.to(target.device)), value_weight, 1.0) * mask


def weighted_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    value_ids: torch.Tensor,
    value_weight: float,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy on labelled tokens, argument-value tokens weighted by `value_weight`
    and normalised by the total weight (weight 1 is the usual token-mean loss). A micro-batch
    passes its whole batch's total weight as `normalizer`, so the accumulated loss is the
    batch's loss and not a mean of micro-batch means."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    weight = token_weights(labels, value_ids, value_weight)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.clamp(min=0).reshape(-1), reduction="none")
    total = weight.sum().clamp(min=1.0) if normalizer is None else max(normalizer, 1.0)
    return (nll.view_as(weight) * weight).sum() / total


def control_penalty(
    logits: torch.Tensor, labels: torch.Tensor, control_ids: torch.Tensor, threshold: float
) -> torch.Tensor:
    """The ctrl signal's loss: mean over expert assistant positions whose next token is no control
    token of relu(log p(c) − log threshold), summed over control tokens c. Only spikes above the
    threshold are pushed down, so a healthy model (p ≈ 0 there) feels no gradient at all."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    ids = control_ids.to(target.device)
    where = (target != -100) & ~torch.isin(target, ids)
    excess = torch.relu(logp[..., ids] - torch.log(torch.tensor(threshold))).sum(-1)
    return (excess * where).sum() / where.sum().clamp(min=1)


class ExpertPool:
    """Expert trajectories of a task list, drawn with a seeded generator (synchronous SFT, ctrl
    penalty, the SFT phases of the interleaved scheme)."""

    def __init__(self, tasks: list[Task], fmt: Format, seed: int):
        if not tasks:
            raise ValueError("an expert pool needs at least one task")
        self.tasks = tasks
        self.fmt = fmt
        self.rng = random.Random(seed)
        self._cache: dict[str, list[Message]] = {}

    def messages(self, task: Task) -> list[Message]:
        if task.id not in self._cache:
            self._cache[task.id] = expert_messages(task, self.fmt)
        return self._cache[task.id]

    def sample(self, n: int) -> list[list[Message]]:
        return [self.messages(self.rng.choice(self.tasks)) for _ in range(n)]


@dataclass
class GroupOutcome:
    """The on-policy rollouts of one task in one RL step (what ETS selects from)."""

    rl_step: int
    task_id: str
    successes: list[bool]
    failed_messages: list[Message] | None  # one failed trajectory, for the PRS reflection


class FailureLog:
    """Every group's outcome, so that an SFT phase can select the tasks that failed recently."""

    def __init__(self) -> None:
        self.groups: list[GroupOutcome] = []

    def add(self, outcome: GroupOutcome) -> None:
        self.groups.append(outcome)

    def select(self, last_rl_step: int, window: int, rule: str) -> dict[str, GroupOutcome]:
        """Tasks with a failure in RL steps (last_rl_step − window, last_rl_step]: `any` selects a
        task with one failed rollout, `all` one whose whole group failed. Maps each selected task
        to its latest qualifying group (whose failed trajectory PRS reflects on)."""
        if rule not in ("any", "all"):
            raise ValueError(f"unknown ETS rule '{rule}' (choose from any, all)")
        chosen: dict[str, GroupOutcome] = {}
        for g in self.groups:
            if not last_rl_step - window < g.rl_step <= last_rl_step or not g.successes:
                continue
            failed = not all(g.successes) if rule == "any" else not any(g.successes)
            if failed:
                chosen[g.task_id] = g
        return chosen
