"""A tiny sweep logging to a real `mlflow server` on 127.0.0.1, read back through the REST API.

This is the team setup (`mlflow.tracking_uri: http://...`): every training job must be a run of
the sweep's experiment with its cell as params and tags, the aggregate job must add each run's
evaluations, a search on a param must find the cell, and with `mlflow.log_models: true` the model
must reach the server's artifact store (proxied, not a path on the machine that trained it)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import ROOT, run_sweep

from toolrl.tracking import local_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

EXPERIMENT = "toolrl-server-test"
SPLITS = ("id", "format_ood", "content_ood")


def _get(url: str, route: str, **query: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}{route}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}{route}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with a sqlite store and proxied artifacts in a temporary folder. Without
    its job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) it is one worker process, ~0.5 GB
    and ~9 s to healthy instead of seven processes and ~2.4 GB. It runs in its own session, so
    the whole process group is stopped on teardown, whatever the tests did."""
    d = tmp_path_factory.mktemp("mlflow-server")
    with local_server(f"sqlite:///{d / 'mlflow.db'}", d / "artifacts", log=d / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def sweep(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The smoke sweep cut to one seed (two cells: `none` and `ops`), a short warm-up and 8 tasks
    per split, logging to the server. What the model learns does not matter here, only that every
    number reaches the server."""
    work = tmp_path_factory.mktemp("sweep")
    overrides = {
        "sweep": {"name": "server", "seeds": [0]},
        "world": {"n_warmup_tasks": 600, "n_eval_tasks": 8},
        "warmup": {"steps": 60, "echo_steps": 30, "echo_replay_until": 50},
        "mlflow": {"tracking_uri": server, "experiment": EXPERIMENT, "log_models": True},
    }
    (work / "server.yaml").write_text(yaml.safe_dump(overrides))
    d, out = run_sweep(work, ROOT / "config/smoke.yaml", work / "server.yaml", sweep="server")
    experiment_id = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"][
        "experiment_id"
    ]
    return {"url": server, "dir": d, "out": out, "experiment_id": experiment_id}


def _search(sweep: dict[str, Any], filter_: str = "") -> list[dict[str, Any]]:
    # The REST reply omits `runs` altogether when nothing matches.
    body = {"experiment_ids": [sweep["experiment_id"]], "filter": filter_, "max_results": 1000}
    return _post(sweep["url"], "/api/2.0/mlflow/runs/search", body).get("runs", [])


def _flat(entries: list[dict[str, Any]], field: str = "value") -> dict[str, Any]:
    return {e["key"]: e[field] for e in entries}


def test_every_job_is_a_run_of_the_sweeps_experiment(sweep: dict[str, Any]) -> None:
    d = sweep["dir"]
    experiment = _get(sweep["url"], "/api/2.0/mlflow/experiments/get", experiment_id=sweep["experiment_id"])
    # Created by the setup job on the server: artifacts go to the server's store.
    assert experiment["experiment"]["artifact_location"].startswith("mlflow-artifacts:")
    assert json.loads((d / "mlflow" / "experiment.json").read_text())["tracking_uri"] == sweep["url"]

    expected = {json.loads(p.read_text())["mlflow_run_id"] for p in (d / "runs").rglob("run.json")}
    assert len(expected) == 2
    base = json.loads((d / "base" / "warmup.json").read_text())["mlflow_run_id"]
    expected.add(base)
    runs = _search(sweep)
    assert {r["info"]["run_id"] for r in runs} == expected
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    files = _get(sweep["url"], "/api/2.0/mlflow/artifacts/list", run_id=base, path="model")["files"]
    assert "model/model.safetensors" in {f["path"] for f in files}  # log_models: the base model too
    assert "runs" not in _post(sweep["url"], "/api/2.0/mlflow/runs/search", {"experiment_ids": ["0"]})
    assert f"MLflow:  {sweep['url']}\n" in sweep["out"]  # the sweep's closing line: a server's UI is its URI


def test_training_runs_carry_the_cell_and_the_evaluations(sweep: dict[str, Any]) -> None:
    d = sweep["dir"]
    runs = _search(sweep, "tags.stage = 'train'")
    assert len(runs) == 2
    for run in runs:
        params, tags = _flat(run["data"]["params"]), _flat(run["data"]["tags"])
        metrics = _flat(run["data"]["metrics"])
        cell = f"signal={params['signal']}/scheme={params['scheme']}/lr=1e-3/seed={params['seed']}"
        assert tags["cell"] == cell and run["info"]["run_name"] == cell
        assert (params["scheme"], float(params["lr"]), params["seed"]) == ("rl", 1e-3, "0")
        assert tags["sweep"] == "server" and tags["signal"] == params["signal"]
        for split in SPLITS:
            result = json.loads((d / "runs" / cell / "eval" / f"{split}.json").read_text())
            assert metrics[f"{split}/success"] == pytest.approx(result["success_rate"])
            assert f"{split}/format_error_rate" in metrics
        assert {"train/reward", "train/success"} <= set(metrics)

        history = _get(
            sweep["url"], "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"], metric_key="train/reward"
        )["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2, 3]

        # mlflow.log_models: true: the model went through the server's artifact proxy.
        files = _get(sweep["url"], "/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"], path="model")
        assert {"model/config.json", "model/tokenizer.json"} <= {f["path"] for f in files["files"]}


def test_search_by_param_finds_the_cell(sweep: dict[str, Any]) -> None:
    ops = _search(sweep, "params.signal = 'ops'")
    assert [_flat(r["data"]["params"])["signal"] for r in ops] == ["ops"]
    assert {"id/success", "format_ood/success", "content_ood/success"} <= set(_flat(ops[0]["data"]["metrics"]))
    assert _search(sweep, "params.signal = 'sft'") == []
    best = _search(sweep, "tags.stage = 'train' and metrics.`id/success` >= 0")
    assert len(best) == 2
