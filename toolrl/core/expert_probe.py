"""What collapses, read on a fixed set of expert trajectories teacher-forced through the model.

The probes of the sampled rollouts (`diagnostics.ControlTokenProbe`) move whenever the mix of
messages the policy writes moves: p(`<tool_call>`) at a message's first position pools call
positions (≈ 1 for a healthy model) with reply positions (≈ 0). Here the positions are fixed
and typed by the expert: every step reads the same trajectories, so a change is the model's.
One forward pass without gradient over `diagnostics.probe_tasks` trajectories per RL step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from toolrl.core.episode import expert_messages
from toolrl.core.supervision import encode_examples
from toolrl.envs.base import Task
from toolrl.formats import Format


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of labelled tokens: one per assistant message, in order."""
    spans, start = [], None
    for i, v in enumerate([*labels, -100]):
        if v != -100 and start is None:
            start = i
        elif v == -100 and start is not None:
            spans.append((start, i))
            start = None
    return spans


@dataclass
class ExpertProbe:
    """The encoded trajectories and, as boolean masks over `input_ids` positions, where each
    probe reads: the position holding the first token of a call message (`call_first`) or of a
    reply message (`reply_first`), the token after an expert `<tool_call>` (`after_call`), and
    argument-value tokens (`value`). A position's probability is the model's prediction of it
    from the positions before."""

    batch: dict[str, torch.Tensor]
    call_first: torch.Tensor
    reply_first: torch.Tensor
    after_call: torch.Tensor
    value: torch.Tensor
    control_ids: dict[str, int]

    @classmethod
    def build(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        tasks: list[Task],
        fmt: Format,
        n: int,
        seed: int,
        control_ids: dict[str, int],
        value_ids: list[int],
    ) -> ExpertProbe:
        """`n` expert trajectories of `tasks`, drawn once with `seed` (the same for every cell of
        a sweep, so probes compare across cells)."""
        chosen = random.Random(seed).sample(tasks, min(n, len(tasks)))
        examples = [expert_messages(t, fmt) for t in chosen]
        batch = encode_examples(tokenizer, examples)
        shape = batch["input_ids"].shape
        call_first, reply_first, after_call = (torch.zeros(shape, dtype=torch.bool) for _ in range(3))
        tool_call = control_ids.get("tool_call")
        for row, messages in enumerate(examples):
            replies = [m["content"] for m in messages if m["role"] == "assistant"]
            spans = _spans(batch["labels"][row].tolist())
            if len(spans) != len(replies):
                raise ValueError(f"task {chosen[row].id}: {len(replies)} assistant messages but {len(spans)} spans")
            ids = batch["input_ids"][row]
            for (a, b), text in zip(spans, replies, strict=True):
                is_call = bool(fmt.parse(text).calls)
                (call_first if is_call else reply_first)[row, a] = True
                if tool_call is not None:
                    for i in range(a, b - 1):
                        if ids[i] == tool_call:
                            after_call[row, i + 1] = True
        value = torch.isin(batch["input_ids"], torch.tensor(value_ids)) & (batch["labels"] != -100)
        return cls(batch, call_first, reply_first, after_call, value, control_ids)

    @torch.no_grad()
    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """The probes' means over the set, named `probe/<what>/<where>`. One example at a time,
        and only the logits of labelled positions (`logits_to_keep` as indices): a real model's
        full logits over a 16k-token trajectory would be gigabytes."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        where = {"call": self.call_first, "reply": self.reply_first, "after_call": self.after_call}
        control = torch.tensor(list(self.control_ids.values()))
        values: dict[str, list[torch.Tensor]] = {}

        def add(key: str, x: torch.Tensor) -> None:
            values.setdefault(key, []).append(x)

        try:
            for row in range(self.batch["input_ids"].shape[0]):
                n = int(self.batch["attention_mask"][row].sum())
                ids = self.batch["input_ids"][row, :n]
                # Target positions t (labelled), each predicted by the logits at t - 1.
                target = (self.batch["labels"][row, :n] != -100).nonzero()[:, 0]
                target = target[target > 0]
                out = model(input_ids=ids[None].to(device), logits_to_keep=(target - 1).to(device), use_cache=False)
                logp = torch.log_softmax(out.logits[0].float(), dim=-1).cpu()
                tokens = ids[target]
                add("expert_nll", -logp.gather(-1, tokens[:, None])[:, 0])
                value = self.value[row, target]
                add("value_accuracy", (logp.argmax(-1) == tokens)[value].float())
                p = logp.exp()
                content = 1 - p[:, control].sum(-1)
                for place, mask in where.items():
                    sel = mask[row, target]
                    for name, tok in self.control_ids.items():
                        add(f"p_{name}/{place}", p[sel, tok])
                    add(f"p_content/{place}", content[sel])
        finally:
            model.train(was_training)
        return {f"probe/{k}": float(torch.cat(v).mean()) for k, v in values.items() if sum(x.numel() for x in v)}
