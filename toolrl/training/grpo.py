"""GRPO on multi-turn tool use: TRL's GRPOTrainer driven by our rollout engine, with the cell's
supervisory signal and training scheme plugged in through their hooks (`toolrl.plugins`).

TRL's built-in tool loop handles one user turn and needs a stock chat template; our tasks have up
to three user turns, so we plug the batched multi-turn engine in through `rollout_func` and mark
inserted tokens with `env_mask`. Advantages, clipping, KL and the optimizer stay TRL's. The hooks
enter where TRL leaves room for them: the rollout function composes each group (policy, hinted and
expert members), masks sampling and filters trajectories; `compute_loss` adds the loss terms; and
`training_step` runs the SFT phases of a scheme inside the same trainer, so optimizer state and the
step counter carry over from phase to phase. The trainer never tests a signal's or scheme's name.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from toolrl.config import Config, RLConfig, RolloutConfig
from toolrl.core import rollout
from toolrl.core.diagnostics import STATES
from toolrl.core.episode import Message
from toolrl.core.expert_probe import ExpertProbe
from toolrl.core.supervision import ExpertPool, FailureLog, GroupOutcome, encode_examples, token_weights, weighted_nll
from toolrl.envs.base import Task
from toolrl.formats import Format
from toolrl.models import model as models
from toolrl.models.guards import NonFiniteGuard
from toolrl.plugins import (
    MEMBER_KINDS,
    CellContext,
    LossTerm,
    PhaseData,
    PluginError,
    Scheme,
    Signal,
    schemes,
    signals,
)
from toolrl.training.checkpoints import Checkpoints, Preempted, SaveAndStop, StopSignals
from toolrl.training.warmup import value_token_ids

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def rollout_metrics(rollouts: list[rollout.Rollout]) -> dict[str, float]:
    """Per-step diagnostics of a batch of episodes: success, format errors, the four output states,
    and the mean probability of each control token at the probed positions."""
    n = max(1, len(rollouts))
    states: Counter[str] = Counter()
    for r in rollouts:
        states.update(r.episode.states)
    n_msgs = max(1, sum(states.values()))
    out = {
        "success": sum(r.success for r in rollouts) / n,
        "format_error_rate": sum(r.episode.format_errors > 0 for r in rollouts) / n,
        "void_rate": sum(r.episode.voids > 0 for r in rollouts) / n,
        "messages_per_episode": n_msgs / n,
        "truncated_rate": sum(r.episode.truncated for r in rollouts) / n,
    }
    out.update({f"state/{s}": states[s] / n_msgs for s in STATES})
    pooled: dict[str, list[float]] = {}
    for r in rollouts:
        for k, v in r.probes.items():
            pooled.setdefault(k, []).extend(v)
    out.update({k: sum(v) / len(v) for k, v in sorted(pooled.items()) if v})
    return out


def vllm_generate(trainer: GRPOTrainer, max_new_tokens: int) -> rollout.Generate | None:
    """TRL's vLLM engine as the rollout's generator, when the trainer runs one (TRL syncs the
    policy's weights into it before calling the rollout_func). It samples at `rl.temperature`;
    its length limit is set to one message's (`rollout.max_new_tokens`), not TRL's whole
    completion's. It also returns the engine's log-prob of each sampled token (the first of
    vLLM's top-k per position, as TRL's own vLLM path reads them)."""
    if not getattr(trainer, "use_vllm", False):
        return None
    trainer.vllm_generation.max_completion_length = max_new_tokens

    def generate(contexts: list[list[int]]) -> tuple[list[list[int]], list[list[float]] | None]:
        _, completions, logprobs, _ = trainer.vllm_generation.generate(prompts=contexts, images=None, num_generations=1)
        if logprobs is None:
            return completions, None
        return completions, [[math.nan if lp[0] is None else lp[0] for lp in seq] for seq in logprobs]

    return generate


class MultiTurnRollout:
    """A `rollout_func` for GRPOTrainer. Prompts are task ids (TRL passes only the prompt column,
    already repeated `num_generations` times, each group contiguous); each comes back as one
    multi-turn completion. The signal gives each group member its kind: sampled from the policy,
    sampled with a hint (HBG) or the expert trajectory replayed (OPS); the on-policy members alone
    feed `success`, the diagnostics and the failure log that ETS and PRS select from."""

    def __init__(self, ctx: CellContext, signal: Signal, cfg: RolloutConfig, rl: RLConfig):
        self.ctx = ctx
        self.tasks = ctx.tasks
        self.signal = signal
        self.cfg = cfg
        self.temperature = rl.temperature
        self.n = rl.num_generations
        self.mask = signal.sampling_mask(ctx)
        # Each group member's kind, asked once: a kind the engine does not know would otherwise be
        # sampled as a plain policy rollout without a word.
        self.member_kinds = [signal.member_kind(m) for m in range(self.n)]
        unknown = sorted(set(self.member_kinds) - set(MEMBER_KINDS))
        if unknown:
            raise PluginError(
                f"signal '{signal.name}': member_kind gave {', '.join(unknown)} (choose from {', '.join(MEMBER_KINDS)})"
            )
        self.failures = FailureLog()
        self.rl_steps = 0
        self.last: dict[str, float] = {}
        n = ctx.cfg.diagnostics.probe_tasks
        self.probe = (
            ExpertProbe.build(
                ctx.tokenizer,
                list(ctx.tasks.values()),
                ctx.fmt,
                n,
                seed=ctx.cfg.world.seed,  # the same trajectories in every cell of the sweep
                control_ids=rollout.control_token_ids(ctx.tokenizer),
                value_ids=ctx.value_ids.tolist(),
            )
            if n
            else None
        )

    def __call__(self, prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        torch.manual_seed(self.ctx.seed * 1_000_003 + trainer.state.global_step)
        model = trainer.accelerator.unwrap_model(trainer.model)
        ctx, tok, fmt = self.ctx, self.ctx.tokenizer, self.ctx.fmt
        kinds = [self.member_kinds[i % self.n] for i in range(len(prompts))]
        hints = [
            self.signal.hint(ctx, self.tasks[p]) if k == "hinted" else None for p, k in zip(prompts, kinds, strict=True)
        ]
        sampled_idx = [i for i, k in enumerate(kinds) if k != "expert"]
        t0 = time.perf_counter()
        sampled = rollout.run(
            model,
            tok,
            [self.tasks[prompts[i]] for i in sampled_idx],
            fmt,
            self.cfg,
            sample=True,
            temperature=self.temperature,
            hints=[hints[i] for i in sampled_idx],
            forbid=self.mask,
            generate=None if self.mask is not None else vllm_generate(trainer, self.cfg.max_new_tokens),
        )
        rs: list[rollout.Rollout] = [None] * len(prompts)  # type: ignore[list-item]
        for i, r in zip(sampled_idx, sampled, strict=True):
            rs[i] = r
        for i, k in enumerate(kinds):
            if k == "expert":
                rs[i] = rollout.replay(tok, self.tasks[prompts[i]], fmt, self.cfg)
                if not rs[i].success:  # truncated: GRPO would push the ground truth down
                    raise ValueError(
                        f"the expert trajectory of task {prompts[i]} does not fit the rollout budget; "
                        "raise config keys rollout.max_total_tokens / rollout.max_messages"
                    )
        self.rl_steps += 1
        self._record(prompts, rs)
        policy = [r for r in rs if r.kind == "policy"]
        self.last = rollout_metrics(policy)
        self.last["success/with_supervised"] = sum(r.success for r in rs) / len(rs)
        if self.probe is not None:  # the policy this step's rollouts were sampled from
            t1 = time.perf_counter()
            self.last.update(self.probe.measure(model))
            self.last["probe/seconds"] = time.perf_counter() - t1
        seconds = time.perf_counter() - t0
        self.last["rollout/seconds"] = seconds
        self.last["rollout/tokens_per_second"] = sum(sum(r.env_mask) for r in sampled) / max(seconds, 1e-9)
        masks = self.signal.filter_rollouts(rs, [r.env_mask for r in rs], self.last)
        return {
            "prompt_ids": [r.prompt_ids for r in rs],
            "completion_ids": [r.completion_ids for r in rs],
            # With vLLM, TRL corrects each token's importance weight for the engine's mismatch with
            # the policy. Only policy members are corrected: a hinted member was sampled from
            # another prompt and an expert's tokens were never sampled; NaN gives a weight of 1.
            "logprobs": [r.logprobs if r.kind == "policy" else [math.nan] * len(r.completion_ids) for r in rs]
            if getattr(trainer, "use_vllm", False)
            else None,
            "env_mask": masks,
            "success": self.signal.rewards(ctx, rs, [float(r.success) for r in rs], self.rl_steps),
        }

    def _record(self, prompts: list[str], rs: list[rollout.Rollout]) -> None:
        for start in range(0, len(rs), self.n):
            group = [r for r in rs[start : start + self.n] if r.kind == "policy"]
            failed = next((r.messages for r in reversed(group) if not r.success), None)
            self.failures.add(GroupOutcome(self.rl_steps, prompts[start], [r.success for r in group], failed))


def success_reward(prompts: list[str], completions: list[Any], success: list[float], **_: Any) -> list[float]:
    """The 0/1 task outcome computed by the checker during the rollout; no format reward."""
    return success


class Plan:
    """The phases of one training job: RL only, or RL phases with SFT phases between them."""

    def __init__(self, rl_phases: list[int], sft_steps: int = 0):
        self.phases: list[tuple[str, int]] = []
        for i, n in enumerate(rl_phases):
            if i and sft_steps:
                self.phases.append(("sft", sft_steps))
            self.phases.append(("rl", n))
        self.total = sum(n for _, n in self.phases)

    def phase(self, step: int) -> tuple[str, int, int]:
        """(kind, index of the phase, step within the phase) of the 0-based global `step`."""
        for i, (kind, n) in enumerate(self.phases):
            if step < n:
                return kind, i, step
            step -= n
        raise IndexError("step beyond the plan")


@dataclass
class ToolGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus what our schemes add: the SFT steps inside a run (interleaved) and the
    supervised losses' value-token weight."""

    rl_phases: list[int] = field(default_factory=list, metadata={"help": "steps of each RL phase"})
    sft_steps: int = field(default=0, metadata={"help": "SFT steps between two RL phases"})
    sft_learning_rate: float = field(default=0.0, metadata={"help": "learning rate of SFT steps"})
    sft_batch_size: int = field(default=0, metadata={"help": "expert trajectories per SFT step"})
    value_weight: float = field(default=1.0, metadata={"help": "loss weight of argument-value tokens"})


class ToolGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus a cell's signal and scheme: their loss terms on expert batches at every RL
    step (synchronous SFT, ctrl penalty), and SFT steps inside the same run (interleaved), whose
    data the signal chooses."""

    args: ToolGRPOConfig

    def __init__(
        self,
        *args: Any,
        ctx: CellContext,
        signal: Signal,
        scheme: Scheme,
        source: MultiTurnRollout,
        extra: dict[str, float],
        checkpoints: Checkpoints | None = None,
        job_state: Callable[[], dict[str, Any]] = dict,
        **kwargs: Any,
    ):
        super().__init__(*args, rollout_func=source, **kwargs)
        self.checkpoints = checkpoints
        self.job_state = job_state
        self._staging: str | None = None
        self.ctx = ctx
        self.signal = signal
        self.source = source
        self.plan = Plan(self.args.rl_phases, self.args.sft_steps)
        self.extra = extra
        # The scheme's terms first, then the signal's: each draws its expert batch from the pool.
        self.terms: list[LossTerm] = scheme.loss_terms(ctx) + signal.loss_terms(ctx)
        self.rl_weight = scheme.rl_weight
        self.phase_rng = random.Random(ctx.seed)
        self._phase = -1
        self._examples: list[list[Message]] = []
        self._sft_micro = 0  # micro-steps taken in SFT phases (TRL's own counter drives generation)
        self._sft_norm = 1.0  # the current SFT step's total token weight

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond transformers' own files to resume this run exactly."""
        return {
            "rl_steps": self.source.rl_steps,
            "failures": [asdict(g) for g in self.source.failures.groups],
            "pool_rng": self.ctx.pool.rng.getstate(),
            "phase_rng": self.phase_rng.getstate(),
            "phase": self._phase,
            "examples": self._examples,
            "sft_micro": self._sft_micro,
            "sft_norm": self._sft_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.rl_steps = state["rl_steps"]
        self.source.failures.groups = [GroupOutcome(**g) for g in state["failures"]]
        for rng, saved in ((self.ctx.pool.rng, state["pool_rng"]), (self.phase_rng, state["phase_rng"])):
            rng.setstate((saved[0], tuple(saved[1]), saved[2]))  # JSON turned the tuples into lists
        self._phase, self._examples = state["phase"], state["examples"]
        self._sft_micro, self._sft_norm = state["sft_micro"], state["sft_norm"]

    def _get_output_dir(self, trial):  # type: ignore[override]
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        # transformers writes checkpoint-N into the staging folder; it is renamed into place whole.
        if self.checkpoints is None:
            return
        name = f"checkpoint-{self.state.global_step}"
        t0 = time.perf_counter()
        with self.checkpoints.staging(name, {"trainer": self.state_dict(), "job": self.job_state()}) as staging:
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
        self.extra["checkpoint/seconds"] = time.perf_counter() - t0  # in the next step's record

    def _forward(self, model: torch.nn.Module, examples: list[list[Message]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of chat examples, labels -100 outside the assistant messages."""
        b = {k: v.to(self.accelerator.device) for k, v in encode_examples(self.processing_class, examples).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        return logits, b["labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        # TRL scales the GRPO loss of each micro-batch by 1/accumulation; each micro-batch draws
        # its share of each extra term's expert batch, weighted by that share.
        loss = self.rl_weight * super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        accum = self.current_gradient_accumulation_steps
        m = self._step % accum  # TRL's micro-step counter, advanced after this call
        for term in self.terms:
            k = term.batch_size // accum + (m < term.batch_size % accum)  # this micro-batch's share
            if not k:
                continue
            value = term.loss(*self._forward(model, self.ctx.pool.sample(k)))
            loss = loss + term.weight * value * k / term.batch_size
            self.extra[term.name] = value.item()
        return loss

    def _phase_data(self) -> PhaseData:
        need = self.args.sft_batch_size * self.args.sft_steps
        return self.signal.phase_data(self.ctx, self.source.failures, self.source.rl_steps, need, self.phase_rng)

    def training_step(self, model, inputs, num_items_in_batch):  # type: ignore[override]
        kind, index, within = self.plan.phase(self.state.global_step)
        if kind == "rl":
            return super().training_step(model, inputs, num_items_in_batch)
        if index != self._phase:
            data = self._phase_data()
            self._phase, self._examples = index, data.examples
            if data.selected is not None:
                self.extra["sft/selected_tasks"] = float(len(data.selected))
        self.extra["sft/examples"] = float(len(self._examples))
        model.train()
        if not self._examples:  # nothing failed: the phase leaves the model as it is
            return torch.zeros((), device=self.accelerator.device)
        sft_batch, value_ids, value_weight = self.args.sft_batch_size, self.ctx.value_ids, self.args.value_weight
        batch = self._examples[within * sft_batch : (within + 1) * sft_batch]
        accum = self.current_gradient_accumulation_steps
        part = -(-len(batch) // accum)
        m = self._sft_micro % accum
        self._sft_micro += 1
        if m == 0:
            labels = encode_examples(self.processing_class, batch)["labels"]
            self._sft_norm = float(token_weights(labels, value_ids, value_weight).sum())
            self.extra["sft_loss"] = 0.0
        chunk = batch[m * part : (m + 1) * part]
        if not chunk:
            return torch.zeros((), device=self.accelerator.device)
        loss = weighted_nll(*self._forward(model, chunk), value_ids, value_weight, self._sft_norm)
        self.accelerator.backward(loss)
        # The scheduler resets the rate after this step's optimizer.step(): the SFT rate holds
        # for SFT steps only, with the same Adam moments.
        for g in self.optimizer.param_groups:
            g["lr"] = self.args.sft_learning_rate
        self.extra["sft_loss"] += loss.item()
        self.extra["learning_rate"] = self.args.sft_learning_rate  # Trainer logs the scheduler's (RL) rate
        return loss.detach()


class StepLogger(TrainerCallback):
    """Joins TRL's per-step logs with the rollout's diagnostics into one record per step."""

    def __init__(
        self, plan: Plan, source: MultiTurnRollout, extra: dict[str, float], on_step: Callable[[dict[str, Any]], None]
    ):
        self.plan = plan
        self.source = source
        self.extra = extra
        self.on_step = on_step

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[override]
        if not logs or "train_runtime" in logs:
            return
        kind, _, _ = self.plan.phase(state.global_step - 1)
        record: dict[str, Any] = {"phase": kind, "step": state.global_step}
        record.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        if kind == "rl":
            record.update(self.source.last)
            record["rl_step"] = self.source.rl_steps
        record.update(self.extra)
        self.extra.clear()
        self.on_step({k: v for k, v in record.items() if not isinstance(v, float) or math.isfinite(v)})


def use_vllm(rl: RLConfig) -> bool:
    """rl.vllm: true, false, or null for "where it can": vLLM installed and a GPU present."""
    import importlib.util

    installed = importlib.util.find_spec("vllm") is not None
    if rl.vllm and not installed:
        raise ValueError("rl.vllm is true but vllm is not installed (pip install vllm, or set rl.vllm: null)")
    if rl.vllm is not None:
        return rl.vllm
    return torch.cuda.is_available() and installed


def cell_context(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, tasks: list[Task], fmt: Format, seed: int
) -> CellContext:
    """What a cell's hooks share: its RL tasks, their expert pool (seeded by the cell), the token ids
    the supervised losses weight and the control tokens."""
    return CellContext(
        cfg=cfg,
        tokenizer=tokenizer,
        fmt=fmt,
        tasks={t.id: t for t in tasks},
        pool=ExpertPool(tasks, fmt, seed),
        value_ids=torch.tensor(value_token_ids(tokenizer), dtype=torch.long),
        control_ids=torch.tensor(sorted(rollout.control_token_ids(tokenizer).values())),
        seed=seed,
    )


def train(
    model: torch.nn.Module,
    ctx: CellContext,
    signal: Signal,
    scheme: Scheme,
    learning_rate: float,
    on_step: Callable[[dict[str, Any]], None],
    guard: NonFiniteGuard | None = None,
    checkpoints: Checkpoints | None = None,
    resume: Path | None = None,
    resume_state: dict[str, Any] | None = None,
    stop: StopSignals | None = None,
    job_state: Callable[[], dict[str, Any]] = dict,
) -> ToolGRPOTrainer:
    """GRPO for one cell (a scheme's SFT before RL, if any, ran before this), saving to
    `checkpoints` and resuming from the checkpoint `resume`, whose trainer state (its
    `toolrl_state.json`'s "trainer", read by the caller) is `resume_state`; `job_state` adds the
    caller's state to each checkpoint. Raises `Preempted` if `stop` received a signal before the
    last step. Returns the trainer, whose optimizer state tests inspect."""
    cfg = ctx.cfg
    rl = cfg.rl
    signal.setup(ctx)
    source = MultiTurnRollout(ctx, signal, cfg.rollout, rl)
    plan = Plan(scheme.rl_phases(), scheme.sft_steps())
    extra: dict[str, float] = {}
    batch = rl.prompts_per_step * rl.num_generations
    micro = rl.micro_batch_size or batch
    every = checkpoints.every if checkpoints is not None else 0
    with tempfile.TemporaryDirectory(prefix="toolrl-grpo-") as scratch:
        args = ToolGRPOConfig(
            output_dir=str(checkpoints.root) if checkpoints is not None else scratch,
            max_steps=plan.total,
            rl_phases=scheme.rl_phases(),
            sft_steps=scheme.sft_steps(),
            sft_learning_rate=cfg.sft.learning_rate,
            sft_batch_size=cfg.sft.batch_size,
            value_weight=cfg.sft.value_weight,
            per_device_train_batch_size=micro,
            num_generations=rl.num_generations,
            # One optimizer step per RL step: the step's rollouts are generated at once and
            # its gradient accumulated over micro-batches of `rl.micro_batch_size` sequences.
            gradient_accumulation_steps=batch // micro,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            adam_beta1=rl.adam_beta1,
            beta=rl.beta,
            temperature=rl.temperature,
            loss_type=rl.loss_type,
            max_completion_length=cfg.rollout.max_total_tokens,
            use_vllm=use_vllm(rl),
            vllm_mode="colocate",
            # On by default in TRL: the rollout returns vLLM's sampling log-probs (NaN where the
            # tokens came from transformers or were not sampled, which TRL leaves uncorrected).
            vllm_importance_sampling_correction=True,
            logging_steps=1,
            **{
                **models.trainer_defaults(ctx.seed, cfg.model.gradient_checkpointing),
                # ToolGRPOTrainer._save_checkpoint writes them atomically; Checkpoints prunes them.
                "save_strategy": "steps" if every else "no",
                "save_steps": every or None,
            },
        )
        trainer = ToolGRPOTrainer(
            model=model,
            reward_funcs=[success_reward],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": t} for t in ctx.tasks]),
            processing_class=ctx.tokenizer,
            callbacks=[StepLogger(plan, source, extra, on_step)]
            + [c for c in (guard, SaveAndStop(stop if stop is not None else StopSignals())) if c is not None],
            ctx=ctx,
            signal=signal,
            scheme=scheme,
            source=source,
            extra=extra,
            checkpoints=checkpoints,
            job_state=job_state,
        )
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if stop is not None and stop.received and trainer.state.global_step < plan.total:
        saved = "a checkpoint was saved, running the job again resumes from it" if checkpoints else "nothing saved"
        raise Preempted(f"stopped on {stop.received} after step {trainer.state.global_step} of {plan.total}; {saved}")
    return trainer


def plugins_for(cfg: Config, signal: str, scheme: str) -> tuple[Signal, Scheme]:
    """A cell's signal and scheme, instantiated from the registry."""
    return signals()[signal](cfg), schemes()[scheme](cfg)
