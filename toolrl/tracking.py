"""The MLflow layer: one sqlite store per sweep, one run per training job.

Everything goes through `mlflow.MlflowClient` with explicit ids instead of the fluent API,
because the fluent API keeps global state (active experiment, active run) that does not
survive the sweep's parallel jobs. Measured with mlflow 3.17.2 on a sqlite store:

* A fresh sqlite DB migrated by several processes at once fails with `duplicate column name`,
  so `init_store` creates the schema once, in a setup job that runs before all others.
* `mlflow.set_experiment` racing with another process can return without making the
  experiment active, and the next `start_run` then silently lands in "Default" (id 0). So the
  experiment is created once up front, its id is written to a JSON file, and every run is
  created with that `experiment_id` passed explicitly.
* One `log_metric` call costs ~37 ms on sqlite and much more with 8 concurrent writers, so
  `RunLogger` buffers metrics and sends them with `log_batch`.
* The file store refuses to work unless MLFLOW_ALLOW_FILE_STORE=true, hence sqlite URIs; the
  experiment's artifact location is set to an absolute path at creation so artifacts do not
  land wherever the job's working directory happens to be.
* A tracking server (`http://...`, a team's `mlflow server`) keeps its own artifact store: an
  experiment created there gets the server's default location (`mlflow-artifacts:/...`, proxied
  through the server), not a path on the machine that happened to create it.
* MLflow builds a new sqlite schema in many migrations, each committed on its own: a setup job
  killed between two leaves a database that every later open refuses ("table trace_info already
  exists"), so a new sqlite store is built under a temporary name and renamed into place.
* A job killed with SIGKILL never ends its run, which then stays RUNNING for good; its rerun
  finds it by the `job` tag and marks it KILLED (see `RunLogger`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from mlflow import MlflowClient
from mlflow.entities import Experiment, Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.entities.lifecycle_stage import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from toolrl.io import write_json

log = logging.getLogger(__name__)

# A buffer this full is sent at once, so a long job never holds much unlogged data in memory
# and a crash loses at most this many points.
AUTO_FLUSH_METRICS = 500
EXPERIMENT_KEYS = ("tracking_uri", "experiment_id", "experiment_name")
JOB_TAG = "job"
SUPERSEDED_TAG = "superseded_by"
# Statuses of a run whose process may still be writing to it, as far as the store knows.
ALIVE = (RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.SCHEDULED))


class TrackingError(ValueError):
    """A tracking store or experiment file that cannot be used: the message says which."""


def is_server_uri(tracking_uri: str) -> bool:
    """A tracking server reached over HTTP(S), as opposed to a database or path on this machine."""
    return tracking_uri.split(":", 1)[0].lower() in ("http", "https")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(
    backend_store_uri: str, artifacts_destination: Path | None = None, log: Path | None = None, timeout: float = 180
) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (a free port) over a store, for tests and screenshots; yields
    its URL once `/health` answers OK and stops its whole process group on exit, whatever happened.

    Without its job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) the server is one worker
    process, ~0.5 GB and ~9 s to healthy, instead of seven processes and ~2.4 GB (measured, 3.17).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--workers",
        "1",
    ]
    if artifacts_destination is not None:
        cmd += ["--artifacts-destination", str(artifacts_destination)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    sink = log.open("w") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        if log is not None:
            sink.close()

    def tail() -> str:
        return log.read_text()[-3000:] if log is not None else "(no log: pass log=)"

    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise TrackingError(f"mlflow server on {backend_store_uri} exited with {proc.returncode}:\n{tail()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.read().decode().strip() == "OK":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"mlflow server on {backend_store_uri} not healthy after {timeout:.0f} s:\n{tail()}"
                )
            time.sleep(1)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def default_tracking_uri(sweep_dir: Path) -> str:
    """The sweep's own sqlite store, by absolute path so every job (any cwd) opens the same DB."""
    return f"sqlite:///{Path(sweep_dir).resolve().as_posix()}/mlflow.db"


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for other stores and in-memory sqlite."""
    from sqlalchemy.engine import make_url  # a dependency of mlflow's own SQL stores

    if not tracking_uri.lower().startswith("sqlite:"):
        return None
    database = make_url(tracking_uri).database
    return Path(database) if database and database != ":memory:" else None


def _create_sqlite_store(db: Path, artifact_root: str) -> None:
    """Migrate a new store's schema under a temporary name and rename it into place, so the
    store file exists only once it is complete (see the module docstring); a killed attempt's
    temporary file (and its sqlite journal) is removed first. `artifact_root` is where the
    Default experiment would keep artifacts."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f".{db.name}.*.tmp*"):
        stale.unlink()
    # A name of its own: MLflow caches a store's engine by URI for the life of the process.
    fd, name = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    store = SqlAlchemyStore(f"sqlite:///{tmp.resolve().as_posix()}", artifact_root)
    store.engine.dispose()
    os.replace(tmp, db)


