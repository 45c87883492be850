"""Each signal and scheme, tested so that it fails if the signal silently does nothing."""

from __future__ import annotations

import copy
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from toolrl.config import Config, RLConfig, RolloutConfig, TinyModelConfig
from toolrl.core import rollout
from toolrl.core.diagnostics import ForbidPatterns
from toolrl.core.episode import expert_messages
from toolrl.core.supervision import FailureLog, GroupOutcome, control_penalty, encode_examples
from toolrl.formats import get_format
from toolrl.models.model import build_tiny_model
from toolrl.training import grpo

FMT = get_format("json")
ROLL = RolloutConfig(max_new_tokens=12, max_total_tokens=1500, max_messages=8)


@pytest.fixture()
def model(tokenizer):
    return build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
        tokenizer,
        seed=0,
    )


def _call(source: grpo.MultiTurnRollout, model, prompts: list[str], step: int = 0):
    trainer = SimpleNamespace(
        state=SimpleNamespace(global_step=step), model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m)
    )
    return source(prompts, trainer)


def _group_prompts(tasks, n):
    return [t.id for t in tasks for _ in range(n)]


def test_ops_puts_the_expert_trajectory_in_the_loss_batch(splits, tokenizer, model):
    tasks = splits["rl"][:3]
    rl = RLConfig(num_generations=4)
    source = _source(tokenizer, tasks, Config(), "ops", ROLL, rl)
    out = _call(source, model, _group_prompts(tasks, 4))
    for g, t in enumerate(tasks):
        expert = rollout.replay(tokenizer, t, FMT, ROLL)
        i = 4 * g
        assert out["completion_ids"][i] == expert.completion_ids and out["env_mask"][i] == expert.env_mask
        assert out["success"][i] == 1.0  # scored by the same checker
        assert all(out["completion_ids"][j] != expert.completion_ids for j in range(i + 1, i + 4))
    # The logged success leaves the expert rows out; the with-supervised reward counts them.
    assert source.last["success"] == pytest.approx(sum(out["success"][i] for i in range(12) if i % 4) / 9)
    assert source.last["success/with_supervised"] == pytest.approx(sum(out["success"]) / 12)


def test_ops_refuses_an_expert_trajectory_cut_by_the_budget(splits, tokenizer, model):
    """A truncated expert trajectory scores 0 and would be pushed down: stop instead."""
    tasks = splits["rl"][:1]
    tight = RolloutConfig(max_new_tokens=12, max_total_tokens=60, max_messages=8)
    source = _source(tokenizer, tasks, Config(), "ops", tight, RLConfig(num_generations=2))
    with pytest.raises(ValueError, match=r"rollout\.max_total_tokens"):
        _call(source, model, _group_prompts(tasks, 2))


def test_hbg_hint_in_sampled_prompt_absent_from_scored_prompt(splits, tokenizer, model, monkeypatch):
    tasks = splits["rl"][:2]
    seen: list[dict] = []
    real = rollout.run

    def spy(*args, **kw):
        rs = real(*args, **kw)
        seen.extend({"kind": r.kind, "sample": r.sample_prompt_ids, "scored": r.prompt_ids} for r in rs)
        return rs

    monkeypatch.setattr(rollout, "run", spy)
    source = _source(tokenizer, tasks, Config(), "hbg", ROLL, RLConfig(num_generations=4))
    out = _call(source, model, _group_prompts(tasks, 4))
    assert [s["kind"] for s in seen] == ["hinted", "hinted", "policy", "policy"] * 2
    for s, scored in zip(seen, out["prompt_ids"], strict=True):
        assert s["scored"] == scored and "Hint:" not in tokenizer.decode(scored)
        if s["kind"] == "hinted":
            text = tokenizer.decode(s["sample"])
            assert ("Hint:" in text and FMT.render_calls(tasks[0].turns[0].rounds[0]) in text) or "Turn 1" in text


