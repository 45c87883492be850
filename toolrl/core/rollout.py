"""The batched multi-turn rollout engine, shared by GRPO sampling and greedy evaluation.

All unfinished episodes advance together: one decoding pass produces the next assistant message
of every active episode (finished ones drop out of the batch), then each environment answers and
its tokens are appended. Once the active episodes fit in one batch, that batch keeps its KV cache
from round to round, so a round encodes only the tokens the environment inserted instead of every
episode's whole context again. Within a round, a row whose message has ended leaves the forward
pass (`_decode`), so a round costs the tokens sampled, not rows × its longest message. The loss
mask is built here, token by token: 1 for every token the model sampled (its `<|im_end|>`
included), 0 for every token the rollout inserted. Masking bugs of this kind are a known cause of
collapse in other frameworks, so tests check the mask exactly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, LogitsProcessor, PreTrainedTokenizerBase

from toolrl.config import RolloutConfig
from toolrl.core.diagnostics import ControlTokenProbe, ForbidPatterns
from toolrl.core.episode import Episode, Message, User, expert_messages
from toolrl.envs.base import Task
from toolrl.formats import Format
from toolrl.models.chat import continuation, render


@dataclass
class Rollout:
    """One episode as tokens. `prompt_ids` is the prompt the policy is scored on; a hinted
    rollout (HBG) was sampled from `sample_prompt_ids` instead. `kind` is policy, hinted or
    expert (OPS: teacher-forced ground truth). `messages` is the whole conversation so far."""

    episode: Episode
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    # The sampler's log-probability of each completion token where an external engine reported
    # it (vLLM: TRL corrects for the engine's mismatch with them), NaN elsewhere.
    logprobs: list[float] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    probes: dict[str, list[float]] = field(default_factory=dict)
    sample_prompt_ids: list[int] | None = None
    kind: str = "policy"

    @property
    def success(self) -> bool:
        return self.episode.success


# Attention kernels for generation: every SDPA backend but cuDNN's. Decoding changes the sequence
# length at every step, and cuDNN's attention builds a new execution plan for each new shape:
# profiled on an H200 in bf16, 5.9 ms of CPU per call (80% of the rollout's CPU time) for 10 µs of
# GPU work, making a 32-episode batched rollout 5× slower than in fp32 (which takes another kernel).
GENERATION_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

Users = Callable[[Task], "User | None"]
# A batch of token-id contexts → the sampled continuation of each (TRL's vLLM engine, say) and,
# if the engine reports them, each sampled token's log-probability.
Generate = Callable[[list[list[int]]], tuple[list[list[int]], list[list[float]] | None]]


def new_episode(task: Task, fmt: Format, cfg: RolloutConfig, users: Users | None = None) -> Episode:
    """`users` gives a task its simulated user, if it has one (ACEBench's multi_turn)."""
    return Episode(
        task, fmt, cfg.max_rounds_per_turn, cfg.irrelevance_check, user=users(task) if users is not None else None
    )


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def control_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    out = {"im_end": vocab.get("<|im_end|>", tokenizer.eos_token_id)}
    if "<tool_call>" in vocab:
        out["tool_call"] = vocab["<tool_call>"]
    return out


@torch.no_grad()
def run(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    fmt: Format,
    cfg: RolloutConfig,
    sample: bool,
    temperature: float = 1.0,
    batch_size: int = 64,
    hints: list[str | None] | None = None,
    forbid: ForbidPatterns | None = None,
    users: Users | None = None,
    generate: Generate | None = None,
) -> list[Rollout]:
    """Play every task to the end. Sampling is seeded by the caller (torch.manual_seed).

    `hints[i]`, when set, is appended to task i's system prompt for sampling only (HBG); the
    returned `prompt_ids` never contain it. `forbid` masks collapsed patterns while generating.
    `generate` replaces the model's own decoding (vLLM during GRPO); it has no logits processors,
    so the control-token probes are not recorded and `forbid` cannot be applied with it."""
    if generate is not None and forbid is not None:
        raise ValueError("the collapse mask (forbid) needs transformers generation, not an external engine")
    rollouts = []
    for i, ep in enumerate(new_episode(t, fmt, cfg, users) for t in tasks):
        messages = ep.initial_messages()
        r = Rollout(ep, encode(tokenizer, render(tokenizer, messages, True)), messages=messages)
        if len(r.prompt_ids) >= cfg.max_total_tokens:
            raise ValueError(
                f"task {ep.task.id}: its prompt is {len(r.prompt_ids)} tokens, not less than "
                f"rollout.max_total_tokens ({cfg.max_total_tokens}); raise that config key"
            )
        if hints is not None and hints[i]:
            hinted = [{**messages[0], "content": messages[0]["content"] + "\n\n" + hints[i]}, *messages[1:]]
            r.sample_prompt_ids = encode(tokenizer, render(tokenizer, hinted, True))
            r.kind = "hinted"
        rollouts.append(r)
    was_training = model.training
    model.eval()
    probe = ControlTokenProbe(control_token_ids(tokenizer))
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    reused: Batch | None = None
    try:
        while active := [r for r in rollouts if not r.episode.done]:
            if generate is not None:
                for start in range(0, len(active), batch_size):
                    _advance_with(generate, tokenizer, active[start : start + batch_size], cfg, eos_id)
                continue
            batches: Iterable[Batch]
            if len(active) <= batch_size:
                # One batch holds every active episode: keep it (and its cache) for the next rounds.
                reused = reused.select() if reused is not None else Batch(active, tokenizer.pad_token_id)
                batches = [reused]
            else:
                # Several batches: their caches would all have to live until the next round (a
                # 1.5B model's 64 × 16k-token cache is ~29 GB), so each is encoded afresh instead,
                # one at a time, and its cache dropped with it.
                batches = (
                    Batch(active[s : s + batch_size], tokenizer.pad_token_id) for s in range(0, len(active), batch_size)
                )
            for batch in batches:
                with sdpa_kernel(GENERATION_ATTENTION):
                    _advance(model, tokenizer, batch, cfg, sample, temperature, probe, forbid, eos_id, batch is reused)
    finally:
        model.train(was_training)
    return rollouts


def replay(tokenizer: PreTrainedTokenizerBase, task: Task, fmt: Format, cfg: RolloutConfig) -> Rollout:
    """The expert trajectory as a rollout (OPS): the ground-truth messages are fed through the same
    episode and token bookkeeping as sampled ones, so the checker scores them with the same
    reward and the mask covers exactly the expert's assistant tokens."""
    ep = new_episode(task, fmt, cfg)
    messages = ep.initial_messages()
    r = Rollout(ep, encode(tokenizer, render(tokenizer, messages, True)), messages=messages, kind="expert")
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    texts = [m["content"] for m in expert_messages(task, fmt) if m["role"] == "assistant"]
    for text in texts:
        if r.episode.done:
            break
        _consume(tokenizer, r, encode(tokenizer, text) + [eos_id], eos_id, cfg)
    return r


class Batch:
    """Episodes generated together: their contexts as one left-padded token matrix, and the KV
    cache `_decode` left behind, reused by the next round.

    A round appends two blocks to the matrix: the sampled tokens (each row's past its `<|im_end|>`
    are padding, never fed to the model: their cache entries are zeros) and the environment's
    inserted tokens, left-padded to the longest. Padding is masked out, and positions are counted
    over the mask, so every real token has the position and the attention it would have in a
    freshly padded batch. Between rounds the finished episodes' rows leave, and the cached part is
    compacted: each row's real entries are gathered to the right, as a fresh encoding would place
    them. A key depends only on its token, its position and the real tokens before it, so the
    gathered cache equals a fresh encoding's, and the padding attended never grows past a round's."""

    def __init__(self, rollouts: list[Rollout], pad: int):
        self.rollouts = rollouts
        self.pad = pad
        contexts = [(r.sample_prompt_ids or r.prompt_ids) + r.completion_ids for r in rollouts]
        self.lengths = [len(c) for c in contexts]
        width = max(self.lengths)
        self.ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts])
        self.mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
        self.cache = DynamicCache()

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def append(self, sampled: torch.Tensor, kept: list[int], inserted: list[list[int]]) -> None:
        """Add a round: `sampled` (rows × steps) of which each row keeps its first `kept[i]`
        tokens, then `inserted[i]`, the environment's tokens."""
        rows, right = len(inserted), max(map(len, inserted))
        block = torch.tensor([[self.pad] * (right - len(t)) + t for t in inserted], dtype=torch.long)
        block_mask = torch.tensor([[0] * (right - len(t)) + [1] * len(t) for t in inserted], dtype=torch.long)
        sampled_mask = (torch.arange(sampled.shape[1])[None, :] < torch.tensor(kept)[:, None]).long()
        self.ids = torch.cat([self.ids, sampled, block.view(rows, right)], 1)
        self.mask = torch.cat([self.mask, sampled_mask, block_mask.view(rows, right)], 1)
        self.lengths = [n + k + len(t) for n, k, t in zip(self.lengths, kept, inserted, strict=True)]

    def select(self) -> Batch:
        """This batch without its finished episodes, its cached part compacted."""
        keep = [i for i, r in enumerate(self.rollouts) if not r.episode.done]
        self.rollouts = [self.rollouts[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        rows = torch.tensor(keep)
        cached = self.cache.get_seq_length()
        real = self.mask[rows, :cached]
        width = int(real.sum(dim=1).max())
        # Per row: the indices of its padding, then of its real entries in order; the last `width`.
        order = torch.sort(real, dim=1, stable=True).indices[:, cached - width :]
        self.ids = torch.cat([self.ids[rows, :cached].gather(1, order), self.ids[rows, cached:]], 1)
        self.mask = torch.cat([real.gather(1, order), self.mask[rows, cached:]], 1)
        for layer in self.cache.layers:
            take = order.to(layer.keys.device)[:, None, :, None]
            index = rows.to(layer.keys.device)
            layer.keys = layer.keys[index].gather(2, take.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3]))
            layer.values = layer.values[index].gather(
                2, take.expand(-1, layer.values.shape[1], -1, layer.values.shape[3])
            )
        return self


