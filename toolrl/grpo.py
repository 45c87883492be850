"""GRPO on multi-turn tool use: TRL's GRPOTrainer driven by our rollout engine, plus the
supervisory signals and training schemes of the sweep.

TRL's built-in tool loop handles one user turn and needs a stock chat template; our tasks have up
to three user turns, so we plug the batched multi-turn engine in through `rollout_func` and mark
inserted tokens with `env_mask`. Advantages, clipping, KL and the optimizer stay TRL's. The signals
enter where TRL leaves room for them:
- in the rollout function (OPS replaces rollouts by the expert trajectory, HBG samples some with a
  hint that the scored prompt lacks, void_filter zeroes the mask of void trajectories, the ctrl
  clamp masks collapsed patterns while sampling);
- in `compute_loss` (synchronous SFT term, ctrl penalty), and in `training_step`, which runs the
  SFT phases of the interleaved scheme inside the same trainer, so optimizer state and the step
  counter carry over from phase to phase.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from toolrl import model as models, rollout
from toolrl.config import Config, RLConfig, RolloutConfig
from toolrl.diagnostics import STATES, ForbidPatterns, forbid_rules
from toolrl.envs.base import Task
from toolrl.episode import Message
from toolrl.formats import Format
from toolrl.supervision import (ExpertPool, FailureLog, GroupOutcome, control_penalty, encode_examples, hint_text,
                                token_weights, weighted_nll)

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


@dataclass
class SignalSetup:
    """What one cell's signal changes inside the RL step."""

    ops_k: int = 0  # rollouts per group replaced by the expert trajectory
    hbg_k: int = 0  # rollouts per group sampled with a hint
    void_filter: bool = False
    clamp: ForbidPatterns | None = None


def signal_setup(cfg: Config, signal: str, tokenizer: PreTrainedTokenizerBase) -> SignalSetup:
    sig = cfg.signals
    return SignalSetup(
        ops_k=sig.ops.k if signal == "ops" else 0,
        hbg_k=sig.hbg.k if signal == "hbg" else 0,
        void_filter=signal == "void_filter",
        clamp=ForbidPatterns(forbid_rules(tokenizer, cfg.diagnostics.forbid))
        if signal == "ctrl" and sig.ctrl.mode == "clamp" else None,
    )


def vllm_generate(trainer: GRPOTrainer, max_new_tokens: int) -> rollout.Generate | None:
    """TRL's vLLM engine as the rollout's generator, when the trainer runs one (TRL syncs the
    policy's weights into it before calling the rollout_func). It samples at `rl.temperature`;
    its length limit is set to one message's (`rollout.max_new_tokens`), not TRL's whole
    completion's."""
    if not getattr(trainer, "use_vllm", False):
        return None
    trainer.vllm_generation.max_completion_length = max_new_tokens

    def generate(contexts: list[list[int]]) -> list[list[int]]:
        _, completions, _, _ = trainer.vllm_generation.generate(prompts=contexts, images=None, num_generations=1)
        return completions

    return generate


