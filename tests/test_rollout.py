"""The rollout's loss mask, token by token: masking bugs are a known cause of collapse."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LogitsProcessor

from toolrl.config import RolloutConfig, TinyModelConfig
from toolrl.core import rollout
from toolrl.core.episode import expert_messages
from toolrl.formats import get_format
from toolrl.models.model import build_tiny_model


class ScriptedModel(torch.nn.Module):
    """Stands in for a policy: its `decode` (patched in for `rollout._decode`) emits the expert's
    next assistant message for each row, so the rollout must reproduce the expert trajectory exactly."""

    def __init__(self, scripts: dict[tuple[int, ...], list[list[int]]]):
        super().__init__()
        self.scripts = scripts  # first prompt's tokens → queue of messages (ids incl. <|im_end|>)

    def decode(self, batch: rollout.Batch, budget: int, pad: int) -> torch.Tensor:
        rows = []
        for ids, mask in zip(batch.ids.tolist(), batch.mask.tolist(), strict=True):
            real = [i for i, m in zip(ids, mask, strict=True) if m]
            key = next(k for k in self.scripts if real[: len(k)] == list(k))
            rows.append(self.scripts[key].pop(0)[:budget])
        width = max(map(len, rows))
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


@pytest.mark.parametrize("fmt_name", ["json", "python"])
def test_mask_covers_exactly_the_sampled_tokens(splits, tokenizer, fmt_name, monkeypatch):
    fmt = get_format(fmt_name)
    tasks = splits["warmup"][:12]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    scripts, expected = {}, {}
    for t in tasks:
        msgs = expert_messages(t, fmt)
        prompt = tuple(rollout.encode(tokenizer, rollout.render(tokenizer, msgs[:2], True)))
        scripts[prompt] = [rollout.encode(tokenizer, m["content"]) + [eos] for m in msgs if m["role"] == "assistant"]
        full = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        expected[t.id] = (full["input_ids"], full["assistant_masks"])
    model = ScriptedModel(scripts)
    monkeypatch.setattr(
        rollout, "_decode", lambda model, batch, budget, *rest, **_: model.decode(batch, budget, rest[-1])
    )
    results = rollout.run(
        model, tokenizer, tasks, fmt, RolloutConfig(max_total_tokens=4000), sample=False, batch_size=5
    )
    for r in results:
        ids, mask = expected[r.episode.task.id]
        n = len(r.prompt_ids)
        # The template ends each assistant message with "<|im_end|>\n"; the model stops at <|im_end|>.
        assert r.prompt_ids + r.completion_ids == ids[:-1] and ids[-1:] == tokenizer.encode("\n")
        assert r.env_mask == mask[n:-1], "mask differs from the chat template's assistant mask"
        sampled = [tok for tok, m in zip(r.completion_ids, r.env_mask, strict=True) if m]
        assert sampled.count(eos) == len(r.episode.states)  # every <|im_end|> the model generated is trained
        assert r.success


def test_random_policy_rollout_invariants(splits, tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    )
    cfg = RolloutConfig(max_messages=6, max_new_tokens=24, max_total_tokens=300)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    results = rollout.run(model, tokenizer, splits["id"][:16], get_format("json"), cfg, sample=True)
    for r in results:
        assert r.episode.done
        assert len(r.completion_ids) == len(r.env_mask) > 0
        assert r.env_mask[-1] == 1  # a completion ends on a model token
        assert len(r.prompt_ids) + len(r.completion_ids) <= cfg.max_total_tokens + cfg.max_new_tokens
        assert r.completion_ids[-1] == eos or r.episode.truncated
        assert set(r.probes) >= {"p_im_end/first", "p_tool_call/first"}
        assert all(0.0 <= p <= 1.0 for v in r.probes.values() for p in v)


def test_sampling_is_seeded(splits, tokenizer):
    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    )
    cfg = RolloutConfig(max_messages=4, max_new_tokens=16, max_total_tokens=200)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(
            [
                r.completion_ids
                for r in rollout.run(model, tokenizer, splits["id"][:8], get_format("json"), cfg, sample=True)
            ]
        )
    assert runs[0] == runs[1]


def test_continuation_needs_a_prefix_preserving_template(tokenizer):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]
    text = rollout.continuation(tokenizer, history, [{"role": "tool", "content": "{}"}])
    assert text == "\n<|im_start|>user\n<tool_response>\n{}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("fmt_name", ["json", "python"])
def test_expert_replay_matches_the_chat_template(splits, tokenizer, fmt_name):
    """OPS trains on replayed expert trajectories: their tokens and mask must be what the chat
    template gives for the same messages, and the checker must score them as successes."""
    fmt = get_format(fmt_name)
    for t in splits["rl"][:10]:
        r = rollout.replay(tokenizer, t, fmt, RolloutConfig(max_total_tokens=4000))
        full = tokenizer.apply_chat_template(
            expert_messages(t, fmt), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        n = len(r.prompt_ids)
        assert r.kind == "expert" and r.success
        assert r.prompt_ids + r.completion_ids == full["input_ids"][:-1]
        assert r.env_mask == full["assistant_masks"][n:-1]


def test_hint_is_sampled_but_not_scored(splits, tokenizer, monkeypatch):
    """HBG: the hint is in the prompt the policy samples from and absent from the scored prompt."""
    fmt = get_format("json")
    tasks = splits["rl"][:4]
    model = build_tiny_model(TinyModelConfig(), tokenizer, seed=0)
    seen: list[list[int]] = []
    real_decode = rollout._decode

    def spy(model, batch, *args, **kw):
        seen.extend(
            [i for i, m in zip(ids, mask, strict=True) if m]
            for ids, mask in zip(batch.ids.tolist(), batch.mask.tolist(), strict=True)
        )
        return real_decode(model, batch, *args, **kw)

    monkeypatch.setattr(rollout, "_decode", spy)
    hints = ["Hint: call get_balance first.", None, "Hint: call get_balance first.", None]
    torch.manual_seed(0)
    rs = rollout.run(model, tokenizer, tasks, fmt, RolloutConfig(max_new_tokens=8), sample=True, hints=hints)
    text = tokenizer.decode
    for r, h in zip(rs, hints, strict=True):
        assert "Hint:" not in text(r.prompt_ids)
        assert r.kind == ("hinted" if h else "policy")
        if h:
            assert "Hint: call get_balance first." in text(r.sample_prompt_ids)
            assert any(ctx[: len(r.sample_prompt_ids)] == r.sample_prompt_ids for ctx in seen)
    assert sum("Hint:" in text(ctx) for ctx in seen) >= 2  # the first message of each hinted task


def test_forbid_patterns_mask_the_collapsed_continuations(tokenizer):
    from toolrl.config import ForbidRule
    from toolrl.core.diagnostics import ForbidPatterns, forbid_rules

    vocab = tokenizer.get_vocab()
    tc, end = vocab["<tool_call>"], vocab["<|im_end|>"]
    rules = forbid_rules([ForbidRule("<tool_call>", ["<|im_end|>"]), ForbidRule("", ["<|im_end|>"])])
    proc = ForbidPatterns(tokenizer, rules)
    proc.reset(3)
    scores = torch.zeros(2, len(tokenizer))
    first = proc(torch.tensor([[1, 2, tc], [1, 2, 3]]), scores)
    assert torch.isinf(first[:, end]).all()  # the first position: no empty message, whatever came before
    later = proc(torch.tensor([[1, 2, 3, tc], [1, 2, 3, 4]]), scores)
    assert torch.isinf(later[0, end]) and not torch.isinf(later[1, end])
    assert not torch.isinf(later[0, tc]) and torch.isfinite(later[1]).all()
    with pytest.raises(ValueError, match=r"diagnostics\.forbid\[0\]"):
        ForbidPatterns(
            tokenizer, forbid_rules([ForbidRule("<tool_call>", ["no-such-token-xyz"])]), "diagnostics.forbid"
        )


def test_patterns_apply_in_their_context_only(tokenizer):
    """A reply may not open a call, a call turn must: each rule masks only rows of its context."""
    from toolrl.core.diagnostics import CALL_TEXT, REPLY_CALLS, ForbidPatterns

    tc = tokenizer.get_vocab()["<tool_call>"]
    proc = ForbidPatterns(tokenizer, [REPLY_CALLS, CALL_TEXT])
    proc.reset(2, ["reply", "call"])
    scores = torch.zeros(2, len(tokenizer))
    first = proc(torch.tensor([[1, 2], [1, 2]]), scores)
    assert torch.isinf(first[0, tc]) and torch.isfinite(first[0]).sum() == len(tokenizer) - 1
    assert torch.isfinite(first[1, tc]) and torch.isfinite(first[1]).sum() == 1  # only <tool_call> is left
    assert torch.isfinite(proc(torch.tensor([[1, 2, 3], [1, 2, 3]]), scores)).all()  # later positions: free
    with pytest.raises(ValueError, match="context"):
        proc.reset(2)
        proc(torch.tensor([[1, 2], [1, 2]]), scores)


class StopAfter(LogitsProcessor):
    """Ends every message with `<|im_end|>` after 2–7 tokens, the count set by the length of the
    row's context without padding: a function of the episode alone, so a row's messages do not
    depend on its batch, and rows of one batch end at different steps (the padding the cache must
    mask). Records the logits of every step by the row's context without padding."""

    def __init__(self, width: int, eos: int, pad: int, logits: dict[tuple[int, ...], torch.Tensor]):
        self.width, self.eos, self.pad, self.logits = width, eos, pad, logits

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for ids, row in zip(input_ids, scores, strict=True):
            self.logits[tuple(ids[ids != self.pad].tolist())] = row.clone()
        step = input_ids.shape[1] - self.width
        target = 2 + (input_ids[:, : self.width] != self.pad).sum(dim=1) % 6
        only_eos = torch.full_like(scores, -math.inf)
        only_eos[:, self.eos] = 0.0
        no_eos = scores.clone()
        no_eos[:, self.eos] = -math.inf
        return torch.where((step + 1 >= target)[:, None], only_eos, no_eos)


