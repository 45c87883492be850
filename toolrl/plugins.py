"""What a supervisory signal, a training scheme and a tool backend are, and where the sweep finds them
(call syntaxes too: `toolrl.formats.base.Format`).

A signal says what supervision a cell adds; a scheme says when SFT happens relative to RL. Each is
a class with a name, its config dataclass (its section `signals.<name>` / `schemes.<name>`), the
other config sections its cells read, and hooks the GRPO trainer calls; the trainer never tests a
name. Built-ins are the modules of `toolrl.signals`, `toolrl.training.schemes`, `toolrl.envs` and
`toolrl.formats`; other packages add theirs through the entry-point groups `toolrl.signals`,
`toolrl.schemes`, `toolrl.backends` and `toolrl.formats` (value: a class).

Every plugin is imported when a config is checked, which the Snakefile does on every run: a plugin
module imports torch, TRL and the like inside its hooks, so planning a DAG never loads them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from toolrl.config import Config, WorldConfig
    from toolrl.core.diagnostics import ForbidPatterns
    from toolrl.core.rollout import Rollout
    from toolrl.core.supervision import ExpertPool, FailureLog
    from toolrl.envs.base import Task, ToolEnv
    from toolrl.formats import Format

Message = dict[str, str]

SIGNAL_GROUP = "toolrl.signals"
SCHEME_GROUP = "toolrl.schemes"
BACKEND_GROUP = "toolrl.backends"
FORMAT_GROUP = "toolrl.formats"
# Rollout kinds a signal may give a group member: sampled from the policy, sampled with a hint in
# the prompt that the loss does not see (HBG), or the expert trajectory replayed (OPS).
MEMBER_KINDS = ("policy", "hinted", "expert")


@dataclass
class CellContext:
    """What a cell's hooks may use, built once per training job by the trainer."""

    cfg: Config
    tokenizer: PreTrainedTokenizerBase
    fmt: Format
    tasks: dict[str, Task]
    pool: ExpertPool  # expert trajectories of the RL tasks, seeded by the cell
    value_ids: torch.Tensor  # argument-value token ids (weighted in SFT losses)
    control_ids: torch.Tensor  # <|im_end|>, <tool_call>
    seed: int


@dataclass
class LossTerm:
    """An extra loss on a fresh batch of `batch_size` expert trajectories at every RL step:
    L += weight · loss(logits, labels). `name` is its key in the train log."""

    name: str
    weight: float
    batch_size: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PhaseData:
    """The examples of one interleaved SFT phase; `selected` the task ids chosen from RL's failures
    (None: the signal does not select, and the train log records no count)."""

    examples: list[list[Message]]
    selected: list[str] | None = None


class Plugin:
    """What signals and schemes share: a name, a one-line summary, a config section and the
    further sections a cell reads (for the rerun hash and the MLflow params)."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config: ClassVar[type | None] = None
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @property
    def section(self) -> Any:
        """This plugin's own config section (None without a `config` class)."""
        return getattr(getattr(self.cfg, self.kind), self.name) if self.config is not None else None

    @classmethod
    def sections(cls) -> list[str]:
        return ([f"{cls.kind}.{cls.name}"] if cls.config is not None else []) + list(cls.reads)

    @classmethod
    def validate(cls, cfg: Config, used: bool) -> None:
        """Semantic checks of the plugin's section; raise `toolrl.config.ConfigError` naming the key.
        `used`: whether some cell of the grid has this plugin."""


class Signal(Plugin):
    """A supervisory signal. Hooks (all optional) in the order the trainer calls them."""

    kind: ClassVar[str] = "signals"
    schemes: ClassVar[tuple[str, ...]] = ()  # the schemes it means something with

    def setup(self, ctx: CellContext) -> None:
        """Once, before training (load a judge, say): a bad setting fails before the first step."""

    def member_kind(self, member: int) -> str:
        """The kind of rollout (`MEMBER_KINDS`) of the `member`-th of each GRPO group."""
        return "policy"

    def hint(self, ctx: CellContext, task: Task) -> str:
        """The text a `hinted` member sees appended to its system prompt."""
        raise NotImplementedError(f"signal '{self.name}' has hinted members but no hint")

    def sampling_mask(self, ctx: CellContext) -> ForbidPatterns | None:
        """A logit mask applied while sampling rollouts (never to the loss)."""
        return None

    def filter_rollouts(
        self, rollouts: list[Rollout], masks: list[list[int]], metrics: dict[str, float]
    ) -> list[list[int]]:
        """The loss masks of a step's rollouts (in group order); may add to the step's `metrics`."""
        return masks

    def rewards(self, ctx: CellContext, rollouts: list[Rollout], rewards: list[float], rl_step: int) -> list[float]:
        """The reward of each of RL step `rl_step`'s rollouts (in group order), given the checker's
        0/1 outcomes `rewards`. The logged success stays the checker's."""
        return rewards

    def loss_terms(self, ctx: CellContext) -> list[LossTerm]:
        return []

    def phase_data(self, ctx: CellContext, failures: FailureLog, rl_step: int, need: int, rng: Any) -> PhaseData:
        """The examples of an interleaved SFT phase that starts after RL step `rl_step` (`need`:
        batch size × steps; `rng` the phase's seeded `random.Random`)."""
        raise ValueError(f"signal '{self.name}' has no interleaved SFT data")


