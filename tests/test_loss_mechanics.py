"""Two mechanics of the GRPO loss that the collapse experiments rest on, pinned through a real
trainer step (TRL's GRPOTrainer under `ToolGRPOTrainer`):

1. DAPO's token-mean normaliser counts the tokens the policy produced (mask 1), not the text the
   environment inserted (mask 0). Were it to count them, every tool result would dilute the RL
   term against λ·L_sft and the ctrl penalty, more so the longer the episode.
2. Every assistant message's sampled tokens carry gradient, not only the first message's, and no
   inserted token does.

The step's groups hold one expert replay (OPS, k=1) and one policy rollout of a random model, so
the expert succeeds where the policy fails: the advantages are not zero and the expert's
multi-message trajectory, with its tool results, is in the loss."""

from __future__ import annotations

import pytest
import torch

from toolrl.config import Config, RLConfig, RolloutConfig, TinyModelConfig
from toolrl.formats import get_format
from toolrl.models.model import build_tiny_model
from toolrl.training import grpo

FMT = get_format("json")


@pytest.fixture()
def model(tokenizer):
    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    return build_tiny_model(tiny, tokenizer, seed=0)


def _cfg() -> Config:
    cfg = Config()
    cfg.rl = RLConfig(steps=1, prompts_per_step=2, num_generations=2, loss_type="dapo")
    cfg.rollout = RolloutConfig(max_new_tokens=16, max_total_tokens=1500, max_messages=12)
    cfg.signals.ops.k = 1
    return cfg


def _multi_message_tasks(splits, tokenizer, n: int = 2):
    """Tasks whose expert trajectory has at least two assistant messages with a tool result between."""
    from toolrl.core import rollout

    out = []
    for task in splits["rl"]:
        r = rollout.replay(tokenizer, task, FMT, _cfg().rollout)
        runs = sum(1 for a, b in zip([0, *r.env_mask], r.env_mask, strict=False) if b == 1 and a == 0)
        if r.success and runs >= 3:
            out.append(task)
        if len(out) == n:
            return out
    raise AssertionError("no task with a multi-message expert trajectory")


def _step(model, tokenizer, tasks, cfg, pad_env: int = 0, spy=None) -> list[dict]:
    """One GRPO step; `pad_env` appends that many inserted (mask 0) tokens to every completion."""
    ctx = grpo.cell_context(cfg, tokenizer, tasks, FMT, 0)
    signal, scheme = grpo.plugins_for(cfg, "ops", "rl")
    real_call = grpo.MultiTurnRollout.__call__

    def call(self, prompts, trainer):
        out = real_call(self, prompts, trainer)
        pad = tokenizer.convert_tokens_to_ids("<|im_start|>")
        out["completion_ids"] = [ids + [pad] * pad_env for ids in out["completion_ids"]]
        out["env_mask"] = [m + [0] * pad_env for m in out["env_mask"]]
        if spy is not None:
            spy["env_mask"] = out["env_mask"]
        return out

    rows: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpo.MultiTurnRollout, "__call__", call)
        grpo.train(model, ctx, signal, scheme, 1e-3, rows.append)
    return rows