@pytest.mark.parametrize("batch_size", [64, 2])
def test_reused_cache_matches_encoding_each_episode_alone(splits, tokenizer, monkeypatch, batch_size):
    """Rounds after the first encode only the environment's new tokens (the cache holds the rest,
    padding inside masked out), and every logit is that of the episode played alone: the same
    context, attention and positions (float64, greedy). With `batch_size` 2 the first rounds run
    as several batches encoded afresh, whose caches are not kept."""
    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    ).double()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    logits: dict[tuple[int, ...], torch.Tensor] = {}
    real_decode = rollout._decode

    def decode(model, batch, budget, sample, temperature, processors, eos_id, pad, **kw):
        stop = StopAfter(batch.width, eos, pad, logits)
        return real_decode(model, batch, budget, sample, temperature, [*processors, stop], eos_id, pad, **kw)

    monkeypatch.setattr(rollout, "_decode", decode)
    fed: list[int] = []
    model.register_forward_pre_hook(lambda _, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    cfg = RolloutConfig(max_messages=8, max_new_tokens=16, max_total_tokens=1200)
    fmt = get_format("json")
    tasks = splits["id"][:6]
    alone = [rollout.run(model, tokenizer, [t], fmt, cfg, sample=False)[0] for t in tasks]
    alone_logits = dict(logits)
    logits.clear()
    fed.clear()
    together = rollout.run(model, tokenizer, tasks, fmt, cfg, sample=False, batch_size=batch_size)
    assert [r.completion_ids for r in together] == [r.completion_ids for r in alone]
    assert [r.env_mask for r in together] == [r.env_mask for r in alone]
    assert max(len(r.episode.states) for r in together) >= 3  # several rounds, episodes ending at different ones
    compared = [k for k in logits if k in alone_logits]
    assert len(compared) >= sum(sum(r.env_mask) for r in together)  # every sampled token's step
    for k in compared:
        torch.testing.assert_close(logits[k], alone_logits[k], rtol=0, atol=1e-9)
    prefills = [n for n in fed if n > 1]
    if batch_size >= len(tasks):
        assert len(prefills) >= 3 and max(prefills[1:]) < prefills[0] / 2, prefills


def test_control_token_probe_reads_the_right_steps():
    """p at the first position, where the token was sampled, and right after a sampled <tool_call>."""
    from toolrl.core.diagnostics import ControlTokenProbe

    probe = ControlTokenProbe({"im_end": 2, "tool_call": 5})
    logits = torch.log(
        torch.tensor(
            [
                [[0.1, 0.1, 0.2, 0.1, 0.1, 0.4], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]],  # step 0, rows 0 and 1
                [[0.2, 0.1, 0.6, 0.0, 0.0, 0.1], [0.1, 0.1, 0.3, 0.1, 0.1, 0.3]],  # step 1
            ]
        )
    )
    for step in logits:
        probe(torch.zeros(2, 1, dtype=torch.long), step)
    new = torch.tensor([[5, 2], [0, 2]])  # row 0: <tool_call> then <|im_end|>; row 1: content then <|im_end|>
    rec = probe.stats(new, [2, 2])
    approx = pytest.approx
    assert rec[0]["p_tool_call/first"] == approx([0.4]) and rec[0]["p_im_end/first"] == approx([0.2])
    assert rec[0]["p_tool_call/sampled"] == approx([0.4]) and rec[0]["p_im_end/sampled"] == approx([0.6])
    assert rec[0]["p_im_end/after_tool_call"] == approx([0.6]) and rec[0]["p_content/after_tool_call"] == approx([0.3])
    assert rec[0]["p_content/first"] == approx([0.4])
    assert rec[1]["p_tool_call/sampled"] == [] and rec[1]["p_im_end/after_tool_call"] == []
    assert rec[1]["p_im_end/sampled"] == approx([0.3]) and rec[1]["p_content/first"] == approx([0.8])


