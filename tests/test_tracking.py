"""Real MLflow (sqlite store) round trips for toolrl.tracking, including concurrent writers."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from toolrl.tracking import (
    AUTO_FLUSH_METRICS,
    LiveLog,
    RunLogger,
    TrackingError,
    compare_url,
    default_tracking_uri,
    init_store,
    is_server_uri,
    read_experiment,
    ui_command,
)

EXPERIMENT = "toolrl-test"
WRITERS = 4
STEPS = 50  # two keys per step: 100 metrics per writer
FLUSH_EVERY = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store for the module: creating the schema costs ~6 s, so it is done once."""
    sweep = tmp_path_factory.mktemp("sweep")
    uri = default_tracking_uri(sweep)
    out = sweep / "experiment.json"
    experiment_id = init_store(uri, EXPERIMENT, sweep / "mlruns", out)
    return {"sweep": sweep, "uri": uri, "experiment_id": experiment_id, "out": out}


def test_default_uri_and_ui_command(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert uri.startswith("sqlite:////")
    assert ui_command(uri) == f"mlflow ui --backend-store-uri {uri}"
    assert ui_command("sqlite:////a b/mlflow.db") == "mlflow ui --backend-store-uri 'sqlite:////a b/mlflow.db'"


def test_server_uris_and_the_compare_view() -> None:
    assert is_server_uri("http://127.0.0.1:5000") and is_server_uri("HTTPS://mlflow.example.org/")
    assert not is_server_uri("sqlite:////x/mlflow.db") and not is_server_uri("postgresql://u@db/mlflow")
    assert ui_command("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # a server's UI is its address
    # The UI's route (mlflow 3.x bundle): JSON lists of run ids and experiment ids after the hash.
    assert compare_url("http://h:5000/", "3", ["a1", "b2"]) == (
        "http://h:5000/#/compare-runs?runs=%5B%22a1%22%2C%22b2%22%5D&experiments=%5B%223%22%5D"
    )


def test_init_store_is_idempotent(store: dict[str, Any]) -> None:
    again = store["sweep"] / "again.json"
    assert init_store(store["uri"], EXPERIMENT, store["sweep"] / "mlruns", again) == store["experiment_id"]
    expected = {"tracking_uri": store["uri"], "experiment_id": store["experiment_id"], "experiment_name": EXPERIMENT}
    assert read_experiment(store["out"]) == expected
    assert read_experiment(again) == expected
    assert not list(store["sweep"].glob(".*.tmp"))

    experiment = MlflowClient(store["uri"]).get_experiment(store["experiment_id"])
    assert experiment.name == EXPERIMENT
    assert experiment.artifact_location == (store["sweep"] / "mlruns").resolve().as_uri()


def test_read_experiment_names_the_bad_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(TrackingError, match=r"missing\.json.*setup job"):
        read_experiment(missing)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"tracking_uri": ')
    with pytest.raises(TrackingError, match=r"corrupt\.json"):
        read_experiment(corrupt)
    partial = tmp_path / "partial.json"
    partial.write_text('{"tracking_uri": "sqlite:////x.db"}')
    with pytest.raises(TrackingError, match=r"partial\.json.*experiment_id, experiment_name"):
        read_experiment(partial)


def test_run_logger_round_trip(store: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {"lr": 1e-5, "model": {"name": "qwen", "lora": {"rank": 16}}, "long": "x" * 7000}
    artifact = tmp_path / "notes.txt"
    artifact.write_text("hello")
    with (
        caplog.at_level(logging.WARNING, logger="toolrl.tracking"),
        RunLogger(store["uri"], store["experiment_id"], "train-a", {"signal": "sft"}, params) as run,
    ):
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1), "reward": float(step)}, step=step)
        run.log_metrics({"loss": math.nan, "reward": math.inf, "ok": 3.0}, step=5)
        run.log_artifact(artifact)
    assert "loss=nan" in caplog.text and "reward=inf" in caplog.text
    assert "param long truncated" in caplog.text

    client = MlflowClient(store["uri"])
    got = client.get_run(run.run_id)
    assert got.info.experiment_id == store["experiment_id"]
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "train-a"
    assert got.data.tags["signal"] == "sft"
    assert got.data.params["lr"] == "1e-05"
    assert got.data.params["model.name"] == "qwen"
    assert got.data.params["model.lora.rank"] == "16"
    assert len(got.data.params["long"]) == 6000

    loss = client.get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(s, 1.0 / (s + 1)) for s in range(5)]
    reward = client.get_metric_history(run.run_id, "reward")
    assert sorted(m.step for m in reward) == list(range(5))
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "ok")] == [(5, 3.0)]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["notes.txt"]


def test_auto_flush(store: dict[str, Any]) -> None:
    client = MlflowClient(store["uri"])
    with RunLogger(store["uri"], store["experiment_id"], "auto-flush", {}, {}) as run:
        for step in range(AUTO_FLUSH_METRICS):
            run.log_metrics({"m": float(step)}, step=step)
        assert len(client.get_metric_history(run.run_id, "m")) == AUTO_FLUSH_METRICS
        run.log_metrics({"m": -1.0}, step=AUTO_FLUSH_METRICS)
        assert len(client.get_metric_history(run.run_id, "m")) == AUTO_FLUSH_METRICS
    assert len(client.get_metric_history(run.run_id, "m")) == AUTO_FLUSH_METRICS + 1


