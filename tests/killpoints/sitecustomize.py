"""Kill points for tests/test_resume.py: SIGKILL a sweep's whole process group at a named point.

Python imports `sitecustomize` from sys.path while it starts, and the resume test puts this
folder on PYTHONPATH, so every process of its sweep loads it: Snakemake and each rule's
`python -m toolrl <stage>`. Nothing happens unless TOOLRL_TEST_KILL names a point. The point
is armed only in processes of the stage it names (`python -m toolrl <stage>`), and it
fires once: the first process to reach it creates the marker file TOOLRL_TEST_KILL_MARK
(O_EXCL, so two jobs reaching it together cannot both fire), writes what it saw there, and
kills its process group, which is Snakemake's (the local executor starts jobs in its own group).

Points (production code is not touched; each hook wraps the call it names):
  checkpoint        train:     os.replace of a model folder, i.e. inside toolrl.io.atomic_dir
                               after the checkpoint files are in the temporary folder, before the swap
  mlflow_train      train:     right after the job's first MlflowClient.log_batch (the params):
                               the run exists and is RUNNING, its metrics are not written
  eval_json         evaluate:  os.replace of the first eval/<split>.json, i.e. in toolrl.io.write_bytes
                               after the temporary file is written and synced, before the rename
  mlflow_aggregate  aggregate: right after the first log_batch that carries metrics (the first
                               run's evaluations are in MLflow, the others' are not)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

POINT = os.environ.get("TOOLRL_TEST_KILL", "")
MARK = os.environ.get("TOOLRL_TEST_KILL_MARK", "")
STAGES = {"checkpoint": "train", "mlflow_train": "train", "eval_json": "evaluate", "mlflow_aggregate": "aggregate"}


def _fire(detail: dict[str, Any]) -> None:
    try:
        fd = os.open(MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    os.write(fd, json.dumps({"point": POINT, "pid": os.getpid(), "argv": sys.argv, **detail}).encode())
    os.fsync(fd)
    os.close(fd)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _hook_replace(matches: Callable[[Path, Path], bool]) -> None:
    replace = os.replace

    def killing_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        s, d = Path(src), Path(dst)
        if matches(s, d):
            _fire(
                {
                    "src": str(s),
                    "dst": str(d),
                    "src_listing": sorted(os.listdir(s)) if s.is_dir() else None,
                    "src_bytes": s.stat().st_size if s.is_file() else None,
                    "dst_exists": d.exists(),
                }
            )
        replace(src, dst, *args, **kwargs)

    os.replace = killing_replace


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `patch(module)` once `name` has been imported (here: toolrl.tracking, which pulls in
    mlflow; importing it up front would cost every process of the sweep mlflow's import)."""

    def __init__(self, name: str, patch: Callable[[Any], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _hook_log_batch(fires: Callable[[dict[str, Any]], bool]) -> None:
    def patch(tracking: Any) -> None:
        log_batch = tracking.MlflowClient.log_batch

        def killing_log_batch(self: Any, run_id: str, *args: Any, **kwargs: Any) -> Any:
            result = log_batch(self, run_id, *args, **kwargs)
            if fires(kwargs):
                _fire(
                    {
                        "run_id": run_id,
                        "metrics": len(kwargs.get("metrics") or ()),
                        "params": len(kwargs.get("params") or ()),
                    }
                )
            return result

        tracking.MlflowClient.log_batch = killing_log_batch

    sys.meta_path.insert(0, _AfterImport("toolrl.tracking", patch))


def _stage() -> str | None:
    """The stage of a `python -m toolrl <stage> ...` process (sys.argv is not final yet here)."""
    argv = sys.orig_argv
    for i, arg in enumerate(argv[:-2]):
        if arg == "-m" and argv[i + 1] == "toolrl":
            return argv[i + 2]
    return None


def _arm() -> None:
    if POINT not in STAGES:
        raise SystemExit(f"TOOLRL_TEST_KILL={POINT!r}: not one of {sorted(STAGES)}")
    if not MARK:
        raise SystemExit("TOOLRL_TEST_KILL needs TOOLRL_TEST_KILL_MARK, the marker file")
    if Path(MARK).exists() or _stage() != STAGES[POINT]:
        return
    if POINT == "checkpoint":
        _hook_replace(lambda s, d: d.name == "model" and s.is_dir())
    elif POINT == "eval_json":
        _hook_replace(lambda s, d: d.parent.name == "eval" and d.suffix == ".json" and s.is_file())
    elif POINT == "mlflow_train":
        _hook_log_batch(lambda batch: True)
    else:
        _hook_log_batch(lambda batch: bool(batch.get("metrics")))


if POINT:
    _arm()
