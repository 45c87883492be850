"""A NaN or inf gradient stops the job with the step and the cell, or skips the update; weights
with a NaN in them are never saved."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from toolrl.config import TinyModelConfig
from toolrl.envs.data import echo_messages
from toolrl.models import model as models
from toolrl.models.guards import NonFiniteError, NonFiniteGuard, check_finite
from toolrl.training import sft
from toolrl.training.warmup import value_token_ids

TINY = TinyModelConfig(
    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=256
)


@pytest.fixture
def tiny(tokenizer):
    return models.build_tiny_model(TINY, tokenizer, seed=0)


def _nan_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    next(model.parameters()).grad[0] = float("nan")


def test_stop_names_the_step_and_the_cell(tiny):
    _nan_grads(tiny)
    guard = NonFiniteGuard("signal=none/scheme=rl/lr=1e-3/seed=0")
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite gradient at step 5 of signal=none/scheme=rl/lr=1e-3/seed=0 "
        r"in 1 tensors \(first: model\.embed_tokens\.weight\)",
    ):
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=4), None, model=tiny)


def test_the_command_stops_with_one_line(monkeypatch, caplog):
    """A job stopped by the guard exits 2 with the guard's message, as bad input does."""
    from toolrl import cli

    def train(args):
        raise NonFiniteError("non-finite gradient at step 5 of signal=none/scheme=rl/lr=1e-3/seed=0")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: SimpleNamespace(fn=train))
    assert cli.main([]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "non-finite gradient at step 5 of signal=none/scheme=rl/lr=1e-3/seed=0"
    ]


def test_skip_leaves_weights_and_adam_state_untouched(tiny):
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-2)
    for p in tiny.parameters():  # one good step, so Adam has moments to lose
        p.grad = torch.ones_like(p)
    opt.step()
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    moments = {k: v["exp_avg"].clone() for k, v in opt.state.items()}
    _nan_grads(tiny)
    guard = NonFiniteGuard("the warm-up", mode="skip")
    guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=1), None, model=tiny)
    opt.step()
    assert guard.skipped == [2]
    assert all(torch.equal(p, before[n]) for n, p in tiny.named_parameters())
    assert all(torch.equal(v["exp_avg"], moments[k]) for k, v in opt.state.items())


def test_finite_gradients_pass(tiny):
    for p in tiny.parameters():
        p.grad = torch.ones_like(p)
    guard = NonFiniteGuard("x")
    guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=0), None, model=tiny)
    assert guard.skipped == [] and all(p.grad is not None for p in tiny.parameters())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode 'ignore'"):
        NonFiniteGuard("x", mode="ignore")


def test_sft_with_a_nan_weight_stops_at_its_first_step(tiny, tokenizer):
    """Through TRL's SFTTrainer: the guard sits on the real optimizer-step hook."""
    with torch.no_grad():
        tiny.model.norm.weight[0] = float("nan")
    rng = random.Random(0)
    examples = [echo_messages(rng) for _ in range(8)]
    with pytest.raises(NonFiniteError, match="step 1 of the warm-up"):
        sft.train(
            tiny,
            tokenizer,
            examples,
            steps=2,
            batch_size=4,
            learning_rate=1e-3,
            warmup_steps=0,
            value_token_ids=value_token_ids(tokenizer),
            value_weight=1.0,
            seed=0,
            callbacks=[NonFiniteGuard("the warm-up")],
        )


def test_nan_weights_are_never_saved(tiny, tokenizer, tmp_path):
    with torch.no_grad():
        tiny.lm_head.weight[3, 3] = float("inf")
    with pytest.raises(NonFiniteError, match="hold NaN or inf"):
        models.save(tiny, tokenizer, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    check_finite(models.build_tiny_model(TINY, tokenizer, seed=0), "fresh")  # a fresh model passes