class MultiTurnRollout:
    """A `rollout_func` for GRPOTrainer. Prompts are task ids (TRL passes only the prompt column,
    already repeated `num_generations` times, each group contiguous); each comes back as one
    multi-turn completion. The first `ops_k` (OPS) or `hbg_k` (HBG) members of a group are the
    supervised ones; the on-policy rest alone feed `success`, the diagnostics and ETS."""

    def __init__(self, tasks: list[Task], fmt: Format, tokenizer: PreTrainedTokenizerBase, cfg: RolloutConfig,
                 rl: RLConfig, setup: SignalSetup, seed: int):
        self.tasks = {t.id: t for t in tasks}
        self.fmt = fmt
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.temperature = rl.temperature
        self.n = rl.num_generations
        self.setup = setup
        self.seed = seed
        self.failures = FailureLog()
        self.rl_steps = 0
        self.last: dict[str, float] = {}

    def __call__(self, prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        torch.manual_seed(self.seed * 1_000_003 + trainer.state.global_step)
        model = trainer.accelerator.unwrap_model(trainer.model)
        s = self.setup
        member = [i % self.n for i in range(len(prompts))]
        expert = [m < s.ops_k for m in member]
        hints = [hint_text(self.tasks[p], self.fmt) if m < s.hbg_k else None for p, m in zip(prompts, member)]
        sampled_idx = [i for i, e in enumerate(expert) if not e]
        sampled = rollout.run(model, self.tokenizer, [self.tasks[prompts[i]] for i in sampled_idx], self.fmt,
                              self.cfg, sample=True, temperature=self.temperature,
                              hints=[hints[i] for i in sampled_idx], forbid=s.clamp,
                              generate=None if s.clamp is not None else vllm_generate(trainer, self.cfg.max_new_tokens))
        rs: list[rollout.Rollout] = [None] * len(prompts)  # type: ignore[list-item]
        for i, r in zip(sampled_idx, sampled):
            rs[i] = r
        for i, e in enumerate(expert):
            if e:
                rs[i] = rollout.replay(self.tokenizer, self.tasks[prompts[i]], self.fmt, self.cfg)
                if not rs[i].success:  # truncated: GRPO would push the ground truth down
                    raise ValueError(f"the expert trajectory of task {prompts[i]} does not fit the rollout budget; "
                                     "raise config keys rollout.max_total_tokens / rollout.max_messages")
        self.rl_steps += 1
        self._record(prompts, rs)
        policy = [r for r in rs if r.kind == "policy"]
        self.last = rollout_metrics(policy)
        self.last["success/with_supervised"] = sum(r.success for r in rs) / len(rs)
        masks = [r.env_mask for r in rs]
        if s.void_filter:
            masks = [[0] * len(m) if r.episode.voids else m for r, m in zip(rs, masks)]
            self.last["void_filtered"] = sum(r.episode.voids > 0 for r in rs) / len(rs)
        return {
            "prompt_ids": [r.prompt_ids for r in rs],
            "completion_ids": [r.completion_ids for r in rs],
            "logprobs": None,
            "env_mask": masks,
            "success": [float(r.success) for r in rs],
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


class SFTPhaseData:
    """Builds each interleaved SFT phase's examples when the phase starts: expert trajectories of
    random RL tasks (signal sft), of the tasks that failed recently (ets), plus a reflection on
    each of their failed trajectories (prs)."""

    def __init__(self, signal: str, pool: ExpertPool, source: MultiTurnRollout, window: int, rule: str,
                 judge: Callable[[Task, list[Message]], list[Message]] | None, batch_size: int, steps: int, seed: int):
        self.signal = signal
        self.pool = pool
        self.source = source
        self.window = window
        self.rule = rule
        self.judge = judge
        self.need = batch_size * steps
        self.rng = random.Random(seed)
        self.selected: list[str] = []

    def build(self) -> list[list[Message]]:
        if self.signal == "sft":
            self.selected = []
            return self.pool.sample(self.need)
        if self.signal not in ("ets", "prs"):
            raise ValueError(f"signal '{self.signal}' has no interleaved SFT data (sft, ets, prs do)")
        chosen = self.source.failures.select(self.source.rl_steps, self.window, self.rule)
        self.selected = sorted(chosen)
        examples = [self.pool.messages(self.source.tasks[t]) for t in self.selected]
        if self.signal == "prs" and self.judge is not None:
            examples += [self.judge(self.source.tasks[t], g.failed_messages)
                         for t, g in sorted(chosen.items()) if g.failed_messages]
        if not examples:
            return []
        self.rng.shuffle(examples)  # before the cut, so a surplus drops no task or kind first
        order = [examples[i % len(examples)] for i in range(self.need)]
        self.rng.shuffle(order)
        return order


class ToolGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus the sweep's schemes: an extra loss on expert batches at every RL step
    (synchronous SFT, ctrl penalty), and SFT steps inside the same run (interleaved)."""

    def __init__(self, *args: Any, plan: Plan, extra: dict[str, float], pool: ExpertPool | None = None,
                 sync_weight: float = 0.0, sync_batch: int = 0, penalty: tuple[float, float, int] | None = None,
                 sft_data: SFTPhaseData | None = None, sft_lr: float = 0.0, sft_batch: int = 0,
                 value_ids: list[int] | None = None, value_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.extra = extra
        self.pool = pool
        self.sync_weight = sync_weight
        self.sync_batch = sync_batch
        self.penalty = penalty  # (coef, threshold, batch size)
        self.sft_data = sft_data
        self.sft_lr = sft_lr
        self.sft_batch = sft_batch
        self.value_ids = torch.tensor(sorted(value_ids or []), dtype=torch.long)
        self.value_weight = value_weight
        self.control_ids = torch.tensor(sorted(rollout.control_token_ids(self.processing_class).values()))
        self._phase = -1
        self._examples: list[list[Message]] = []
        self._sft_micro = 0  # micro-steps taken in SFT phases (TRL's own counter drives generation)
        self._sft_norm = 1.0  # the current SFT step's total token weight

    def _forward(self, model: torch.nn.Module, examples: list[list[Message]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of chat examples, labels -100 outside the assistant messages."""
        b = {k: v.to(self.accelerator.device) for k, v in encode_examples(self.processing_class, examples).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        return logits, b["labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        # TRL scales the GRPO loss of each micro-batch by 1/accumulation; each micro-batch draws
        # its share of the extra terms' expert batch, weighted by that share.
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        accum = self.current_gradient_accumulation_steps
        m = self._step % accum  # TRL's micro-step counter, advanced after this call

        def share(n: int) -> int:  # this micro-batch's part of an n-example batch
            return n // accum + (m < n % accum)

        if self.sync_weight > 0 and share(self.sync_batch):
            assert self.pool is not None
            k = share(self.sync_batch)
            sft = weighted_nll(*self._forward(model, self.pool.sample(k)), self.value_ids, self.value_weight)
            loss = loss + self.sync_weight * sft * k / self.sync_batch
            self.extra["sync_sft_loss"] = sft.item()
        if self.penalty is not None and share(self.penalty[2]):
            assert self.pool is not None
            coef, threshold, n = self.penalty
            k = share(n)
            pen = control_penalty(*self._forward(model, self.pool.sample(k)), self.control_ids, threshold)
            loss = loss + coef * pen * k / n
            self.extra["ctrl_penalty"] = pen.item()
        return loss

    def training_step(self, model, inputs, num_items_in_batch):  # type: ignore[override]
        kind, index, within = self.plan.phase(self.state.global_step)
        if kind == "rl":
            return super().training_step(model, inputs, num_items_in_batch)
        assert self.sft_data is not None
        if index != self._phase:
            self._phase, self._examples = index, self.sft_data.build()
            if self.sft_data.signal != "sft":
                self.extra["sft/selected_tasks"] = float(len(self.sft_data.selected))
        self.extra["sft/examples"] = float(len(self._examples))
        model.train()
        if not self._examples:  # nothing failed: the phase leaves the model as it is
            return torch.zeros((), device=self.accelerator.device)
        batch = self._examples[within * self.sft_batch : (within + 1) * self.sft_batch]
        accum = self.current_gradient_accumulation_steps
        part = -(-len(batch) // accum)
        m = self._sft_micro % accum
        self._sft_micro += 1
        if m == 0:
            labels = encode_examples(self.processing_class, batch)["labels"]
            self._sft_norm = float(token_weights(labels, self.value_ids, self.value_weight).sum())
            self.extra["sft_loss"] = 0.0
        chunk = batch[m * part : (m + 1) * part]
        if not chunk:
            return torch.zeros((), device=self.accelerator.device)
        loss = weighted_nll(*self._forward(model, chunk), self.value_ids, self.value_weight, self._sft_norm)
        self.accelerator.backward(loss)
        # The scheduler resets the rate after this step's optimizer.step(): the SFT rate holds
        # for SFT steps only, with the same Adam moments.
        for g in self.optimizer.param_groups:
            g["lr"] = self.sft_lr
        self.extra["sft_loss"] += loss.item()
        self.extra["learning_rate"] = self.sft_lr  # Trainer logs the scheduler's (RL) rate
        return loss.detach()


class StepLogger(TrainerCallback):
    """Joins TRL's per-step logs with the rollout's diagnostics into one record per step."""

    def __init__(self, plan: Plan, source: MultiTurnRollout, extra: dict[str, float],
                 on_step: Callable[[dict[str, Any]], None]):
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


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    fmt: Format,
    cfg: Config,
    signal: str,
    scheme: str,
    learning_rate: float,
    seed: int,
    on_step: Callable[[dict[str, Any]], None],
    value_ids: list[int],
    judge: Callable[[Task, list[Message]], list[Message]] | None = None,
    guard: TrainerCallback | None = None,
) -> ToolGRPOTrainer:
    """GRPO for one cell; `scheme` rl/sequential run RL only here (sequential's SFT came before).
    Returns the trainer, whose optimizer state tests inspect."""
    rl, sig = cfg.rl, cfg.signals
    source = MultiTurnRollout(tasks, fmt, tokenizer, cfg.rollout, rl, signal_setup(cfg, signal, tokenizer), seed)
    il = cfg.schemes.interleaved
    plan = Plan(il.rl_phases, il.sft_steps) if scheme == "interleaved" else Plan([rl.steps])
    pool = ExpertPool(tasks, fmt, seed)
    sft_data = SFTPhaseData(signal, pool, source, sig.ets.window, sig.ets.rule, judge, cfg.sft.batch_size,
                            il.sft_steps, seed) if scheme == "interleaved" else None
    extra: dict[str, float] = {}
    batch = rl.prompts_per_step * rl.num_generations
    micro = rl.micro_batch_size or batch
    with tempfile.TemporaryDirectory(prefix="toolrl-grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch,
            max_steps=plan.total,
            per_device_train_batch_size=micro,
            num_generations=rl.num_generations,
            # One optimizer step per RL step: the step's rollouts are generated at once and
            # its gradient accumulated over micro-batches of `rl.micro_batch_size` sequences.
            gradient_accumulation_steps=batch // micro,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            beta=rl.beta,
            temperature=rl.temperature,
            loss_type=rl.loss_type,
            max_completion_length=cfg.rollout.max_total_tokens,
            use_vllm=use_vllm(rl),
            vllm_mode="colocate",
            # The rollout returns no sampling log-probs (its contexts are re-scored by TRL), so
            # there is nothing to correct the importance weights with.
            vllm_importance_sampling_correction=False,
            logging_steps=1,
            **models.trainer_defaults(seed, cfg.model.gradient_checkpointing),
        )
        trainer = ToolGRPOTrainer(
            model=model,
            reward_funcs=[success_reward],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": t.id} for t in tasks]),
            processing_class=tokenizer,
            rollout_func=source,
            callbacks=[StepLogger(plan, source, extra, on_step)] + ([guard] if guard is not None else []),
            plan=plan,
            extra=extra,
            pool=pool,
            sync_weight=cfg.schemes.synchronous.sft_weight if scheme == "synchronous" else 0.0,
            sync_batch=cfg.schemes.synchronous.batch_size,
            penalty=(sig.ctrl.coef, sig.ctrl.threshold, sig.ctrl.batch_size)
            if signal == "ctrl" and sig.ctrl.mode == "penalty" else None,
            sft_data=sft_data,
            sft_lr=cfg.sft.learning_rate,
            sft_batch=cfg.sft.batch_size,
            value_ids=value_ids,
            value_weight=cfg.sft.value_weight,
        )
        trainer.train()
    return trainer
