"""A study logs to a real `mlflow server` on 127.0.0.1 through --tracking-uri."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from dssl.study.runner import run_study

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    command = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        # One worker starts faster than uvicorn's default four on a busy 2-core machine.
        "--workers", "1",
    ]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        # Start-up took over 120 s when the machine was loaded by another study, so allow 300 s.
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start; see {tmp_path / 'server.log'}") from None
                time.sleep(1.0)
        yield uri
    finally:
        # The server's own worker processes share its process group.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


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
