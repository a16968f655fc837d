"""``dssl run`` against a real `mlflow server` on 127.0.0.1 that is missing, or stops mid-study.

Each test starts and stops its own server and runs the study as a subprocess with the
environment's ``dssl`` command, so the study starts its own local Ray.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_server import TrackingServer, free_port

from dssl.study.tracking import ERROR_TAG, LOGGED_EPOCH_TAG

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# Tune's controller logs this line when a trial's task raised.
TRIAL_FAILED_LINE = re.compile(r"Trial task failed for trial (\S+)")


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[TrackingServer]:
    server = TrackingServer(tmp_path, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _write_study(folder: Path, name: str, step1_epochs: int, step2_epochs: int) -> Path:
    """Write a digits study of 3 TPE trials, one at a time, that are never restarted."""
    study = {
        "name": name,
        "data": {"kind": "digits"},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"epochs": step1_epochs, "lr": 1.0e-3},
            "step2": {"epochs": step2_epochs, "lr": 1.0e-3},
        },
        "search": {
            "algorithm": "tpe",
            "metric": "probe/shared/digit",
            "num_trials": 2,
            "max_concurrent": 1,
            "space": {"step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 1.0}},
        },
        "resources": {"max_failures": 0},
        "eval": {"diagnostics_samples": 128, "mi_every_n_epochs": None},
        "tracking": {"reuse_step1": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _study_env() -> dict[str, str]:
    """Return the environment of a ``dssl run`` subprocess: this one, without a tracking URI or Ray address."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DSSL_STORAGE_PATH"):
        env.pop(name, None)
    return env


def test_unreachable_server_fails_fast(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    study = _write_study(tmp_path, "outage-at-start", step1_epochs=1, step2_epochs=1)
    storage = tmp_path / "results"
    started = time.monotonic()

    result = subprocess.run(
        [str(BIN / "dssl"), "run", str(study), "--tracking-uri", uri, "--storage-path", str(storage)],
        cwd=tmp_path,
        env=_study_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 2, result.stderr
    # The /health check waits at most 5 s; the rest is Python start-up and imports.
    assert elapsed < 30.0
    assert uri in result.stderr
    assert "refused the connection" in result.stderr
    assert "Traceback" not in result.stderr
    assert not storage.exists()
    assert not (tmp_path / "mlflow.db").exists()


def _output_tail(path: Path, characters: int = 4000) -> str:
    return path.read_text(errors="replace")[-characters:]


def _wait_for(
    condition: Any, timeout_s: float, description: str, process: subprocess.Popen[bytes], output: Path
) -> Any:
    """Poll ``condition()`` every 0.5 s and return its first true value.

    The test fails after ``timeout_s``, or when the study process exits first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            tail = _output_tail(output)
            pytest.fail(f"the study exited with {process.returncode} while waiting for {description}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {description}:\n{_output_tail(output)}")
        time.sleep(0.5)


def _first_trial_logging(client: MlflowClient, experiment_name: str) -> Run | None:
    """Return the child run that has logged at least one epoch, or ``None`` before there is one."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    for run in client.search_runs([experiment.experiment_id]):
        if "mlflow.parentRunId" in run.data.tags and int(run.data.tags.get(LOGGED_EPOCH_TAG, "0")) >= 1:
            return run
    return None


# The runner's retry defaults (4 retries, backoff factor 1, dssl.study.runner._MLFLOW_RETRY_DEFAULTS)
# give each MLflow call about 15-20 s before it fails. The failing trial makes two such calls (its
# next epoch's metrics, then its FAILED status), and the study driver two more before the next
# trial starts (closing the run, reading the failure reason for Optuna). The second pair gives the
# restarted server about 30 s to come up, so the test keeps the defaults.
# An epoch of this study took 0.05-0.1 s on a 2-core CPU, so a trial of 240 epochs lasts about
# 20 s and is still training when the server stops after its first epoch.
STEP1_EPOCHS = 160
STEP2_EPOCHS = 80


@pytest.mark.timeout(900)
def test_server_outage_mid_study(tracking_server: TrackingServer, tmp_path: Path) -> None:
    name = "outage-mid-study"
    study = _write_study(tmp_path, name, STEP1_EPOCHS, STEP2_EPOCHS)
    output = tmp_path / "study-output.log"
    command = [
        str(BIN / "dssl"), "run", str(study),
        "--tracking-uri", tracking_server.uri,
        "--storage-path", str(tmp_path / "results"),
    ]  # fmt: skip
    client = MlflowClient(tracking_uri=tracking_server.uri)

    with open(output, "w") as log:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=_study_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            first = _wait_for(
                lambda: _first_trial_logging(client, name), 300, "the first trial's first epoch", process, output
            )
            tracking_server.stop()
            stopped = time.monotonic()

            failed_trial = _wait_for(
                lambda: TRIAL_FAILED_LINE.search(output.read_text(errors="replace")),
                180,
                "Tune to report the first trial as failed",
                process,
                output,
            )
            seconds_to_failure = time.monotonic() - stopped
            tracking_server.start()

            process.wait(timeout=600)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=60)

    text = output.read_text(errors="replace")
    # The trial gave up after its bounded retries, not at the test's timeout.
    assert seconds_to_failure < 120.0, f"{seconds_to_failure:.0f} s\n{text[-4000:]}"
    assert process.returncode == 1, text[-4000:]
    assert "2 trials, 1 failed" in text

    # MLflow: the trial that lost the server is FAILED with its error; the later one FINISHED.
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.info.run_id: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["trials/failed"] == 1.0
    assert len(children) == 2

    lost = children.pop(first.info.run_id)
    assert failed_trial.group(1).endswith(lost.data.tags["dssl.trial_id"])
    assert lost.info.status == "FAILED"
    assert lost.data.tags.get(ERROR_TAG), lost.data.tags
    assert int(lost.data.tags[LOGGED_EPOCH_TAG]) < STEP1_EPOCHS + STEP2_EPOCHS
    assert "probe/shared/digit" not in lost.data.metrics
    for run in children.values():
        assert run.info.status == "FINISHED", run.data.tags.get(ERROR_TAG)
        assert 0.0 <= run.data.metrics["probe/shared/digit"] <= 1.0
        history = client.get_metric_history(run.info.run_id, "step1/train/loss")
        assert sorted(point.step for point in history) == list(range(1, STEP1_EPOCHS + 1))

    # Optuna: the lost trial is FAIL with a reason, the later one COMPLETE.
    storage = f"sqlite:///{next((tmp_path / 'results').glob(f'{name}-*')) / 'optuna.db'}"
    trials = optuna.load_study(study_name=parents[0].info.run_name, storage=storage).trials
    states = sorted(trial.state.name for trial in trials)
    assert states == ["COMPLETE", "FAIL"]
    failed = next(trial for trial in trials if trial.state == optuna.trial.TrialState.FAIL)
    assert failed.user_attrs.get("fail_reason")
