"""Collapse diagnostics: the structural state of each assistant message, and the probability the
model puts on control tokens while it generates.

The paper's claim is that collapse shows up as spikes in the probability of control tokens
(`<tool_call>`, `<|im_end|>`) where content should follow. These probes measure exactly that on the
rollouts that training already generates, so they cost no extra forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

    A logits processor sees the full next-token distribution for free while the rollout decodes; keeping
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


@dataclass(frozen=True)
class Pattern:
    """A collapsed pattern, as the restoration probe rules it out: where an assistant message is
    written (`where`: "any"; "call", right after a user turn; "reply", right after a tool's
    answer), after the token `after` ("": at the message's first position), the `tokens` are
    forbidden, or with `only`, every token but them."""

    name: str
    where: str
    after: str
    tokens: tuple[str, ...]
    only: bool = False

    @property
    def spelled_in(self) -> tuple[str, ...]:
        """The token strings the pattern is written in: each must be one token of the vocabulary."""
        return ((self.after,) if self.after else ()) + self.tokens


CONTEXTS = ("call", "reply")  # an assistant message right after a user turn, or after a tool's answer

CALL_CLOSED = Pattern("a call closed at once", "any", "<tool_call>", ("<|im_end|>",))
SECOND_OPENER = Pattern("a second <tool_call>", "any", "<tool_call>", ("<tool_call>",))
EMPTY = Pattern("an empty message", "any", "", ("<|im_end|>",))
REPLY_CALLS = Pattern("a reply opens a call", "reply", "", ("<tool_call>",))
CALL_TEXT = Pattern("a call turn opens with text", "call", "", ("<tool_call>",), only=True)

# (probe, sign of its shift) → the patterns such a shift shows. The sampled probes (`p_*/first`)
# pool call and reply turns; the expert probes (`probe/*`) read them apart.
SHOWN_BY: dict[tuple[str, int], tuple[Pattern, ...]] = {
    ("p_im_end/after_tool_call", 1): (CALL_CLOSED,),
    ("probe/p_im_end/after_call", 1): (CALL_CLOSED,),
    ("p_tool_call/after_tool_call", 1): (SECOND_OPENER,),
    ("probe/p_tool_call/after_call", 1): (SECOND_OPENER,),
    ("p_content/after_tool_call", -1): (CALL_CLOSED, SECOND_OPENER),
    ("probe/p_content/after_call", -1): (CALL_CLOSED, SECOND_OPENER),
    ("p_im_end/first", 1): (EMPTY,),
    ("probe/p_im_end/call", 1): (EMPTY,),
    ("probe/p_im_end/reply", 1): (EMPTY,),
    ("p_tool_call/first", 1): (REPLY_CALLS,),
    ("probe/p_tool_call/reply", 1): (REPLY_CALLS,),
    ("p_tool_call/first", -1): (CALL_TEXT,),
    ("probe/p_tool_call/call", -1): (CALL_TEXT,),
    ("p_content/first", 1): (CALL_TEXT,),
    ("probe/p_content/call", 1): (CALL_TEXT,),
    ("p_content/first", -1): (EMPTY, REPLY_CALLS),
    ("probe/p_content/reply", -1): (EMPTY, REPLY_CALLS),
}


def shown_patterns(shifts: Mapping[str, float], threshold: float) -> list[Pattern]:
    """The patterns a collapsed run shows: those of every probe whose shift (signed, from the
    run's start to its collapse, as `collapse.detect` reports them) reached `threshold`."""
    out: list[Pattern] = []
    for probe, shift in shifts.items():
        if abs(shift) >= threshold:
            out += [p for p in SHOWN_BY.get((probe, 1 if shift > 0 else -1), ()) if p not in out]
    return out


@dataclass(frozen=True)
class _Rule:
    where: str
    after: int | None
    ids: torch.Tensor
    only: bool


class ForbidPatterns(LogitsProcessor):
    """Masks tokens that would continue a collapsed pattern (`Pattern`s, or the config's
    `diagnostics.forbid` rules, which apply at every message).

    Used twice: as the `ctrl` signal's sampling-time clamp, and as the restoration probe at
    evaluation, where it asks whether the capability survives once the pattern is ruled out.
    `reset` gives each row's context ("call" or "reply") for the rules that apply to one."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, patterns: Sequence[Pattern], key: str = "patterns"):
        vocab = tokenizer.get_vocab()
        self.rules = []
        for i, p in enumerate(patterns):
            for tok in p.spelled_in:
                if tok not in vocab:
                    # A rule that silently matched nothing would mask nothing.
                    raise ValueError(f"config key '{key}[{i}]': '{tok}' is not a single token of this tokenizer")
            ids = torch.tensor([vocab[t] for t in p.tokens])
            self.rules.append(_Rule(p.where, vocab[p.after] if p.after else None, ids, p.only))
        self.start = 0
        self.contexts: torch.Tensor | None = None

    def reset(self, prompt_width: int, contexts: Sequence[str] | None = None) -> None:
        self.start = prompt_width
        self.contexts = None if contexts is None else torch.tensor([CONTEXTS.index(c) for c in contexts])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        first = input_ids.shape[1] == self.start
        for rule in self.rules:
            if rule.after is None:
                rows = torch.full((scores.shape[0],), first, device=scores.device)
            else:
                rows = (input_ids[:, -1] == rule.after) & (not first)
            if rule.where != "any":
                if self.contexts is None:
                    raise ValueError(f"a '{rule.where}' pattern needs each row's context (reset(..., contexts))")
                rows = rows & (self.contexts.to(scores.device) == CONTEXTS.index(rule.where))
            if not rows.any():
                continue
            index = rows.nonzero(as_tuple=True)[0].unsqueeze(1)
            ids = rule.ids.to(scores.device)
            if rule.only:
                kept = scores[index, ids]
                scores[index] = float("-inf")
                scores[index, ids] = kept
            else:
                scores[index, ids] = float("-inf")
        return scores


def forbid_rules(rules: list[ForbidRule]) -> list[Pattern]:
    """The config's `diagnostics.forbid` rules as patterns that apply at every message."""
    return [Pattern(f"{r.after or 'first'} → {'/'.join(r.tokens)}", "any", r.after, tuple(r.tokens)) for r in rules]
