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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

SIGNALS = ("none", "sft", "ops", "hbg", "ets", "prs", "ctrl", "void_filter")
SCHEMES = ("rl", "sequential", "synchronous", "interleaved")
# What this release can train; the rest of SIGNALS/SCHEMES are reserved names from the paper.
IMPLEMENTED_SIGNALS = ("none", "sft")
IMPLEMENTED_SCHEMES = ("rl", "sequential")
# The signal × scheme pairs that mean something: vanilla GRPO is RL only; SFT on expert
# trajectories combines with RL through a scheme.
MEANINGFUL = {"none": ("rl",), "sft": ("sequential",)}
SPLITS = ("id", "format_ood", "content_ood")
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
    exclude: list[CellFilter] = field(
        default_factory=lambda: [CellFilter(signal="none", scheme="sequential"), CellFilter(signal="sft", scheme="rl")]
    )
    baseline: CellFilter = field(default_factory=lambda: CellFilter(signal="none", scheme="rl"))


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
class RLConfig:
    steps: int = 10
    prompts_per_step: int = 4
    num_generations: int = 8
    beta: float = 0.0
    temperature: float = 1.0
    loss_type: str = "dapo"


@dataclass
class RolloutConfig:
    max_messages: int = 30
    max_new_tokens: int = 64
    max_total_tokens: int = 900


@dataclass
class AggregateConfig:
    confidence: float = 0.95
    n_resamples: int = 2000
    correction: str = "holm"


@dataclass
class MLflowConfig:
    # None: a sqlite store under results/<sweep>/mlflow.db.
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None


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
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
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


def format_lr(lr: float) -> str:
    """A stable, readable spelling for paths: 1e-4 not 0.0001."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: Config) -> None:
    """Semantic checks that a type system cannot express."""
    sw = cfg.sweep
    _check(bool(sw.name) and "/" not in sw.name, "sweep.name", "must be a non-empty name without '/'")
    for key, values, allowed, implemented in (
        ("sweep.signals", sw.signals, SIGNALS, IMPLEMENTED_SIGNALS),
        ("sweep.schemes", sw.schemes, SCHEMES, IMPLEMENTED_SCHEMES),
    ):
        _check(len(values) > 0, key, "must not be empty")
        for v in values:
            _check(v in allowed, key, f"unknown value '{v}' (choose from {', '.join(allowed)})")
            _check(v in implemented, key, f"'{v}' is not implemented yet (available: {', '.join(implemented)})")
    _check(len(sw.learning_rates) > 0, "sweep.learning_rates", "must not be empty")
    for lr in sw.learning_rates:
        _check(lr > 0, "sweep.learning_rates", f"learning rate {lr} must be > 0")
    _check(len(sw.seeds) > 0, "sweep.seeds", "must not be empty")
    _check(len(set(sw.seeds)) == len(sw.seeds), "sweep.seeds", "must not repeat a seed")
    for key, f in [("sweep.baseline", sw.baseline)] + [(f"sweep.exclude[{i}]", e) for i, e in enumerate(sw.exclude)]:
        _check(f.signal is None or f.signal in SIGNALS, f"{key}.signal", f"unknown signal '{f.signal}'")
        _check(f.scheme is None or f.scheme in SCHEMES, f"{key}.scheme", f"unknown scheme '{f.scheme}'")
    cells = grid(cfg)
    _check(len(cells) > 0, "sweep.exclude", "excludes every cell of the grid")
    for c in cells:
        _check(c.scheme in MEANINGFUL[c.signal], "sweep.exclude",
               f"signal '{c.signal}' does not combine with scheme '{c.scheme}' (it pairs with "
               f"{', '.join(MEANINGFUL[c.signal])}); exclude {{signal: {c.signal}, scheme: {c.scheme}}}")
    _check(
        any(c.matches(sw.baseline) for c in cells), "sweep.baseline", "matches no cell of the grid"
    )
    w = cfg.world
    _check(w.backend == "synthetic", "world.backend", f"unknown backend '{w.backend}' (choose from synthetic)")
    _check(w.train_format in FORMATS, "world.train_format", f"unknown format '{w.train_format}'")
    _check(w.ood_format in FORMATS, "world.ood_format", f"unknown format '{w.ood_format}'")
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
        ("warmup.steps", cfg.warmup.steps),
        ("warmup.batch_size", cfg.warmup.batch_size),
        ("sft.steps", cfg.sft.steps),
        ("rl.steps", cfg.rl.steps),
        ("rl.prompts_per_step", cfg.rl.prompts_per_step),
        ("rollout.max_messages", cfg.rollout.max_messages),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
        ("aggregate.n_resamples", cfg.aggregate.n_resamples),
        ("resources.threads", cfg.resources.threads),
        ("resources.warmup_threads", cfg.resources.warmup_threads),
    ):
        _check(val > 0, key, f"must be > 0, got {val}")
    _check(cfg.rl.num_generations >= 2, "rl.num_generations", "GRPO needs at least 2 generations per group")
    for key, lr in (("warmup.learning_rate", cfg.warmup.learning_rate), ("sft.learning_rate", cfg.sft.learning_rate)):
        _check(lr > 0, key, f"learning rate {lr} must be > 0")
    _check(0 < cfg.aggregate.confidence < 1, "aggregate.confidence", "must be in (0, 1)")
    _check(cfg.aggregate.correction in ("holm", "bonferroni", "none"), "aggregate.correction",
           "choose from holm, bonferroni, none")
    if cfg.model.name_or_path is not None:
        p = Path(cfg.model.name_or_path)
        looks_local = cfg.model.name_or_path.startswith((".", "/", "~")) or p.exists()
        _check(not looks_local or p.exists(), "model.name_or_path", f"path '{p}' does not exist")


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
    return section_hash(cfg, *to_dict(cfg))


def section_hash(cfg: Config, *sections: str) -> str:
    """A hash of some config sections, for Snakemake `params`: a job reruns when a section it
    reads changes, and only then (a changed plot setting does not retrain anything)."""
    d = to_dict(cfg)
    blob = json.dumps({s: d[s] for s in sections}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def grid(cfg: Config) -> list[Cell]:
    """Every cell of signals × schemes × learning rates × seeds that the exclude list keeps."""
    sw = cfg.sweep
    cells = [
        Cell(sig, sch, float(lr), int(seed))
        for sig in sw.signals
        for sch in sw.schemes
        for lr in sw.learning_rates
        for seed in sw.seeds
    ]
    return [c for c in cells if not any(c.matches(e) for e in sw.exclude)]


def parse_cell(signal: str, scheme: str, lr: str, seed: str) -> Cell:
    """Wildcards (strings) → a Cell."""
    return Cell(signal, scheme, float(lr), int(seed))


__all__ = [
    "Cell", "CellFilter", "Config", "ConfigError", "SIGNALS", "SCHEMES", "SPLITS",
    "config_hash", "format_lr", "from_snakemake", "grid", "load", "parse_cell", "to_dict", "validate",
]