def test_rollouts_sample_the_policy_whatever_the_checkpoints_generation_config(splits, tokenizer):
    """A checkpoint's generation_config (repetition penalty, no-repeat n-grams, minimum length, bad
    words) must not reach rollouts or greedy evaluation: both equal a clean config's."""
    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    )
    cfg = RolloutConfig(max_messages=4, max_new_tokens=16, max_total_tokens=200)
    tasks, fmt = splits["id"][:6], get_format("json")

    def completions(sample):
        torch.manual_seed(3)
        return [r.completion_ids for r in rollout.run(model, tokenizer, tasks, fmt, cfg, sample=sample)]

    def direct():
        torch.manual_seed(3)
        ids = torch.tensor([rollout.encode(tokenizer, "hello")])
        return model.generate(input_ids=ids, max_new_tokens=12, do_sample=False).tolist()

    clean = (completions(False), completions(True), direct())
    gc = model.generation_config
    gc.repetition_penalty, gc.no_repeat_ngram_size, gc.min_new_tokens = 5.0, 1, 8
    gc.bad_words_ids = [[tokenizer.convert_tokens_to_ids("<|im_end|>")]]
    assert direct() != clean[2], "the settings must change plain generation, or the test proves nothing"
    assert (completions(False), completions(True)) == clean[:2]


