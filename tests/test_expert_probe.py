"""The teacher-forced expert probes read the positions they name: a model that predicts every
next token exactly must read p(<tool_call>) = 1 where calls start and 0 where replies start, and
a model off by one position, or one that always says <tool_call>, must read otherwise."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import pytest
import torch

from toolrl.core.episode import expert_messages
from toolrl.core.expert_probe import ExpertProbe
from toolrl.core.rollout import control_token_ids
from toolrl.formats import get_format
from toolrl.training.warmup import value_token_ids

FMT = get_format("json")


class Scripted(torch.nn.Module):
    """Puts (almost) all probability on one token per position, chosen by `pick(ids, t)` for the
    logits at position t (which predict position t + 1)."""

    def __init__(self, vocab: int, pick):
        super().__init__()
        self.vocab, self.pick = vocab, pick
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, logits_to_keep, use_cache=False):
        ids = input_ids[0]
        logits = torch.zeros(len(logits_to_keep), self.vocab)
        for i, t in enumerate(logits_to_keep.tolist()):
            logits[i, self.pick(ids, t)] = 50.0
        return SimpleNamespace(logits=logits[None])


@pytest.fixture(scope="module")
def probe(tokenizer, splits):
    ids = control_token_ids(tokenizer)
    return ExpertProbe.build(tokenizer, splits["rl"], FMT, 8, 0, control_ids=ids, value_ids=value_token_ids(tokenizer))


def test_the_masks_mark_each_expert_message_and_call(probe, tokenizer, splits):
    tool_call = tokenizer.convert_tokens_to_ids("<tool_call>")
    chosen = random.Random(0).sample(splits["rl"], 8)  # as `build` draws them
    messages = [m for t in chosen for m in expert_messages(t, FMT) if m["role"] == "assistant"]
    calls = sum(bool(FMT.parse(m["content"]).calls) for m in messages)
    assert int(probe.call_first.sum()) == calls > 0
    assert int(probe.reply_first.sum()) == len(messages) - calls > 0
    ids = probe.batch["input_ids"]
    assert (ids[probe.call_first] == tool_call).all()  # a call message starts with <tool_call>
    assert not (ids[probe.reply_first] == tool_call).any()
    assert (ids.roll(1, dims=1)[probe.after_call] == tool_call).all()
    assert int(probe.after_call.sum()) == int(((ids == tool_call) & (probe.batch["labels"] != -100)).sum())


def test_an_exact_model_reads_calls_and_replies_apart(probe, tokenizer):
    vocab = len(tokenizer)
    exact = probe.measure(Scripted(vocab, lambda ids, t: int(ids[t + 1])))
    assert exact["probe/p_tool_call/call"] == pytest.approx(1.0)
    assert exact["probe/p_tool_call/reply"] == pytest.approx(0.0, abs=1e-9)
    assert exact["probe/p_im_end/after_call"] == pytest.approx(0.0, abs=1e-9)
    assert exact["probe/p_content/after_call"] == pytest.approx(1.0)
    assert exact["probe/value_accuracy"] == 1.0 and exact["probe/expert_nll"] < 1e-6
    # Every name is one MLflow accepts (alphanumerics, _ - . : / and spaces).
    assert all(re.fullmatch(r"[\w\-. :/]+", k) for k in exact), sorted(exact)

    # Off by one position (predicts the token it sees): the call positions read the header's
    # last token, not <tool_call>.
    shifted = probe.measure(Scripted(vocab, lambda ids, t: int(ids[t])))
    assert shifted["probe/p_tool_call/call"] == pytest.approx(0.0, abs=1e-9)
    assert shifted["probe/value_accuracy"] < 0.5

    tool_call = tokenizer.convert_tokens_to_ids("<tool_call>")
    always = probe.measure(Scripted(vocab, lambda ids, t: tool_call))
    assert always["probe/p_tool_call/reply"] == pytest.approx(1.0)
    assert always["probe/p_content/call"] == pytest.approx(0.0, abs=1e-9)

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    empty = probe.measure(Scripted(vocab, lambda ids, t: im_end if ids[t] == tool_call else int(ids[t + 1])))
    assert empty["probe/p_im_end/after_call"] == pytest.approx(1.0)  # the paper's collapse pattern
    assert empty["probe/p_tool_call/call"] == pytest.approx(1.0)