def _advance(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: Batch,
    cfg: RolloutConfig,
    sample: bool,
    temperature: float,
    probe: ControlTokenProbe,
    forbid: ForbidPatterns | None,
    eos_id: int,
    keep: bool,
) -> None:
    """Generate one assistant message for each rollout in `batch`, then let each env answer.
    `keep`: the batch's cache serves the next round, so `_decode` leaves every row's in it."""
    budget = min(cfg.max_new_tokens, max(1, cfg.max_total_tokens - min(batch.lengths)))
    pad = tokenizer.pad_token_id
    probe.reset()
    processors: list[LogitsProcessor] = [probe]
    if forbid is not None:
        forbid.reset(batch.width, ["reply" if r.messages[-1]["role"] == "tool" else "call" for r in batch.rollouts])
        processors.append(forbid)
    new = _decode(model, batch, budget, sample, temperature, processors, eos_id, pad, keep=keep).cpu()
    lengths = []
    for row in new.tolist():
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        lengths.append(n)
    inserted = []
    for r, row, n, stats in zip(batch.rollouts, new.tolist(), lengths, probe.stats(new, lengths), strict=True):
        for k, v in stats.items():
            r.probes.setdefault(k, []).extend(v)
        before = len(r.completion_ids) + n
        _consume(tokenizer, r, row[:n], eos_id, cfg)
        inserted.append(r.completion_ids[before:])
    batch.append(new, lengths, inserted)