@pytest.mark.parametrize(("sample", "budget"), [(False, 24), (True, 24), (True, 4), (False, 1)])
def test_decode_is_generate_with_finished_rows_left_out(tokenizer, sample, budget):
    """`_decode` gives `generate`'s tokens and random draws (same seed, processors, temperature),
    while each row leaves the forward pass once its `<|im_end|>` is fed (StopAfter ends the rows'
    messages at different steps)."""
    from types import SimpleNamespace

    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    ).double()
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    texts = ["call get_balance", "hello", "what is on my calendar for today, please?", "x", "turn the lights on"] * 2
    contexts = [
        SimpleNamespace(prompt_ids=rollout.encode(tokenizer, t), sample_prompt_ids=None, completion_ids=[])
        for t in texts
    ]
    batch = rollout.Batch(contexts, pad)  # type: ignore[arg-type]
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    torch.manual_seed(5)
    ours = rollout._decode(model, batch, budget, sample, 0.7, [StopAfter(batch.width, eos, pad, {})], eos, pad)
    torch.manual_seed(5)
    theirs = model.generate(
        input_ids=batch.ids,
        attention_mask=batch.mask,
        max_new_tokens=budget,
        do_sample=sample,
        **({"temperature": 0.7, "top_k": 0, "top_p": 1.0} if sample else {}),
        eos_token_id=eos,
        pad_token_id=pad,
        logits_processor=[StopAfter(batch.width, eos, pad, {})],
    )[:, batch.width :]
    assert ours.tolist() == theirs.tolist()
    lengths = [row.index(eos) + 1 if eos in row else len(row) for row in ours.tolist()]
    assert len(set(lengths)) >= min(2, budget), lengths  # rows end at different steps
    assert (budget < 7) == any(eos not in row for row in ours.tolist())  # StopAfter ends every row by 7
    ours_rows = rows[: ours.shape[1]]  # the prefill, then one forward per fed step
    assert ours_rows[0] == len(texts)
    # The forward after step k feeds token k of every row still generating: those of length > k.
    assert ours_rows[1:] == [sum(n > k for n in lengths) for k in range(ours.shape[1] - 1)]
