from __future__ import annotations

import random

import pytest

from toolrl.config import WorldConfig
from toolrl.data import echo_messages, make_splits
from toolrl.envs.synthetic import VALUE_TOKENS
from toolrl.episode import expert_messages
from toolrl.formats import get_format


@pytest.fixture(scope="session")
def world() -> WorldConfig:
    return WorldConfig(n_warmup_tasks=600, n_rl_tasks=200, n_eval_tasks=24, chain_prob=0.2, ask_back_prob=0.2)


@pytest.fixture(scope="session")
def splits(world):
    return make_splits(world)


@pytest.fixture(scope="session")
def tokenizer(splits):
    from toolrl.model import build_tokenizer

    rng = random.Random(0)
    fmts = [get_format("json"), get_format("python")]
    corpus = [
        "\n".join(m["role"] + "\n" + m["content"] for m in expert_messages(rng.choice(splits["warmup"]), rng.choice(fmts)))
        for _ in range(400)
    ] + [m["content"] for _ in range(100) for m in echo_messages(rng)]
    return build_tokenizer(corpus, VALUE_TOKENS)