@torch.no_grad()
def _decode(
    model: torch.nn.Module,
    batch: Batch,
    budget: int,
    sample: bool,
    temperature: float,
    processors: Sequence[LogitsProcessor],
    eos_id: int,
    pad: int,
    *,
    keep: bool = True,
) -> torch.Tensor:
    """Up to `budget` new tokens per row (rows × steps, `pad` after a row's EOS), continuing
    `batch.cache`; with `keep`, leaving in it, as `generate` would, each row's keys up to its last
    fed token (without, the cache is left partial: the batch is not used again).

    Written by hand because `generate` keeps a finished row in the forward pass until the batch's
    longest message ends, and has no option not to. Here a row leaves once its EOS is fed (its
    keys are set aside and padded back on at the end, masked as `Batch.append` masks them). The
    rest is `generate`'s sampling, step for step: the logits processors see every row, then the
    temperature, then one draw for every row, so each row draws the random numbers it would draw
    under `generate`. The checkpoint's `generation_config` (a repetition penalty, say) is never
    read: rollouts are drawn from the distribution GRPO scores and greedy evaluation is greedy."""
    device = model.device
    rows = batch.ids.shape[0]
    cache = batch.cache
    cached = cache.get_seq_length()
    ids, mask = batch.ids.to(device), batch.mask.to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    # Every forward's mask: the context's, then ones for the tokens fed after it.
    attention = torch.cat([mask, mask.new_ones(rows, budget)], 1)
    next_position = mask.sum(-1)
    # The forward's keyword for the cache: `past_key_values` until transformers renamed it `cache`
    # (after 5.20; the old name warns until 6.0). `logits_to_keep` where the model has it.
    params = inspect.signature(model.forward).parameters
    past = {"cache" if "cache" in params else "past_key_values": cache}
    last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    logits = model(
        input_ids=ids[:, cached:],
        attention_mask=mask,
        position_ids=positions[:, cached:],
        **past,
        use_cache=True,
        **last,
    ).logits[:, -1]
    new = torch.full((rows, budget), pad, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    alive = torch.arange(rows)  # the rows in the cache, in its order (host; `alive_at` on the device)
    alive_at = alive.to(device)
    set_aside: list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor] | None]]] = []
    for step in range(budget):
        # A fresh tensor every step, as `generate` gives its processors; rows that left score 0.
        scores = logits.to(dtype=torch.float32, copy=True)
        if len(alive) < rows:
            scores = scores.new_zeros(rows, scores.shape[-1]).index_copy_(0, alive_at, scores)
        context = torch.cat([ids, new[:, :step]], 1)  # every row's tokens so far, as processors take them
        for processor in processors:
            scores = processor(context, scores)
        if sample:
            if temperature != 1.0:
                scores = scores / temperature
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        token = token.masked_fill(finished, pad)
        new[:, step] = token
        finished |= token == eos_id
        done = finished.cpu()  # the step's one wait for the device
        if step == budget - 1 or bool(done.all()):
            new = new[:, : step + 1]
            break
        logits = model(
            input_ids=token[alive_at, None],
            attention_mask=attention[alive_at, : ids.shape[1] + step + 1],
            position_ids=(next_position[alive_at] + step)[:, None],
            **past,
            use_cache=True,
        ).logits[:, -1]
        leaving = done[alive]
        if bool(leaving.any()):
            staying = (~leaving).nonzero().squeeze(1)
            if keep:
                kept: list[tuple[torch.Tensor, torch.Tensor] | None] = [
                    (layer.keys[leaving], layer.values[leaving]) for layer in cache.layers
                ]
                set_aside.append((alive[leaving], kept))
            cache.batch_select_indices(staying)
            alive, logits = alive[staying], logits[staying.to(logits.device)]
            alive_at = alive.to(device)
    if set_aside:
        _pad_back(cache, rows, alive, set_aside)
    return new