def test_void_filter_drops_void_trajectories_from_the_loss(splits, tokenizer, model):
    tasks = splits["rl"][:4]
    rl = RLConfig(num_generations=4)
    plain = _call(_source(tokenizer, tasks, Config(), "none", ROLL, rl), model, _group_prompts(tasks, 4))
    source = _source(tokenizer, tasks, Config(), "void_filter", ROLL, rl)
    out = _call(source, model, _group_prompts(tasks, 4))
    assert out["completion_ids"] == plain["completion_ids"]  # same samples, same seed
    dropped = [i for i, m in enumerate(out["env_mask"]) if not any(m)]
    assert dropped, "a random model must produce void messages"
    assert source.last["void_filtered"] == pytest.approx(len(dropped) / 16)
    for i, (m, p) in enumerate(zip(out["env_mask"], plain["env_mask"], strict=True)):
        assert m == p or i in dropped


def test_random_reward_permutes_each_steps_rewards(splits, tokenizer, model, monkeypatch):
    """The control's rewards are the step's outcomes in another order: the same multiset, rarely
    the same order, drawn afresh each step and again the same on a rerun of that step. The
    logged success stays the checker's."""
    tasks = splits["rl"][:4]
    outcomes = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # four groups of two
    real_run = rollout.run

    def run(*args, **kwargs):
        rs = real_run(*args, **kwargs)
        for r, ok in zip(rs, outcomes, strict=True):  # the checker's verdict, set
            r.episode.truncated, r.episode.turn_ok = not ok, [True] * len(r.episode.task.turns)
        return rs

    monkeypatch.setattr(rollout, "run", run)
    draws = []
    for step in range(4):
        source = _source(tokenizer, tasks, Config(), "random_reward", ROLL, RLConfig(num_generations=2))
        source.rl_steps = step
        out = _call(source, model, _group_prompts(tasks, 2), step=step)
        assert sorted(out["success"]) == sorted(outcomes)
        assert source.last["success"] == pytest.approx(sum(outcomes) / len(outcomes))
        draws.append(out["success"])
    assert sum(d != outcomes for d in draws) >= 3 and len({tuple(d) for d in draws}) >= 3
    again = _source(tokenizer, tasks, Config(), "random_reward", ROLL, RLConfig(num_generations=2))
    again.rl_steps = 3
    assert _call(again, model, _group_prompts(tasks, 2), step=3)["success"] == draws[3]
    vanilla = _source(tokenizer, tasks, Config(), "none", ROLL, RLConfig(num_generations=2))
    assert _call(vanilla, model, _group_prompts(tasks, 2))["success"] == outcomes


def test_ets_selects_exactly_the_failed_tasks():
    log = FailureLog()
    log.add(GroupOutcome(1, "a", [True, False], None))
    log.add(GroupOutcome(2, "b", [False, False], [{"role": "user", "content": "x"}]))
    log.add(GroupOutcome(3, "c", [True, True], None))
    log.add(GroupOutcome(4, "d", [False, True], None))
    assert sorted(log.select(4, 10, "any")) == ["a", "b", "d"]
    assert sorted(log.select(4, 10, "all")) == ["b"]
    assert sorted(log.select(4, 2, "any")) == ["d"]  # window: steps 3 and 4 only


def test_ets_phase_data_is_the_expert_trajectories_of_failed_tasks(splits, tokenizer, model, monkeypatch):
    tasks = splits["rl"][:4]
    cfg = Config()
    ctx = grpo.cell_context(cfg, tokenizer, tasks, FMT, 0)
    failures = FailureLog()
    failed = [{"role": "system", "content": "tools"}, {"role": "user", "content": "q"}]
    failures.add(GroupOutcome(1, tasks[1].id, [False, True], failed))
    failures.add(GroupOutcome(1, tasks[2].id, [True, True], None))
    ets, _ = grpo.plugins_for(cfg, "ets", "interleaved")
    data = ets.phase_data(ctx, failures, 1, 4, random.Random(0))
    assert data.selected == [tasks[1].id] and len(data.examples) == 4
    assert all(e == expert_messages(tasks[1], FMT) for e in data.examples)
    prs, _ = grpo.plugins_for(cfg, "prs", "interleaved")
    prs.setup(ctx)
    monkeypatch.setattr(prs.judge, "reflect", lambda task, fmt, msgs: f"reflection on {task.id}")
    kinds = {
        e[-1]["content"] == f"reflection on {tasks[1].id}"
        for e in prs.phase_data(ctx, failures, 1, 4, random.Random(0)).examples
    }
    assert kinds == {True, False}  # both the expert trajectory and the reflection are trained on