def test_the_token_mean_counts_only_what_the_policy_produced(splits, tokenizer):
    """Inserted tokens added to every completion change neither TRL's count of loss tokens nor the
    gradient: with a normaliser over all completion tokens, 200 more per completion would shrink
    the gradient several-fold."""
    tasks = _multi_message_tasks(splits, tokenizer)
    seen: list[dict] = []
    real = grpo.ToolGRPOTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs["completion_mask"] * inputs["tool_mask"]
        seen.append({"items": float(inputs["num_items_in_batch"]), "sampled": float(mask.sum())})
        seen[-1]["all"] = float(inputs["completion_mask"].sum())
        return real(self, model, inputs, return_outputs, num_items_in_batch)

    grads = []
    for pad in (0, 200):
        model = build_tiny_model(
            TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
            tokenizer,
            seed=0,
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(grpo.ToolGRPOTrainer, "compute_loss", compute_loss)
            rows = _step(model, tokenizer, tasks, _cfg(), pad_env=pad)
        grads.append(rows[0]["grad_norm"])
    plain, padded = seen
    assert plain["items"] == plain["sampled"] < plain["all"]  # tool results are in the completion, not counted
    assert padded["items"] == padded["sampled"] == plain["sampled"]
    assert padded["all"] >= plain["all"] + 4 * 200 - 1  # the padding is there
    assert grads[0] > 0 and grads[1] == pytest.approx(grads[0], rel=1e-4)


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """The [start, end) spans of consecutive 1s: one per assistant message."""
    runs, first = [], None
    for j, v in enumerate([*mask, 0]):
        if v and first is None:
            first = j
        elif not v and first is not None:
            runs.append((first, j))
            first = None
    return runs


def test_every_assistant_message_carries_gradient(splits, tokenizer, model):
    """The gradient reaches the hidden state that predicts each sampled token of every assistant
    message of the expert's multi-message trajectory, and none that predicts an inserted token.
    TRL computes the log-probs with a fused head (no logits tensor), so the final norm's output,
    which feeds the head alone, is where the per-position gradient is read. TRL shuffles the
    step's rows, so they are read as TRL's `compute_loss` receives them."""
    tasks = _multi_message_tasks(splits, tokenizer)
    hidden: list[torch.Tensor] = []
    batches: list[dict] = []

    def keep(module, args, out):
        if out.requires_grad:
            out.retain_grad()
            hidden.append(out)

    real = grpo.ToolGRPOTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batches.append({k: inputs[k].clone() for k in ("completion_mask", "tool_mask", "advantages")})
        return real(self, model, inputs, return_outputs, num_items_in_batch)

    handle = model.model.norm.register_forward_hook(keep)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(grpo.ToolGRPOTrainer, "compute_loss", compute_loss)
            _step(model, tokenizer, tasks, _cfg())
    finally:
        handle.remove()
    [out] = [t for t in hidden if t.grad is not None]
    [batch] = batches
    mask = batch["completion_mask"] * batch["tool_mask"]
    # The sequence is the left-padded prompt, then the right-padded completion: completion token j
    # is predicted at position P + j - 1.
    grad = out.grad.abs().sum(-1)[:, out.shape[1] - mask.shape[1] - 1 : -1]
    experts = 0
    for i in range(mask.shape[0]):
        assert batch["advantages"][i] != 0
        m = mask[i].tolist()
        assert all(float(grad[i, j]) == 0.0 for j, v in enumerate(m) if not v)
        assert all(float(grad[i, j]) > 0.0 for j, v in enumerate(m) if v)
        runs = _runs(m)
        experts += len(runs) >= 3  # the expert's: three or more messages, tool results between
        assert all(grad[i, a:b].sum() > 0 for a, b in runs)
    assert experts == len(tasks)


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_without_momentum_a_zero_gradient_step_leaves_the_weights(splits, tokenizer, model, beta1):
    """`rl.adam_beta1` reaches the optimizer: after a step with a gradient, a step whose rewards are
    all equal (advantages and gradient 0) moves the weights on Adam's momentum alone, and with
    `adam_beta1: 0` does not. The collapse study's control for drift after every rollout fails."""
    cfg = _cfg()
    cfg.rl.steps, cfg.rl.adam_beta1 = 2, beta1
    ctx = grpo.cell_context(cfg, tokenizer, _multi_message_tasks(splits, tokenizer), FMT, 0)
    signal, scheme = grpo.plugins_for(cfg, "ops", "rl")
    calls = []

    def success_reward(prompts, completions, success, **_):
        calls.append(success)
        return success if len(calls) == 1 else [0.0] * len(success)

    weights, rows = [], []

    def on_step(row):
        rows.append(row)
        weights.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpo, "success_reward", success_reward)
        grpo.train(model, ctx, signal, scheme, 1e-3, on_step)
    rl = [r for r in rows if r.get("phase") == "rl"]
    assert rl[0]["grad_norm"] > 0 and rl[1]["grad_norm"] == 0
    moved = (weights[-1] - weights[-2]).abs().max().item()
    assert (moved == 0) if beta1 == 0 else (moved > 1e-6), moved