class Scheme(Plugin):
    """A training scheme: the job's phases, what runs before RL, and extra loss terms."""

    kind: ClassVar[str] = "schemes"
    # The weight of GRPO's own loss: 0 keeps the rollouts (success, probes, the detector's data)
    # and trains only on the scheme's and signal's loss terms.
    rl_weight: ClassVar[float] = 1.0

    def rl_phases(self) -> list[int]:
        """RL phases, with an SFT phase of `sft_steps()` steps between consecutive ones."""
        return [self.cfg.rl.steps]

    def sft_steps(self) -> int:
        return 0

    def before_rl(
        self, ctx: CellContext, model: Any, on_step: Callable[[dict[str, Any]], None], callbacks: list[Any]
    ) -> int:
        """Runs before the GRPO trainer starts; returns the train-log steps it took."""
        return 0

    def loss_terms(self, ctx: CellContext) -> list[LossTerm]:
        return []


class Backend:
    """A tool world: its task splits, a fresh environment per episode, its config checks. A task
    names its backend, so one split may mix backends (BFCL's content_ood from ACEBench)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    standalone: ClassVar[bool] = True  # `world.backend` may name it (ACEBench only joins BFCL)
    settings: ClassVar[str] = "world"  # the config key of its settings, named by errors

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Checks of the world settings this backend reads (when it is `world.backend`)."""

    @classmethod
    def rl_task_count(cls, world: WorldConfig) -> int | None:
        """RL tasks the settings promise, if known before `prepare` (None: unknown)."""
        return None

    @classmethod
    def make_splits(cls, world: WorldConfig) -> dict[str, list[Task]]:
        """warmup, rl, id and content_ood tasks, deterministic from the settings."""
        raise ValueError(f"backend '{cls.name}' makes no splits of its own")

    @classmethod
    def make_env(cls, task: Task) -> ToolEnv:
        raise NotImplementedError

    @classmethod
    def users(cls, world: WorldConfig) -> Callable[[Task], Any] | None:
        """Simulated users for its tasks that need one (ACEBench's multi_turn), built once."""
        return None


class PluginError(ValueError):
    """A plugin that cannot be loaded or does not declare what the sweep needs."""


def _builtin(package: str, base: type) -> list[type]:
    mod = importlib.import_module(package)
    modules = (
        [mod]
        if not hasattr(mod, "__path__")
        else [importlib.import_module(f"{package}.{m.name}") for m in pkgutil.iter_modules(mod.__path__)]
    )
    return [
        c
        for m in modules
        for _, c in inspect.getmembers(m, inspect.isclass)
        if issubclass(c, base) and c is not base and c.__module__ == m.__name__ and c.name
    ]


def _plugins(group: str, base: type) -> list[type]:
    found = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as e:  # any error inside a third-party module: name the entry point
            raise PluginError(f"entry point '{ep.name}' of group '{group}' ({ep.value}) failed to load: {e}") from e
        if not (inspect.isclass(cls) and issubclass(cls, base)):
            raise PluginError(f"entry point '{ep.name}' of group '{group}' is not a {base.__name__} subclass")
        if cls.name != ep.name:
            raise PluginError(f"entry point '{ep.name}' of group '{group}' names a {base.__name__} called '{cls.name}'")
        found.append(cls)
    return found


def _registry(package: str, group: str, base: type) -> dict[str, type]:
    out: dict[str, type] = {}
    for cls in sorted(_builtin(package, base), key=lambda c: c.name) + _plugins(group, base):
        if cls.name in out and out[cls.name] is not cls:
            raise PluginError(
                f"two {base.__name__.lower()}s are called '{cls.name}': {out[cls.name].__module__} and {cls.__module__}"
            )
        out[cls.name] = cls
    return out


@functools.cache
def signals() -> dict[str, type[Signal]]:
    """Every installed signal by name: the built-ins, then entry-point plugins."""
    return _registry("toolrl.signals", SIGNAL_GROUP, Signal)  # type: ignore[return-value]


@functools.cache
def schemes() -> dict[str, type[Scheme]]:
    """Every installed training scheme by name."""
    return _registry("toolrl.training.schemes", SCHEME_GROUP, Scheme)  # type: ignore[return-value]


def default_pairs() -> dict[str, list[str]]:
    """Each signal with the schemes it pairs with (the default `sweep.pairs`)."""
    return {name: list(cls.schemes) for name, cls in signals().items()}


@functools.cache
def backends() -> dict[str, type[Backend]]:
    """Every installed tool backend by name."""
    return _registry("toolrl.envs", BACKEND_GROUP, Backend)


@functools.cache
def formats() -> dict[str, type]:
    """Every installed call syntax by name (`toolrl.formats.base.Format` subclasses)."""
    base = importlib.import_module("toolrl.formats.base").Format
    return _registry("toolrl.formats", FORMAT_GROUP, base)