def init_store(tracking_uri: str, experiment_name: str, artifact_location: Path, out: Path) -> str:
    """Create the schema and the experiment once, before any parallel job, and record its id.

    `artifact_location` is used for a local store only; on a tracking server the experiment gets
    the server's own artifact store.

    Must run alone: concurrent migrations of a fresh sqlite DB fail, and concurrent
    `set_experiment` calls can leave runs in "Default". A second call (a rerun of the setup
    job) finds the experiment and returns the same id; a concurrent creator is tolerated by
    re-reading the experiment after RESOURCE_ALREADY_EXISTS. The JSON in `out` is written via a
    temp file and `os.replace`, so a job never reads a half-written file.
    """
    location = None if is_server_uri(tracking_uri) else Path(artifact_location).resolve().as_uri()
    db = _sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        _create_sqlite_store(db, Path(artifact_location).resolve().as_uri())
    client = MlflowClient(tracking_uri)  # opening the store creates or migrates the schema
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(experiment_name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
            experiment_id = _check_existing(experiment, location, tracking_uri)
        else:
            log.info("created experiment %r (id %s) in %s", experiment_name, experiment_id, tracking_uri)
    else:
        experiment_id = _check_existing(experiment, location, tracking_uri)

    record = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "experiment_name": experiment_name}
    write_json(Path(out), record)
    return experiment_id


def _check_existing(experiment: Experiment, location: str | None, tracking_uri: str) -> str:
    """Reuse an existing experiment, refusing a deleted one (runs in it would be hidden)."""
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        raise TrackingError(
            f"experiment {experiment.name!r} (id {experiment.experiment_id}) in {tracking_uri} is deleted; "
            f"restore it with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            "or use another experiment name"
        )
    if location is not None and experiment.artifact_location != location:
        log.warning(
            "experiment %r keeps its artifact location %s (not %s): artifacts go there",
            experiment.name,
            experiment.artifact_location,
            location,
        )
    return experiment.experiment_id