def _pad_back(
    cache: DynamicCache,
    rows: int,
    alive: torch.Tensor,
    set_aside: list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor] | None]]],
) -> None:
    """Put the rows that left `_decode` early back into `cache` at their places, their keys
    zero-padded on the right to the longest row's length (padding `Batch.append` masks out).
    Layer by layer, each set-aside copy released once placed: at most one layer is held twice."""
    for i, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        full_k = keys.new_zeros(rows, *keys.shape[1:])
        full_v = values.new_zeros(rows, *values.shape[1:])
        full_k[alive], full_v[alive] = keys, values
        for where, kept in set_aside:
            pair = kept[i]
            assert pair is not None, "each layer is placed once"
            k, v = pair
            full_k[where, :, : k.shape[2]] = k
            full_v[where, :, : v.shape[2]] = v
            kept[i] = None
        layer.keys, layer.values = full_k, full_v


def _advance_with(
    generate: Generate, tokenizer: PreTrainedTokenizerBase, batch: list[Rollout], cfg: RolloutConfig, eos_id: int
) -> None:
    """`_advance` through an external engine: the same message budget, cut at the first EOS."""
    contexts = [(r.sample_prompt_ids or r.prompt_ids) + r.completion_ids for r in batch]
    rows, logprobs = generate(contexts)
    # `generate` is an external engine: one row per context is its contract, not checked here.
    for i, (r, ctx, row) in enumerate(zip(batch, contexts, rows, strict=False)):
        budget = min(cfg.max_new_tokens, max(1, cfg.max_total_tokens - len(ctx)))
        row = list(row)[:budget]
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        _consume(tokenizer, r, row[:n], eos_id, cfg, list(logprobs[i][:n]) if logprobs is not None else None)


def _consume(
    tokenizer: PreTrainedTokenizerBase,
    r: Rollout,
    tokens: list[int],
    eos_id: int,
    cfg: RolloutConfig,
    logprobs: list[float] | None = None,
) -> None:
    """Append one assistant message's tokens (mask 1) and their sampling log-probs, let the
    environment answer, and append what the chat template inserts before the next assistant
    message (mask 0)."""
    r.completion_ids += tokens
    r.env_mask += [1] * len(tokens)
    r.logprobs += logprobs if logprobs is not None else [math.nan] * len(tokens)
    ended = bool(tokens) and tokens[-1] == eos_id
    text = tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=False)
    r.messages = r.messages + [{"role": "assistant", "content": text}]
    if not ended:
        r.episode.states.append("full_collapse" if not text.strip() else "text_pollution")
        r.episode.voids += 1
        r.episode.truncate()
        return
    replies = r.episode.step(text)
    if r.episode.done:
        return
    inserted = encode(tokenizer, continuation(tokenizer, r.messages, replies))
    total = len(r.prompt_ids) + len(r.completion_ids) + len(inserted)
    if len(r.episode.states) >= cfg.max_messages or total >= cfg.max_total_tokens:
        # Out of budget: the completion must end on a model token, so nothing is inserted.
        r.episode.truncate()
        return
    r.messages = r.messages + replies
    r.completion_ids += inserted
    r.env_mask += [0] * len(inserted)
    r.logprobs += [math.nan] * len(inserted)
