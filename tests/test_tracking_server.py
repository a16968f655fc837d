"""A study logs to a real `mlflow server` on 127.0.0.1 through --tracking-uri."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow_server import TrackingServer, free_port

from dssl.study.runner import run_study

pytestmark = pytest.mark.slow



@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    server = TrackingServer(tmp_path, free_port())
    try:
        server.start()
        yield server.uri
    finally:
        server.stop()


def test_study_logs_to_server(local_ray: None, tracking_server: str, tmp_path: Path) -> None:
    study = {
        "name": "server-check",
        "data": {"kind": "digits"},
        "method": {"hidden_dim": 32, "embed_dim": 8, "batch_size": 64, "step1": {"epochs": 2, "lr": 1.0e-3}, "step2": {"epochs": 1, "lr": 1.0e-3}},
        "search": {"algorithm": "tpe", "metric": "probe/shared/digit", "num_trials": 1},
        "eval": {"diagnostics_samples": 128},
    }
    path = tmp_path / "server-check.yaml"
    path.write_text(yaml.safe_dump(study))

    outcome = run_study(path, tracking_uri=tracking_server, storage_path=tmp_path / "results")

    assert outcome.errors == 0
    client = MlflowClient(tracking_uri=tracking_server)
    experiment = client.get_experiment_by_name("server-check")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert {run.info.status for run in runs} == {"FINISHED"}
    child = next(run for run in runs if "mlflow.parentRunId" in run.data.tags)
    assert 0.0 <= child.data.metrics["probe/shared/digit"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/step1.pt", "checkpoints/step2.pt"}
    assert not (tmp_path / "mlflow.db").exists()
