"""Rollout throughput: does the batched multi-turn engine beat one episode at a time, and by how much?

    .venv/bin/python benchmarks/rollout_throughput.py --device cpu
    .venv/bin/python benchmarks/rollout_throughput.py --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/rollout_throughput.py --model results/default/base/model
    .venv/bin/python benchmarks/rollout_throughput.py --against 22b6822   # vs the engine at a revision

The question: GRPO samples `--group-size` rollouts of each of `--prompts` tasks every step.
`toolrl.core.rollout.run` advances all unfinished episodes together (one decoding pass per round,
finished episodes drop out, then every environment answers). The baseline is the plain loop:
the same engine called once per episode, so every decoding pass has a batch of one. Everything else
is shared: the model, tokenizer, chat template, environments, sampling (temperature 1.0, top-p 1,
no top-k, as in GRPO), the rollout budgets of config.yaml and the seed of each repeat. Only
batching differs.

With `--against REV` the baseline is instead the batched engine of an earlier revision
(`git show REV:toolrl/core/rollout.py`, imported beside today's), every episode at once on both sides:
what a change to the engine gained. The same seeds then give both sides the same episodes where
the change is exact.

Tokens are the model-sampled ones (loss mask 1, `<|im_end|>` included), counted from each
rollout's `env_mask` on both sides. The two sides draw different random numbers, so their
episodes differ and so do their token counts; tokens/s, not wall time, is therefore compared.
The ratio (batched tokens/s ÷ per-episode tokens/s) is what to report: above 1 the batched engine
is faster. The issue's target is ≥ 5× at group size 8. Absolute times depend on the machine and
its load; each repeat runs the two sides back to back (in alternating order) and the median of
the per-repeat ratios is printed. `gen s` is the time spent decoding; the rest of `wall s` is
the environments, the chat template and the tokenizer, which batching does not speed up.

Without `--model` the tiny default model is built in-process exactly as the warm-up builds it
(tokenizer trained on the same corpus, same initialisation), untrained. An untrained model almost
never samples `<|im_end|>`: every episode would be one 64-token message cut off by the budget, a
single round, which flatters batching. So, for the built model only, `LengthShaper` gives its
messages the lengths and the call/answer mix measured on the trained warm-up checkpoint; a round
of the batched engine lasts as long as its longest message, so the length spread matters as much
as the mean. The table prints the shape each side got (messages per episode, tokens per message);
`--model results/default/base/model` measures a trained checkpoint directly.

Imports only torch, transformers and toolrl modules that need neither trl, mlflow, datasets nor
snakemake (it checks, and warns if one was pulled in), so it runs on a bare GPU machine with
torch, transformers, tokenizers and omegaconf.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # toolrl from this checkout, installed or not (a bare GPU machine)

from toolrl import config as configs
from toolrl.core import rollout
from toolrl.envs.base import Task
from toolrl.envs.data import make_splits
from toolrl.formats import Format, get_format
from toolrl.models import model as models
from toolrl.training import warmup

HEAVY = ("trl", "mlflow", "datasets", "snakemake")
# Sampled message lengths (tokens, <|im_end|> included) → count, measured on the warm-up checkpoint
# `results/default/base/model` of config.yaml: rl tasks 0–11 × 8 rollouts, temperature 1, 438
# messages, 4.6 per episode. Three modes: answers (~3), one call (22–28), two calls (50–56).
MESSAGE_LENGTHS = {
    2: 2,
    3: 167,
    4: 24,
    5: 4,
    6: 2,
    7: 1,
    8: 4,
    9: 2,
    10: 3,
    11: 3,
    12: 2,
    13: 3,
    14: 4,
    15: 5,
    16: 1,
    17: 5,
    18: 1,
    19: 10,
    22: 35,
    24: 3,
    25: 2,
    26: 15,
    28: 64,
    31: 1,
    32: 1,
    33: 1,
    36: 1,
    44: 4,
    45: 1,
    48: 2,
    50: 32,
    54: 6,
    55: 1,
    56: 24,
    64: 2,
}
CALL_MIN = 8  # in the checkpoint's samples, messages this long are calls and shorter ones answers


@dataclass
class Side:
    """One timed run of one side: wall and seconds spent decoding, sampled tokens, episode shape."""

    wall_s: float
    gen_s: float
    calls: int
    tokens: int
    messages: int
    episodes: int
    truncated: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


class LengthShaper(transformers.LogitsProcessor):
    """A logits processor that gives the untrained model the trained one's message shape: a
    message that follows a tool response is an answer, any other is a call (as the checkpoint's
    are: call, result, "done", next user turn). Its length is drawn from that kind's part of
    `MESSAGE_LENGTHS`; a call opens with `<tool_call>` (the environment answers its garbage with
    an error: another round, as a real result would be), `<|im_end|>` is forbidden before the
    drawn length and forced at it, and every other token is sampled from the model. A few tensor
    ops per step, the same on both sides, and no host sync on CUDA."""

    def __init__(self, width: int, eos: int, call: int, response_end: int):
        self.width, self.eos, self.call, self.response_end = width, eos, call, response_end
        self.target: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        out = scores.clone()
        out[:, self.eos] = -math.inf
        only = torch.full_like(scores, -math.inf)
        if self.target is None:  # step 0: pick each row's kind and length, open calls with <tool_call>
            answer = (input_ids[:, -8:] == self.response_end).any(dim=1)
            self.target = torch.where(
                answer, _draw(True, answer.shape[0], scores.device), _draw(False, answer.shape[0], scores.device)
            )
            forced = only.clone()
            forced[:, self.call] = 0.0
            out = torch.where(answer[:, None], out, forced)
        only[:, self.eos] = 0.0
        return torch.where((self.target == step + 1)[:, None], only, out)


def _draw(answers: bool, n: int, device: torch.device) -> torch.Tensor:
    """`n` message lengths from the answer (< CALL_MIN tokens) or the call part of MESSAGE_LENGTHS."""
    part = {k: v for k, v in MESSAGE_LENGTHS.items() if (k < CALL_MIN) == answers}
    lengths = torch.tensor(list(part), device=device)
    return lengths[
        torch.multinomial(torch.tensor(list(part.values()), dtype=torch.float, device=device), n, replacement=True)
    ]


class Timed:
    """Wraps the call that decodes a round, to count the calls and the seconds spent inside them
    (on CUDA each call is synchronised at both ends): an engine's `_decode` (`wrap`), or
    `model.generate` (an instance attribute, so `rollout.run` calls it) in engines from before
    `_decode` existed. With `shape=(eos, call, response_end)` it adds a fresh `LengthShaper` to
    each call's logits processors."""

    def __init__(self, model: torch.nn.Module, sync: Callable[[], None], shape: tuple[int, int, int] | None):
        self.sync = sync
        self.shape = shape
        self.seconds = 0.0
        self.calls = 0
        inner = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            if self.shape is not None:
                kwargs["logits_processor"] = [*kwargs.get("logits_processor", []), self.shaper(kwargs["input_ids"])]
            return self.timed(inner, *args, **kwargs)

        model.generate = generate  # type: ignore[method-assign]

    def wrap(self, engine: ModuleType) -> None:
        """Time `engine._decode` (model, batch, budget, sample, temperature, processors, eos, pad)."""
        inner = getattr(engine, "_decode", None)
        if inner is None:
            return

        def decode(
            model: torch.nn.Module,
            batch: Any,
            budget: int,
            sample: bool,
            temperature: float,
            processors: list[Any],
            *rest: Any,
            **kw: Any,
        ) -> Any:
            if self.shape is not None:
                processors = [*processors, self.shaper(batch.ids)]
            return self.timed(inner, model, batch, budget, sample, temperature, processors, *rest, **kw)

        engine._decode = decode  # type: ignore[attr-defined]

    def shaper(self, input_ids: torch.Tensor) -> LengthShaper:
        assert self.shape is not None
        return LengthShaper(input_ids.shape[1], *self.shape)

    def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.sync()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def run_side(
    batched: bool,
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: list[Task],
    fmt: Format,
    cfg: configs.RolloutConfig,
    seed: int,
    timer: Timed,
    engine: ModuleType = rollout,
) -> Side:
    """All episodes in one `engine.run` (batched) or one `engine.run` per episode (baseline)."""
    timer.reset()
    torch.manual_seed(seed)
    timer.sync()
    t0 = time.perf_counter()
    if batched:
        rollouts = engine.run(model, tokenizer, tasks, fmt, cfg, sample=True, temperature=1.0)
    else:
        rollouts = [r for t in tasks for r in engine.run(model, tokenizer, [t], fmt, cfg, sample=True, temperature=1.0)]
    timer.sync()
    wall = time.perf_counter() - t0
    return Side(
        wall,
        timer.seconds,
        timer.calls,
        sum(sum(r.env_mask) for r in rollouts),
        sum(len(r.episode.states) for r in rollouts),
        len(rollouts),
        sum(r.episode.truncated for r in rollouts),
    )