def test_ctrl_penalty_pushes_only_spikes_down(tokenizer, splits):
    vocab = tokenizer.get_vocab()
    ctrl = torch.tensor([vocab["<|im_end|>"], vocab["<tool_call>"]])
    batch = encode_examples(tokenizer, [expert_messages(splits["rl"][0], FMT)])
    logits = torch.zeros(1, batch["input_ids"].shape[1], len(tokenizer), requires_grad=True)
    calm = control_penalty(logits, batch["labels"], ctrl, threshold=0.01)
    assert calm.item() == 0.0  # uniform over ~1k tokens: p ≈ 0.001 < 0.01, no gradient
    spiked = logits.detach().clone()
    spiked[..., vocab["<|im_end|>"]] = 8.0
    spiked.requires_grad_(True)
    pen = control_penalty(spiked, batch["labels"], ctrl, threshold=0.01)
    pen.backward()
    assert pen.item() > 0 and (spiked.grad[..., vocab["<|im_end|>"]] > 0).any()


def test_signal_hooks_follow_the_config(tokenizer, splits):
    cfg = Config()
    ctx = grpo.cell_context(cfg, tokenizer, splits["rl"][:8], FMT, 0)

    def kinds(name):
        signal, _ = grpo.plugins_for(cfg, name, "rl")
        return [signal.member_kind(m) for m in range(cfg.rl.num_generations)]

    assert kinds("none") == ["policy"] * 8
    assert kinds("ops") == ["expert"] * cfg.signals.ops.k + ["policy"] * (8 - cfg.signals.ops.k)
    assert kinds("hbg") == ["hinted"] * cfg.signals.hbg.k + ["policy"] * (8 - cfg.signals.hbg.k)
    ctrl, _ = grpo.plugins_for(cfg, "ctrl", "rl")
    assert ctrl.sampling_mask(ctx) is None and [t.name for t in ctrl.loss_terms(ctx)] == ["ctrl_penalty"]
    cfg.signals.ctrl.mode = "clamp"
    assert ctrl.sampling_mask(ctx) is not None and ctrl.loss_terms(ctx) == []


def _grpo(model, tokenizer, tasks, cfg, signal, scheme, rows, lr=1e-3, seed=0):
    ctx = grpo.cell_context(cfg, tokenizer, tasks, FMT, seed)
    sig, sch = grpo.plugins_for(cfg, signal, scheme)
    return grpo.train(model, ctx, sig, sch, lr, rows.append)


def _source(tokenizer, tasks, cfg, signal, rollout_cfg, rl, seed=0):
    ctx = grpo.cell_context(cfg, tokenizer, tasks, FMT, seed)
    sig, _ = grpo.plugins_for(cfg, signal, "rl")
    return grpo.MultiTurnRollout(ctx, sig, rollout_cfg, rl)


def _train(tokenizer, splits, model, signal, scheme, **over):
    cfg = Config()
    cfg.rl = RLConfig(steps=2, prompts_per_step=2, num_generations=2)
    cfg.rollout = ROLL
    cfg.sft.batch_size = 2
    cfg.schemes.synchronous.batch_size = 2
    cfg.schemes.interleaved.rl_phases = [1, 1]
    cfg.schemes.interleaved.sft_steps = 2
    for k, v in over.items():
        setattr(cfg.schemes.synchronous, k, v)
    rows: list[dict] = []
    trainer = _grpo(model, tokenizer, splits["rl"][:8], cfg, signal, scheme, rows)
    return rows, trainer


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_synchronous_sft_term_changes_the_gradient(splits, tokenizer, model, weight):
    """A random model never succeeds, so every group has zero advantage and GRPO alone leaves the
    weights where they are; the synchronous SFT term must move them."""
    before = [p.detach().clone() for p in model.parameters()]
    rows, _ = _train(tokenizer, splits, model, "sft", "synchronous", sft_weight=weight)
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert moved == (weight > 0)
    assert all(r["success"] == 0.0 for r in rows)
    if weight:
        assert all(r["sync_sft_loss"] > 0 for r in rows)


