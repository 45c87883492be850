"""Mid-run checkpoints of a train job, and stopping cleanly on a signal.

A checkpoint is transformers' own (weights, optimizer, scheduler, every RNG state, the trainer's
state), so resuming is `Trainer.train(resume_from_checkpoint=...)` as its authors intend. Three
things are added here because transformers has no notion of them: `toolrl_state.json` (what the
trainer does not know: the rollout's failure log, the scheme's phase, the expert pool's
generator, the train log so far), a fingerprint of the config sections and base model the
checkpoint belongs to (a changed config never resumes from another one's weights), and atomicity:
transformers writes `checkpoint-N` in place, so a job killed while saving would leave a folder
that looks complete; here it is written under a temporary name, synced and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from toolrl.config import Cell, Config, cell_sections, section_hash
from toolrl.io import read_json, write_json

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STATE = "toolrl_state.json"
BEFORE_RL = "before-rl"  # the model after a scheme's SFT that runs before GRPO (sequential)
# SIGURG is the one a Slurm job should be warned with (profiles/slurm): every process between the
# batch script and this one (sh, Snakemake, srun, bash) ignores it by default, where SIGUSR1 would
# kill them, and with them this job. SIGTERM is what a cancel, a preemption or the time limit sends.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)


class Preempted(InterruptedError):
    """The job stopped on a signal after saving a checkpoint; running it again resumes there.
    An InterruptedError, so that the CLI tells it apart without importing this module."""


def fingerprint(cfg: Config, cell: Cell, base: Path) -> str:
    """What a checkpoint must match to be resumed: the cell, the config sections its job reads
    (the train rule's hash), and the base model's files (name, size, modification time: a
    retrained base model is a new file)."""
    files = sorted((p.relative_to(base).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in base.rglob("*"))
    blob = json.dumps([cell.path, section_hash(cfg, *cell_sections(cell.signal, cell.scheme)), files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


@dataclass
class Checkpoints:
    """One job's checkpoint folder: `checkpoint-<step>` folders (transformers' layout plus
    `toolrl_state.json`), at most `keep` of them, and `before-rl`."""

    root: Path
    fingerprint: str
    every: int = 0  # steps between checkpoints; 0: only when a stop signal arrives
    keep: int = 2

    def _complete(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.root.glob(f"{PREFIX}*"):
            step = path.name.removeprefix(PREFIX)
            if step.isdigit() and (path / STATE).is_file():
                found.append((int(step), path))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest checkpoint of this job, or None. Checkpoints of another configuration or
        base model (a config changed since the job was killed) are removed, as are the
        temporary folders of a save that was killed."""
        if not self.root.is_dir():
            return None
        for stale in self.root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        found = self._complete()
        if (self.root / BEFORE_RL / STATE).is_file():
            found.append((-1, self.root / BEFORE_RL))
        for _, path in found:
            if read_json(path / STATE).get("fingerprint") != self.fingerprint:
                log.warning("%s: checkpoints of another config or base model, removed", self.root)
                self.clear()
                return None
        steps = [(s, p) for s, p in found if s >= 0]
        return steps[-1][1] if steps else None

    def state(self, path: Path) -> dict[str, Any]:
        return read_json(path / STATE)

    @contextmanager
    def staging(self, name: str, state: dict[str, Any]) -> Iterator[Path]:
        """A temporary folder to write checkpoint `name` into; on success `state` is added, the
        files are synced and the folder renamed to `root/name`, then old checkpoints pruned."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            yield tmp
            folder = tmp / name
            folder.mkdir(exist_ok=True)
            write_json(folder / STATE, {"fingerprint": self.fingerprint, **state})
            _sync_tree(folder)
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(folder, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for _, old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def before_rl(self) -> Path | None:
        path = self.root / BEFORE_RL
        return path if (path / STATE).is_file() and self.state(path).get("fingerprint") == self.fingerprint else None

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class StopSignals:
    """SIGURG, SIGUSR1 and SIGTERM ask the job to stop: the trainer saves a checkpoint at the end
    of the step it is in and the job exits (`Preempted`). profiles/slurm asks Slurm for SIGURG
    before the time limit; a second SIGTERM kills at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGTERM:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping", self.received)

    def __enter__(self) -> StopSignals:
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class SaveAndStop(TrainerCallback):
    """Turns a received stop signal into transformers' own save-then-stop at the step's end, and
    skips the checkpoint transformers saves after the last step: the job saves its model next,
    and a checkpoint of a finished run would be one to resume with nothing left to train."""

    def __init__(self, stop: StopSignals):
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
        if state.global_step >= state.max_steps:
            control.should_save = False
        elif self.stop.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