def read_experiment(path: Path) -> dict[str, str]:
    """Read the file `init_store` wrote; a job started before the setup job fails clearly here."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrackingError(f"experiment file {path} does not exist: run the tracking setup job first") from None
    except (OSError, ValueError) as exc:
        raise TrackingError(f"experiment file {path} is unreadable or not JSON: {exc}") from exc
    missing = [k for k in EXPERIMENT_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), str)]
    if missing:
        raise TrackingError(f"experiment file {path} lacks string field(s) {', '.join(missing)}")
    return {k: data[k] for k in EXPERIMENT_KEYS}


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store (a server's UI is its own URI)."""
    if is_server_uri(tracking_uri):
        return tracking_uri
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def compare_url(ui_base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The MLflow UI's compare view of `run_ids` (the route `getCompareRunPageRoute` of the UI's
    bundle builds in 3.x: `#/compare-runs?runs=[...]&experiments=[...]`, JSON lists)."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = quote(json.dumps([str(experiment_id)], separators=(",", ":")))
    return f"{ui_base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Nested mappings become dotted keys (`a.b`); values become strings within mlflow's limit.

    Longer values would make mlflow reject the whole batch, so they are truncated with a warning.
    """
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten_params(value, prefix=f"{name}.")
            continue
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            log.warning("param %s truncated from %d to %d characters", name, len(text), MAX_PARAM_VAL_LENGTH)
            text = text[:MAX_PARAM_VAL_LENGTH]
        yield name, text


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RunLogger:
    """One job's MLflow run: created (or resumed) on construction, ended on `__exit__`.

    The run is always created with the explicit `experiment_id` from `init_store`, never the
    active experiment, so a lost `set_experiment` race cannot move it to "Default". Metrics are
    buffered and sent with `log_batch` because per-metric calls are slow on sqlite and slower
    still with concurrent writers.

    `job` names the Snakemake job the run belongs to (a cell's path, "warmup"); it is tagged
    `job` when the run is created, so even an attempt killed before its first write can be
    found. A new run supersedes the job's earlier attempts: a run still RUNNING (its process
    was killed: Snakemake never starts a job while an attempt of it runs), or a FINISHED one
    with the same `config_hash` param (killed after finishing but before Snakemake recorded
    the job, or forced to rerun), is marked KILLED and tagged `superseded_by`. So the
    experiment holds one FINISHED run per job and configuration, and no run looks alive that
    is not. Failed attempts stay FAILED, and runs of another configuration stay as they are.

    With `run_id` an existing run is resumed (the aggregate job adds each model's evaluations to
    its warm-up or training run). A resumed run that is already FINISHED stays FINISHED whatever
    happens here: a failure there is reported by the job that resumed it, it does not undo the
    training run.
    A metric whose latest value in the resumed run already equals the one logged is not sent
    again, so rerunning the job that resumes it (the aggregate, after a kill or a change to
    the statistics) adds no duplicate points.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        run_id: str | None = None,
        job: str | None = None,
    ) -> None:
        experiment_id = str(experiment_id)
        self._client = MlflowClient(tracking_uri)
        self._buffer: list[Metric] = []
        self._latest: dict[str, float] = {}
        self._run_id: str
        if run_id is None:
            tags = {**tags, JOB_TAG: job} if job is not None else tags
            earlier = self._earlier_attempts(experiment_id, job, params) if job is not None else []
            run = self._client.create_run(
                experiment_id, run_name=run_name, tags={str(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}
            )
            for old in earlier:
                self._client.set_tag(old.info.run_id, SUPERSEDED_TAG, run.info.run_id)
                self._client.set_terminated(old.info.run_id, RunStatus.to_string(RunStatus.KILLED))
                log.info(
                    "run %s (%s, %s) of job %s superseded by %s: marked KILLED",
                    old.info.run_id,
                    old.info.run_name,
                    old.info.status,
                    job,
                    run.info.run_id,
                )
            self._keep_status = False
            self._run_id = run.info.run_id
            self._log_params(params)
        else:
            run = self._client.get_run(run_id)
            if run.info.experiment_id != experiment_id:
                raise TrackingError(f"run {run_id} belongs to experiment {run.info.experiment_id}, not {experiment_id}")
            self._keep_status = run.info.status == RunStatus.to_string(RunStatus.FINISHED)
            self._latest = dict(run.data.metrics)
            log.info("resuming run %s (%s, status %s)", run_id, run.info.run_name, run.info.status)
            self._run_id = run.info.run_id
            self._log_params(params)
            self._log_tags(tags)

    def _earlier_attempts(self, experiment_id: str, job: str, params: Mapping[str, Any]) -> list[Run]:
        """The job's runs that a new attempt supersedes (see the class docstring)."""
        config = str(params.get("config_hash"))
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"tags.{JOB_TAG} = '{job}'", run_view_type=ViewType.ACTIVE_ONLY
        )
        finished = RunStatus.to_string(RunStatus.FINISHED)
        return [
            r
            for r in runs
            if r.info.status in ALIVE or (r.info.status == finished and r.data.params.get("config_hash") == config)
        ]

    @property
    def run_id(self) -> str:
        return self._run_id

    def _log_params(self, params: Mapping[str, Any]) -> None:
        # Params are immutable in mlflow: re-logging an equal value on resume is accepted,
        # a different value raises (the run id points at a run with another configuration).
        param_entities = [Param(k, v) for k, v in flatten_params(params)]
        for chunk in _chunks(param_entities, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk, synchronous=True)

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        tag_entities = [RunTag(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(tag_entities, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=chunk, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer `metrics` at `step`; NaN/inf are skipped (with a warning) since they break plots."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            number = float(value)
            if not math.isfinite(number):
                log.warning("run %s: metric %s=%s at step %d is not finite, not logged", self._run_id, key, value, step)
                continue
            if self._latest.get(key) == number:
                continue
            self._buffer.append(Metric(key, number, timestamp, int(step)))
        if len(self._buffer) >= AUTO_FLUSH_METRICS:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics, at most MAX_METRICS_PER_BATCH per `log_batch` call."""
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            self._client.log_batch(self._run_id, metrics=chunk, synchronous=True)
            del self._buffer[: len(chunk)]

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's contents) into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self._run_id, str(path), artifact_path)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.flush()
        except Exception:
            self._end(failed=True)
            if exc_type is None:
                raise
            # Do not mask the job's own exception with the flush error.
            log.exception("run %s: buffered metrics lost while the job was failing", self._run_id)
        else:
            self._end(failed=exc_type is not None)

    def _end(self, failed: bool) -> None:
        if self._keep_status:
            if failed:
                log.warning("run %s stays FINISHED although this job failed", self._run_id)
            return
        status = RunStatus.FAILED if failed else RunStatus.FINISHED
        self._client.set_terminated(self._run_id, RunStatus.to_string(status))


class LiveLog:
    """A train job's per-step records as they happen: each is appended to the job's JSONL log at
    once (a line per step, readable while the job runs) and sent to its MLflow run whenever
    `every_steps` steps have gathered or `every_seconds` have passed since the last send, so a
    job of hours shows its curves in the UI within seconds to a minute of each step, and the
    tracking store is not written per step. `rows` keeps every record for the final, atomic
    write of the same file."""

    def __init__(
        self,
        run: RunLogger,
        path: Path,
        every_steps: int = 10,
        every_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_steps < 1 or every_seconds < 0:
            raise ValueError(f"every_steps must be >= 1 and every_seconds >= 0, got {every_steps}, {every_seconds}")
        self.run, self.path = run, Path(path)
        self.every_steps, self.every_seconds, self._clock = every_steps, every_seconds, clock
        self.rows: list[dict[str, Any]] = []
        self._pending, self._last = 0, clock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")

    def __call__(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        self.run.log_metrics({f"train/{k}": v for k, v in row.items() if k not in ("step", "phase")}, step=row["step"])
        self._pending += 1
        if self._pending >= self.every_steps or self._clock() - self._last >= self.every_seconds:
            self.run.flush()
            self._pending, self._last = 0, self._clock()

    def close(self) -> None:
        """Stop appending (the caller then writes the complete file atomically over it)."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