def test_failure_marks_new_run_failed(store: dict[str, Any]) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        RunLogger(store["uri"], store["experiment_id"], "crash", {}, {}) as run,
    ):
        run.log_metrics({"loss": 1.0}, step=0)
        raise RuntimeError("boom")
    client = MlflowClient(store["uri"])
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [1.0]


def test_resume_adds_to_the_same_run(store: dict[str, Any]) -> None:
    uri, experiment_id = store["uri"], store["experiment_id"]
    with RunLogger(uri, experiment_id, "train-b", {"stage": "train"}, {"lr": 0.1}) as train:
        train.log_metrics({"loss": 0.5}, step=10)

    eval_params = {"lr": 0.1, "split": "id"}
    with RunLogger(uri, experiment_id, "eval-b", {"eval": "id"}, eval_params, run_id=train.run_id) as ev:
        assert ev.run_id == train.run_id
        ev.log_metrics({"eval/id/accuracy": 0.75}, step=10)
    with (
        pytest.raises(ValueError, match="eval failed"),
        RunLogger(uri, experiment_id, "eval-b", {}, {}, run_id=train.run_id) as ev,
    ):
        ev.log_metrics({"eval/ood/accuracy": 0.25}, step=10)
        raise ValueError("eval failed")

    client = MlflowClient(uri)
    got = client.get_run(train.run_id)
    assert got.info.status == "FINISHED"  # a failing evaluation does not undo the training run
    assert got.data.params == {"lr": "0.1", "split": "id"}
    assert got.data.tags["stage"] == "train" and got.data.tags["eval"] == "id"
    assert got.data.metrics == {"loss": 0.5, "eval/id/accuracy": 0.75, "eval/ood/accuracy": 0.25}
    assert len(client.search_runs([experiment_id], filter_string="attributes.run_name = 'train-b'")) == 1

    with pytest.raises(TrackingError, match="belongs to experiment"):
        RunLogger(uri, "0", "eval-b", {}, {}, run_id=train.run_id)


def _writer(uri: str, experiment_id: str, index: int, barrier: Any) -> None:
    """One spawned job: wait until all are imported, then create a run and log in batches."""
    barrier.wait(timeout=120)
    with RunLogger(uri, experiment_id, f"writer-{index}", {"writer": str(index)}, {"index": index}) as run:
        for step in range(STEPS):
            run.log_metrics({"loss": index + step / 100, "reward": float(step)}, step=step)
            if step % FLUSH_EVERY == FLUSH_EVERY - 1:
                run.flush()


def test_concurrent_writers(store: dict[str, Any]) -> None:
    """The sweep's parallel jobs: runs must land in the experiment (never Default) complete."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [
        ctx.Process(target=_writer, args=(store["uri"], store["experiment_id"], i, barrier)) for i in range(WRITERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=150)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS

    client = MlflowClient(store["uri"])
    assert client.search_runs(["0"]) == []
    runs = client.search_runs([store["experiment_id"]], filter_string="attributes.run_name LIKE 'writer-%'")
    assert sorted(r.info.run_name for r in runs) == sorted(f"writer-{i}" for i in range(WRITERS))
    for run in runs:
        index = int(run.data.tags["writer"])
        assert run.info.status == "FINISHED"
        assert run.data.params == {"index": str(index)}
        loss = client.get_metric_history(run.info.run_id, "loss")
        reward = client.get_metric_history(run.info.run_id, "reward")
        assert sorted((m.step, m.value) for m in loss) == [(s, index + s / 100) for s in range(STEPS)]
        assert sorted((m.step, m.value) for m in reward) == [(s, float(s)) for s in range(STEPS)]


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process: nothing after it runs."""


