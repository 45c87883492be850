"""Collapse diagnostics: the structural state of each assistant message, and the probability the
model puts on control tokens while it generates.

The paper's claim is that collapse shows up as spikes in the probability of control tokens
(`<tool_call>`, `<|im_end|>`) where content should follow. These probes measure exactly that on the
rollouts that training already generates, so they cost no extra forward pass.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from toolrl.config import ForbidRule
    from toolrl.formats import Format, Parsed

STATES = ("healthy_call", "healthy_response", "text_pollution", "full_collapse")
_CONTROL = re.compile(r"<\|im_end\|>|<\|im_start\|>|</?tool_call>|</?tool_response>|<\|endoftext\|>")


def output_state(text: str, parsed: Parsed, fmt: Format) -> str:
    """Classify one assistant message into the paper's four states.

    full_collapse: nothing but control tokens and whitespace (e.g. a bare `<tool_call>`);
    healthy_call: well-formed calls and nothing else; healthy_response: plain text with no call
    syntax; text_pollution: everything in between (malformed calls, calls mixed with text)."""
    if not _CONTROL.sub("", text).strip():
        return "full_collapse"
    if parsed.calls and parsed.error is None and not parsed.extra_text:
        return "healthy_call"
    if parsed.is_answer and fmt.call_marker not in text and not _CONTROL.search(text):
        return "healthy_response"
    return "text_pollution"


class ControlTokenProbe(LogitsProcessor):
    """Records p(<|im_end|>) and p(<tool_call>) at every generation step, for every row.

    A logits processor sees the full next-token distribution for free during `generate`; keeping
    two floats per step (not the whole vocabulary) keeps this cheap for a 150k-token vocabulary,
    and they stay on the model's device until `stats` (a copy to the host every step would make
    the GPU wait for each token)."""

    def __init__(self, token_ids: dict[str, int]):
        self.names = list(token_ids)
        self.ids = torch.tensor(list(token_ids.values()))
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float(), dim=-1)
        self.steps.append(probs[:, self.ids.to(scores.device)])
        return scores

    def reset(self) -> None:
        self.steps = []

    def stats(self, new_tokens: torch.Tensor, lengths: list[int]) -> list[dict[str, list[float]]]:
        """Per row: probabilities of each control token (a) at the message's first position,
        (b) where the model sampled it, (c) right after a sampled `<tool_call>` (the collapse
        pattern is `<|im_end|>` there). `p_content` is the mass on every other token at (a) and
        (c): the chance that content follows, defined the same way for any tokenizer (the first
        content token of a JSON body is `{` for one vocabulary and `{"` for another)."""
        if not self.steps:
            return [{} for _ in lengths]
        stacked = torch.stack(self.steps, dim=1).cpu()  # rows × steps × tokens
        probs = stacked.tolist()
        content_all = (1.0 - stacked.sum(dim=-1)).tolist()
        ids = self.ids.tolist()
        tool_call = dict(zip(self.names, ids, strict=True)).get("tool_call")
        out = []
        for row, n in enumerate(lengths):
            rec: dict[str, list[float]] = {}
            toks = new_tokens[row, :n].tolist()
            p, content = probs[row], content_all[row]
            after_call = [t for t in range(1, n) if toks[t - 1] == tool_call]
            for j, name in enumerate(self.names):
                rec[f"p_{name}/first"] = [p[0][j]]
                rec[f"p_{name}/sampled"] = [p[t][j] for t, tok in enumerate(toks) if tok == ids[j]]
                rec[f"p_{name}/after_tool_call"] = [p[t][j] for t in after_call]
            rec["p_content/first"] = [content[0]]
            rec["p_content/after_tool_call"] = [content[t] for t in after_call]
            out.append(rec)
        return out


class ForbidPatterns(LogitsProcessor):
    """Masks tokens that would continue a collapsed pattern: `rules` maps the preceding token id
    (None: the first position of the message) to the ids it may not be followed by.

    Used twice: as the `ctrl` signal's sampling-time clamp, and as the restoration probe at
    evaluation, where it asks whether the capability survives once the pattern is ruled out."""

    def __init__(self, rules: dict[int | None, list[int]]):
        self.rules = {after: torch.tensor(ids) for after, ids in rules.items()}
        self.start = 0

    def reset(self, prompt_width: int) -> None:
        self.start = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        first = input_ids.shape[1] == self.start
        for after, ids in self.rules.items():
            if after is None:
                rows = torch.full((scores.shape[0],), first, device=scores.device)
            else:
                rows = (input_ids[:, -1] == after) & (not first)
            if rows.any():
                scores[rows.nonzero(as_tuple=True)[0].unsqueeze(1), ids.to(scores.device)] = float("-inf")
        return scores


def forbid_rules(tokenizer: PreTrainedTokenizerBase, rules: list[ForbidRule]) -> dict[int | None, list[int]]:
    """Config rules (token strings) → token ids, failing with the config key when a token is not
    one token in this vocabulary (a rule that silently matched nothing would mask nothing)."""
    vocab = tokenizer.get_vocab()
    out: dict[int | None, list[int]] = {}
    for i, r in enumerate(rules):
        for tok in ([r.after] if r.after else []) + list(r.tokens):
            if tok not in vocab:
                raise ValueError(
                    f"config key 'diagnostics.forbid[{i}]': '{tok}' is not a single token of this tokenizer"
                )
        out.setdefault(vocab[r.after] if r.after else None, []).extend(vocab[t] for t in r.tokens)
    return out