def engine_at(rev: str, folder: Path) -> ModuleType:
    """`toolrl/core/rollout.py` as it was at git revision `rev`, imported beside today's from a copy in
    `folder` (it must still run against today's other modules: true back to the batched engine's
    first version)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:toolrl/core/rollout.py"], capture_output=True, text=True, check=True
    ).stdout
    path = folder / "rollout_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rollout_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="auto: cuda if available")
    ap.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (rl.num_generations)")
    ap.add_argument("--prompts", type=int, default=4, help="tasks per step (rl.prompts_per_step)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the median ratio is reported")
    ap.add_argument(
        "--model",
        default=None,
        help="checkpoint dir for toolrl.models.model.load (default: the tiny model, built untrained in-process)",
    )
    ap.add_argument("--config", default=str(ROOT / "config.yaml"), help="world, rollout budgets, tiny model")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default). 1 by default: the tiny model gains little "
        "from more, and two threads fighting another job over 2 cores ran 70x slower",
    )
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="model dtype on cuda (cpu: always float32)"
    )
    ap.add_argument(
        "--against",
        metavar="REV",
        default=None,
        help="baseline: the batched engine of git revision REV instead of one episode at a time "
        "(what a change to toolrl/core/rollout.py gained)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads > 0:
        models.set_threads(args.threads)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    cfg = configs.load(args.config)
    fmt = get_format(cfg.world.train_format, cfg.world.prompt_style)
    splits = make_splits(cfg.world)
    if args.model is None:
        rng = random.Random(f"{cfg.world.seed}:warmup-sft:{args.seed}")  # the warm-up's own
        model, tokenizer = warmup.build_tiny(cfg, warmup.trajectory_source(cfg, splits["warmup"], rng), rng, args.seed)
        shape = (
            tokenizer.convert_tokens_to_ids(models.EOS),
            tokenizer.convert_tokens_to_ids("<tool_call>"),
            tokenizer.convert_tokens_to_ids("</tool_response>"),
        )
        source = f"tiny default, untrained, message lengths shaped ({models.n_params(model) / 1e6:.2f} M params)"
    else:
        model, tokenizer = models.load(args.model, cfg.model.enable_thinking)
        shape = None
        source = f"{args.model} ({models.n_params(model) / 1e6:.2f} M params)"
    dtype = torch.bfloat16 if device.type == "cuda" and args.dtype == "bfloat16" else torch.float32
    model.to(device=device, dtype=dtype)
    tasks = [t for t in splits["rl"][: args.prompts] for _ in range(args.group_size)]
    timer = Timed(model, sync, shape)

    print(
        f"device: {device_name(device)} ({device.type}, {str(dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} torch threads) | torch {torch.__version__} | "
        f"transformers {transformers.__version__} | python {platform.python_version()}"
    )
    print(f"model: {source}")
    r = cfg.rollout
    print(
        f"{args.prompts} prompts × group {args.group_size} = {len(tasks)} episodes per step; "
        f"max_new_tokens {r.max_new_tokens}, max_total_tokens {r.max_total_tokens}, "
        f"max_messages {r.max_messages}; temperature 1.0; {args.repeats} repeats"
    )

    # The baseline: one episode at a time through this engine, or every episode through REV's.
    baseline = f"at {args.against}" if args.against else "per-episode"
    base_engine, base_batched = rollout, False
    scratch = tempfile.TemporaryDirectory(prefix="toolrl-engine-")  # removed at exit
    if args.against:
        base_engine, base_batched = engine_at(args.against, Path(scratch.name)), True
    for engine in {rollout, base_engine}:
        timer.wrap(engine)

    # Warm-up (kernels, allocator, the tokenizer's caches): one group on each side.
    run_side(True, model, tokenizer, tasks[: args.group_size], fmt, r, args.seed + 10_000, timer)
    run_side(
        base_batched,
        model,
        tokenizer,
        tasks[: args.group_size if base_batched else 1],
        fmt,
        r,
        args.seed + 10_000,
        timer,
        base_engine,
    )

    results: dict[str, list[Side]] = {"batched": [], baseline: []}
    for i in range(args.repeats):
        for ours in [True, False] if i % 2 == 0 else [False, True]:
            side = run_side(
                True if ours else base_batched,
                model,
                tokenizer,
                tasks,
                fmt,
                r,
                args.seed + i,
                timer,
                rollout if ours else base_engine,
            )
            results["batched" if ours else baseline].append(side)
    ratios = [b.tokens_per_s / p.tokens_per_s for b, p in zip(results["batched"], results[baseline], strict=True)]

    print()
    print(
        f"{'side':<16} {'tokens/s':>9} {'wall s':>8} {'gen s':>8} {'tokens':>7} {'generate':>9} "
        f"{'msgs/ep':>8} {'tok/msg':>8} {'trunc':>6}"
    )
    for name, sides in results.items():
        med = sorted(sides, key=lambda s: s.tokens_per_s)[len(sides) // 2]  # the median repeat
        print(
            f"{name:<16} {med.tokens_per_s:>9.1f} {med.wall_s:>8.2f} {med.gen_s:>8.2f} {med.tokens:>7d} "
            f"{med.calls:>9d} {med.messages / med.episodes:>8.2f} {med.tokens / med.messages:>8.1f} "
            f"{med.truncated:>6d}"
        )
    print("(the median repeat of each side; generate = decoding calls, one a round; trunc = episodes cut by a budget)")
    print(f"per-repeat ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"ratio (batched / {baseline}): {statistics.median(ratios):.2f}×")

    heavy = sorted(m for m in HEAVY if m in sys.modules)
    if heavy:
        print(f"WARNING: imported {', '.join(heavy)}; this will not run on a machine without them", file=sys.stderr)


if __name__ == "__main__":
    main()