def test_a_setup_job_killed_while_creating_the_schema_leaves_a_store_its_rerun_can_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow migrates a new sqlite schema step by step, each step's DDL committed before its
    version stamp. Killed between the two, the setup job used to leave a mlflow.db that every
    later open refused ("table ... already exists"), so no rerun could ever recover."""
    from alembic.runtime.migration import HeadMaintainer

    stamp = HeadMaintainer.update_to_step
    steps: list[Any] = []

    def killed_at_step_10(self: Any, step: Any) -> None:
        steps.append(step)
        if len(steps) == 10:
            raise _Killed
        stamp(self, step)

    uri, out = default_tracking_uri(tmp_path), tmp_path / "experiment.json"
    monkeypatch.setattr(HeadMaintainer, "update_to_step", killed_at_step_10)
    with pytest.raises(_Killed):
        init_store(uri, EXPERIMENT, tmp_path / "mlruns", out)
    assert not (tmp_path / "mlflow.db").exists() and list(tmp_path.glob(".mlflow.db.*.tmp"))
    monkeypatch.undo()

    experiment_id = init_store(uri, EXPERIMENT, tmp_path / "mlruns", out)  # the rerun
    assert not list(tmp_path.glob(".mlflow.db.*"))
    with RunLogger(uri, experiment_id, "after", {}, {}) as run:
        run.log_metrics({"m": 1.0}, step=0)
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FINISHED"


def test_a_rerun_job_supersedes_its_killed_attempts(store: dict[str, Any]) -> None:
    """A job killed with SIGKILL leaves its run RUNNING for good. The job's rerun marks it KILLED,
    and so a FINISHED attempt of the same configuration (killed before Snakemake recorded it):
    one FINISHED run per job and configuration, none that looks alive and is not."""
    uri, experiment_id = store["uri"], store["experiment_id"]
    job, tags = "supersede/cell-a", {"stage": "train"}
    client = MlflowClient(uri)

    def status(run: RunLogger) -> str:
        return client.get_run(run.run_id).info.status

    with RunLogger(uri, experiment_id, "a", tags, {"config_hash": "old"}, job=job) as other_config:
        pass
    with pytest.raises(RuntimeError), RunLogger(uri, experiment_id, "a", tags, {"config_hash": "h"}, job=job) as failed:
        raise RuntimeError("out of memory")
    killed = RunLogger(uri, experiment_id, "a", tags, {"config_hash": "h"}, job=job)  # never ends: SIGKILL
    other_job = RunLogger(uri, experiment_id, "b", tags, {"config_hash": "h"}, job="supersede/cell-b")
    killed_tags = client.get_run(killed.run_id).data.tags  # set with the run: an attempt killed at once has them
    assert killed_tags["job"] == job and killed_tags["stage"] == "train"

    with RunLogger(uri, experiment_id, "a", tags, {"config_hash": "h"}, job=job) as rerun:
        pass
    assert status(killed) == "KILLED"
    assert client.get_run(killed.run_id).data.tags["superseded_by"] == rerun.run_id
    assert (status(rerun), status(failed), status(other_config), status(other_job)) == (
        "FINISHED",
        "FAILED",
        "FINISHED",
        "RUNNING",
    )

    # Finished, but Snakemake was killed before it recorded the job: the next attempt supersedes it.
    with RunLogger(uri, experiment_id, "a", tags, {"config_hash": "h"}, job=job) as again:
        pass
    assert (status(rerun), status(again)) == ("KILLED", "FINISHED")
    runs = client.search_runs([experiment_id], filter_string=f"tags.job = '{job}'")
    assert Counter((r.data.params["config_hash"], r.info.status) for r in runs) == Counter(
        {("h", "KILLED"): 2, ("h", "FINISHED"): 1, ("h", "FAILED"): 1, ("old", "FINISHED"): 1}
    )


def test_resuming_again_logs_no_value_twice(store: dict[str, Any]) -> None:
    """The aggregate resumes every training run to log its evaluations; rerun (after a kill, or
    with other statistics settings) it must not add a second point of an unchanged value."""
    uri, experiment_id = store["uri"], store["experiment_id"]
    with RunLogger(uri, experiment_id, "train-c", {}, {}) as train:
        train.log_metrics({"loss": 0.5}, step=3)
    for success in (0.25, 0.25, 0.5):
        with RunLogger(uri, experiment_id, "", {}, {}, run_id=train.run_id) as run:
            run.log_metrics({"id/success": success, "loss": 0.5}, step=0)
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(train.run_id, "loss")] == [(3, 0.5)]
    history = client.get_metric_history(train.run_id, "id/success")
    assert sorted(m.value for m in history) == [0.25, 0.5]


def test_live_log_streams_lines_and_batches_metrics(store: dict[str, Any], tmp_path: Path) -> None:
    """A line per step at once; metrics reach the run every `every_steps` steps or when
    `every_seconds` have passed, whichever comes first; the run is RUNNING meanwhile."""
    now = [0.0]
    client = MlflowClient(store["uri"])
    path = tmp_path / "train_log.jsonl"
    run = RunLogger(store["uri"], store["experiment_id"], "live", {}, {})
    with run, LiveLog(run, path, every_steps=3, every_seconds=60.0, clock=lambda: now[0]) as live:

        def points() -> int:
            return len(client.get_metric_history(run.run_id, "train/reward"))

        for step in range(1, 3):
            live({"phase": "rl", "step": step, "reward": 0.1 * step})
        assert len(path.read_text().splitlines()) == 2 and points() == 0
        live({"phase": "rl", "step": 3, "reward": 0.3})
        assert points() == 3 and client.get_run(run.run_id).info.status == "RUNNING"
        now[0] = 61.0  # a slow step: the time limit sends it alone
        live({"phase": "rl", "step": 4, "reward": 0.4})
        assert points() == 4
    assert [r["step"] for r in live.rows] == [1, 2, 3, 4]
    assert [json.loads(line) for line in path.read_text().splitlines()] == live.rows
    with pytest.raises(ValueError, match="every_steps"):
        LiveLog(run, path, every_steps=0)