@pytest.mark.parametrize("scheme", ["sft_only", "synchronous"])
def test_sft_only_gives_grpo_loss_no_weight(splits, tokenizer, model, monkeypatch, scheme):
    """With GRPO's loss replaced by a large stand-in, the sft_only control trains exactly as with
    a zero one (its update is the SFT term's alone), while synchronous moves elsewhere."""
    start = copy.deepcopy(model.state_dict())

    def trained(scale: float) -> list[torch.Tensor]:
        def stand_in(self, model, inputs, *args, **kwargs):
            return scale * sum(p.sum() for p in model.parameters())

        monkeypatch.setattr(grpo.GRPOTrainer, "compute_loss", stand_in)
        model.load_state_dict(start)
        rows, _ = _train(tokenizer, splits, model, "sft", scheme)
        assert all(r["sync_sft_loss"] > 0 for r in rows)
        return [p.detach().clone() for p in model.parameters()]

    same = all(torch.equal(a, b) for a, b in zip(trained(1e3), trained(0.0), strict=True))
    assert same == (scheme == "sft_only")


def test_interleaved_runs_sft_phases_in_one_trainer(splits, tokenizer, model):
    rows, trainer = _train(tokenizer, splits, model, "ets", "interleaved")
    assert [r["phase"] for r in rows] == ["rl", "sft", "sft", "rl"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one step counter through the phases
    assert rows[1]["sft/selected_tasks"] == 2  # both prompts of RL phase 1 failed
    assert all(r["sft_loss"] > 0 for r in rows[1:3])
    state = trainer.optimizer.state[next(iter(trainer.model.parameters()))]
    assert int(state["step"]) == 4  # one optimizer: Adam's state saw every step of every phase


def test_ctrl_penalty_enters_the_training_loss(splits, tokenizer, model):
    """As for the synchronous term: GRPO alone cannot move a never-succeeding model, so moved
    weights and a logged penalty show the ctrl term is in the loss."""
    cfg = Config()
    cfg.rl = RLConfig(steps=1, prompts_per_step=2, num_generations=2)
    cfg.rollout = ROLL
    cfg.signals.ctrl.threshold = 1e-5  # a random model puts ~1/700 on each control token
    cfg.signals.ctrl.batch_size = 2
    before = [p.detach().clone() for p in model.parameters()]
    rows: list[dict] = []
    _grpo(model, tokenizer, splits["rl"][:8], cfg, "ctrl", "rl", rows)
    assert rows[0]["ctrl_penalty"] > 0 and rows[0]["success"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_ctrl_clamp_is_applied_while_sampling(splits, tokenizer, model, monkeypatch):
    cfg = Config()
    cfg.signals.ctrl.mode = "clamp"
    seen = []
    real = rollout.run

    def spy(*args, **kw):
        seen.append(kw.get("forbid"))
        return real(*args, **kw)

    monkeypatch.setattr(rollout, "run", spy)
    tasks = splits["rl"][:2]
    source = _source(tokenizer, tasks, cfg, "ctrl", ROLL, RLConfig(num_generations=2))
    _call(source, model, _group_prompts(tasks, 2))
    assert seen and all(f is not None for f in seen)


def _collapsed_log(path, probe: str, start: float, end: float, pollution: float = 0.05) -> None:
    """Eight RL steps: success 0.7, then from the 5th step 0.1 while `probe` goes `start` → `end`."""
    rows = [
        {
            "phase": "rl",
            "step": i,
            "success": 0.1 if i >= 4 else 0.7,
            probe: end if i >= 4 else start,
            "state/text_pollution": pollution if i >= 4 else 0.05,
            "state/full_collapse": 0.0,
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_restoration_probe_forbids_what_the_run_showed(splits, tokenizer, model, tmp_path):
    """A run whose call turns stopped opening with `<tool_call>` (the expert probe at call turns
    fell): the restoration derived from its train log forces the opener at call turns, where the
    model, biased against it, never wrote one. A content collapse shows no pattern and is not
    probed; only the configured splits are."""
    from toolrl.cli import _shown
    from toolrl.core.diagnostics import CALL_TEXT, REPLY_CALLS
    from toolrl.training import evaluate

    cfg = Config()
    cfg.rollout = ROLL
    _collapsed_log(tmp_path / "token.jsonl", "probe/p_tool_call/call", 0.95, 0.02)
    assert _shown(cfg, tmp_path / "token.jsonl") == ("token", [CALL_TEXT])
    _collapsed_log(tmp_path / "reply.jsonl", "p_tool_call/first", 0.5, 0.99)
    assert _shown(cfg, tmp_path / "reply.jsonl") == ("token", [REPLY_CALLS])
    _collapsed_log(tmp_path / "content.jsonl", "probe/p_tool_call/call", 0.95, 0.9, pollution=0.8)
    assert _shown(cfg, tmp_path / "content.jsonl") == ("content", [])

    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.data.copy_(head.weight.data)
    biased.bias.data.zero_()
    biased.bias.data[tokenizer.convert_tokens_to_ids("<tool_call>")] = -50.0
    model.lm_head = biased
    tasks = splits["id"][:4]

    plain = rollout.run(model, tokenizer, tasks, FMT, ROLL, sample=False)
    probed = rollout.run(
        model, tokenizer, tasks, FMT, ROLL, sample=False, forbid=ForbidPatterns(tokenizer, [CALL_TEXT])
    )

    def first_said(rs) -> list[str]:  # each task's first assistant message: a call turn
        return [next(m["content"] for m in r.messages if m["role"] == "assistant") for r in rs]

    assert not any(m.startswith("<tool_call>") for m in first_said(plain))
    assert all(m.startswith("<tool_call>") for m in first_said(probed))
    restored = evaluate.run_split(model, tokenizer, cfg, "id", tasks, "token", [CALL_TEXT])["restored"]
    assert restored["probed"] and restored["patterns"] == [CALL_TEXT.name] and restored["n"] == 4
    unprobed = evaluate.run_split(model, tokenizer, cfg, "id", tasks, "content", [])
    assert unprobed["restored"]["success_rate"] == unprobed["success_rate"] and not unprobed["restored"]["probed"]
    assert "restored" not in evaluate.run_split(model, tokenizer, cfg, "format_ood", tasks, "token", [CALL_TEXT])


_ADAMW_STEP = torch.optim.AdamW.step


def _step_gradients(tokenizer, splits, model, monkeypatch, signal, scheme, micro):
    """The gradients at each optimizer step of a short run with `rl.micro_batch_size = micro`."""
    grads: list[list[torch.Tensor]] = []

    def spy(self, *a, **k):
        grads.append(
            [
                p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for g in self.param_groups
                for p in g["params"]
            ]
        )
        return _ADAMW_STEP(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    cfg = Config()
    cfg.rl = RLConfig(steps=1, prompts_per_step=2, num_generations=4, micro_batch_size=micro)
    cfg.rollout = ROLL
    cfg.sft.batch_size = 4
    cfg.schemes.interleaved.rl_phases = [1, 1]
    cfg.schemes.interleaved.sft_steps = 1
    if scheme == "interleaved":
        cfg.rl.steps = 2
    rows: list[dict] = []
    trainer = _grpo(copy.deepcopy(model), tokenizer, splits["rl"][:8], cfg, signal, scheme, rows)
    return grads, rows, trainer


@pytest.mark.parametrize("signal, scheme", [("ops", "rl"), ("sft", "interleaved")])
def test_micro_batches_give_the_same_update(splits, tokenizer, model, monkeypatch, signal, scheme):
    """Accumulating over micro-batches changes memory, not the step: with the same rollouts
    (OPS gives every group one success, so GRPO's gradient is not zero) and the same SFT batch,
    the gradient at every optimizer step equals the one-pass gradient."""
    whole, rows_a, _ = _step_gradients(tokenizer, splits, model, monkeypatch, signal, scheme, None)
    split, rows_b, trainer = _step_gradients(tokenizer, splits, model, monkeypatch, signal, scheme, 2)
    assert trainer.args.gradient_accumulation_steps == 4
    assert [r["phase"] for r in rows_a] == [r["phase"] for r in rows_b]
    assert [r.get("success/with_supervised") for r in rows_a] == [r.get("success/with_supervised") for r in rows_b]
    assert len(whole) == len(split) == len(rows_a)
    assert any(g.abs().sum() > 0 for g in whole[-1 if signal == "ops" else 1])  # the RL / SFT step moves
    for ga, gb in zip(whole, split, strict=True):
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_rollouts_sample_through_trls_vllm_engine_when_the_trainer_has_one(splits, tokenizer, model):
    """With `use_vllm`, every assistant message comes from `trainer.vllm_generation.generate`
    (here a stub that answers with a fixed call after recording the context), cut at the first
    <|im_end|> and scored by the same episode."""
    task = splits["rl"][0]
    expert = [m["content"] for m in expert_messages(task, FMT) if m["role"] == "assistant"]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seen: list[list[list[int]]] = []

    class Engine:
        def generate(self, prompts, images, num_generations):
            assert images is None and num_generations == 1
            seen.append(prompts)
            turn = len(seen) - 1
            text = expert[turn] if turn < len(expert) else "Done."
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] + [5, 6, 7]  # junk after EOS
            # vLLM's top-k log-probs per position, the sampled token's first: -turn - position / 1000.
            logprobs = [[-turn - k / 1000, -9.0] for k in range(len(ids))]
            return prompts, [ids for _ in prompts], [logprobs for _ in prompts], None

    source = _source(
        tokenizer,
        [task],
        Config(),
        "none",
        RolloutConfig(max_new_tokens=200, max_total_tokens=3000, max_messages=20),
        RLConfig(num_generations=2),
    )
    trainer = SimpleNamespace(
        state=SimpleNamespace(global_step=0),
        model=model,
        use_vllm=True,
        vllm_generation=Engine(),
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
    )
    out = source([task.id, task.id], trainer)
    assert out["success"] == [1.0, 1.0]  # the expert's messages, played through the engine
    assert len(seen) == len(expert) and all(len(batch) == 2 for batch in seen)
    assert seen[0][0] == out["prompt_ids"][0]
    assert 5 not in out["completion_ids"][0][-3:]  # nothing after the EOS was kept
    # The engine's log-probs line up with the sampled tokens, message by message; NaN elsewhere.
    lps, mask = out["logprobs"][0], out["env_mask"][0]
    assert len(lps) == len(out["completion_ids"][0]) == len(mask)
    assert all(math.isnan(lp) for lp, m in zip(lps, mask, strict=True) if m == 0)
    sampled = [lp for lp, m in zip(lps, mask, strict=True) if m == 1]
    expected = []
    for turn, text in enumerate(expert):
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        expected += [-turn - k / 1000 for k in range(n)]
    assert sampled == expected


def test_a_real_trainer_step_through_a_vllm_engine(splits, tokenizer, model, monkeypatch):
    """The whole TRL step with `use_vllm` (a stub engine stands in for vLLM, which needs a GPU):
    the engine's log-probs reach TRL's importance-sampling correction, and the engine's length
    limit is one message's. The stub reports log-probs 2 nats below the policy's on every sampled
    token, so TRL's mean sampler-vs-policy gap must come out near 2."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = []

    class Engine:
        max_completion_length = 10**6

        def sync_weights(self):
            pass

        def generate(self, prompts, images, num_generations):
            calls.append(self.max_completion_length)
            ids = tokenizer("Done.", add_special_tokens=False)["input_ids"] + [eos]
            with torch.no_grad():
                out = []
                for p in prompts:
                    logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1 : -1].float()
                    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0] - 2.0
                    out.append([[v] for v in lp.tolist()])
            return prompts, [ids for _ in prompts], out, None

    real_init = grpo.ToolGRPOTrainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.use_vllm, self.vllm_generation, self._last_loaded_step = True, Engine(), -1

    monkeypatch.setattr(grpo.ToolGRPOTrainer, "__init__", init)
    cfg = Config()
    cfg.rl = RLConfig(steps=1, prompts_per_step=2, num_generations=2)
    cfg.rollout = ROLL
    rows: list[dict] = []
    _grpo(model, tokenizer, splits["rl"][:8], cfg, "none", "rl", rows)
    assert len(rows) == 1 and calls and set(calls) == {ROLL.max_new_tokens}
    assert rows[0]["sampling/sampling_logp_difference/mean"] == pytest.approx(2.0, abs=1e-4)
