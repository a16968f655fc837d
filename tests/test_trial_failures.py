"""Failed trials on local Ray: a diverging loss, and many trials writing to one SQLite store at once.

Each study runs on the session's local Ray (fixture ``local_ray``) with a real SQLite MLflow store
and a real Optuna database in ``tmp_path``. A step-2 learning rate of 1e30 makes the step-2 loss
NaN at its first epoch (epoch 4 with 3 step-1 epochs), while step 1 trains normally, so the
diverging trial has logged epochs 1-3 before it fails.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from ray import tune

from dssl.study.runner import StudyOutcome, run_study
from dssl.study.tracking import ERROR_KIND_TAG, ERROR_TAG, LOGGED_EPOCH_TAG, TRIAL_ID_TAG

pytestmark = pytest.mark.slow

METRIC = "probe/shared/digit"
GOOD_LR = 1.0e-3
DIVERGING_LR = 1.0e30
STEP1_EPOCHS = 3
STEP2_EPOCHS = 2
LOCK_MESSAGE = "database is locked"
# With one worker the loop checks the loss terms in the order the method returns them, and with
# several in name order (after averaging them over the workers), so it names 'loss' or 'infonce1'.
NON_FINITE_STEP2 = re.compile(r"NonFiniteLossError: step2 epoch 4: training term '[\w/]+' is (nan|inf|-inf)")


def _write_study(
    folder: Path, name: str, search: dict[str, Any], resources: dict[str, Any], step1_epochs: int, step2_epochs: int
) -> Path:
    """Write a tiny digits study to ``folder/<name>.yaml`` and return its path."""
    study = {
        "name": name,
        "data": {"kind": "digits"},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"epochs": step1_epochs, "lr": GOOD_LR},
            "step2": {"epochs": step2_epochs, "lr": GOOD_LR},
        },
        "search": {"metric": METRIC, **search},
        "resources": resources,
        "eval": {"diagnostics_samples": 128, "mi_every_n_epochs": None},
        # Every trial trains its own step 1, so the epoch checks below see every step-1 epoch.
        "tracking": {"reuse_step1": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _diverging_grid(tmp_path: Path, name: str, resources: dict[str, Any], max_concurrent: int) -> Path:
    """Write a grid of two trials over ``step2.lr``: one normal, one whose step-2 loss becomes NaN."""
    search = {
        "algorithm": "grid",
        "max_concurrent": max_concurrent,
        "space": {"step2.lr": {"type": "grid", "values": [GOOD_LR, DIVERGING_LR]}},
    }
    return _write_study(tmp_path, name, search, resources, STEP1_EPOCHS, STEP2_EPOCHS)


def _child_runs(client: MlflowClient, outcome: StudyOutcome) -> list[Run]:
    experiment = client.get_experiment_by_name(outcome.experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]


def _metric_steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, metric))


def _result_grid(outcome: StudyOutcome) -> tune.ResultGrid:
    """Load the study's Tune results from its folder, as ``Tuner.fit`` returned them."""
    return tune.ResultGrid(tune.ExperimentAnalysis(outcome.results_path))


def _optuna_trials(outcome: StudyOutcome) -> list[optuna.trial.FrozenTrial]:
    assert outcome.optuna_storage is not None
    study = optuna.load_study(study_name=outcome.run_name, storage=outcome.optuna_storage)
    return study.trials


def _check_diverging_study(outcome: StudyOutcome, uri: str) -> None:
    """Check every record of a study whose step-2 lr grid contains one good and one diverging trial."""
    assert outcome.trials == 2
    assert outcome.errors == 1

    # Tune: one trial failed, and its error names the non-finite loss.
    results = _result_grid(outcome)
    errors = [result.error for result in results if result.error is not None]
    assert len(errors) == 1
    # After a restart the error is TrialFailedBeforeError, whose message quotes the first error.
    last_line = [line for line in str(errors[0]).splitlines() if line.strip()][-1]
    assert NON_FINITE_STEP2.search(last_line), last_line
    finished = [result for result in results if result.error is None]
    assert len(finished) == 1
    assert finished[0].config["step2.lr"] == GOOD_LR

    # Optuna: the diverging trial is FAIL with the reason from MLflow, the other is COMPLETE.
    trials = _optuna_trials(outcome)
    failed = [trial for trial in trials if trial.state == optuna.trial.TrialState.FAIL]
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 1, [trial.state for trial in trials]
    assert len(complete) == 1, [trial.state for trial in trials]
    assert failed[0].params["step2.lr"] == DIVERGING_LR
    reason = failed[0].user_attrs.get("fail_reason", "")
    assert NON_FINITE_STEP2.match(reason), reason
    assert math.isfinite(complete[0].value)

    # MLflow: the diverging run is FAILED with the error of the trial's own code.
    client = MlflowClient(tracking_uri=uri)
    children = {float(run.data.params["step2.lr"]): run for run in _child_runs(client, outcome)}
    assert set(children) == {GOOD_LR, DIVERGING_LR}
    bad = children[DIVERGING_LR]
    good = children[GOOD_LR]
    assert bad.info.status == "FAILED"
    assert NON_FINITE_STEP2.match(bad.data.tags[ERROR_TAG]), bad.data.tags[ERROR_TAG]
    assert bad.data.tags[ERROR_KIND_TAG] == "trial"
    assert good.info.status == "FINISHED", good.data.tags.get(ERROR_TAG)
    assert ERROR_TAG not in good.data.tags

    # Not retrained: Tune may restart the trial (max_failures), but a restart raises
    # TrialFailedBeforeError before training, so each epoch is logged once and step 2 never.
    assert bad.data.tags[LOGGED_EPOCH_TAG] == str(STEP1_EPOCHS)
    for metric in ("step1/train/loss", "step1/lr", "epoch"):
        assert _metric_steps(client, bad.info.run_id, metric) == [1, 2, 3], metric
    assert _metric_steps(client, bad.info.run_id, "step2/train/loss") == []
    assert METRIC not in bad.data.metrics
    assert _metric_steps(client, good.info.run_id, "step2/train/loss") == [4, 5]

    # The study finished, and its best result is the good trial's.
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials/failed"] == 1.0
    best = parent.data.metrics[f"best/{METRIC}"]
    assert math.isfinite(best)
    assert best == pytest.approx(good.data.metrics[METRIC])
    assert outcome.best_config is not None
    assert outcome.best_config["step2.lr"] == GOOD_LR
    assert outcome.best_metrics is not None
    assert outcome.best_metrics[METRIC] == pytest.approx(good.data.metrics[METRIC])
    assert all(math.isfinite(value) for value in outcome.best_metrics.values())


def test_non_finite_loss_fails_trial(local_ray: None, tmp_path: Path) -> None:
    path = _diverging_grid(tmp_path, "diverge-one-worker", {"max_failures": 2}, max_concurrent=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")

    _check_diverging_study(outcome, uri)


def test_non_finite_loss_two_workers(local_ray: None, tmp_path: Path) -> None:
    # Half a CPU per worker lets both trials' worker groups run at once on 2 CPUs. The restarts
    # that max_failures allows are checked with one worker; here the error must reach the driver.
    resources = {"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 0}
    path = _diverging_grid(tmp_path, "diverge-two-workers", resources, max_concurrent=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")

    _check_diverging_study(outcome, uri)
    client = MlflowClient(tracking_uri=uri)
    for run in _child_runs(client, outcome):
        assert run.data.params["resources.num_workers"] == "2"


def _max_open_runs(runs: list[Run]) -> int:
    """Return the largest number of ``runs`` that were open (started, not yet ended) at one moment."""
    events = sorted([(run.info.start_time, 1) for run in runs] + [(run.info.end_time, -1) for run in runs])
    open_runs, largest = 0, 0
    for _, change in events:
        open_runs += change
        largest = max(largest, open_runs)
    return largest


def _files_containing(folder: Path, text: str, modified_after: float = 0.0) -> list[Path]:
    """Return the files under ``folder``, modified after ``modified_after``, whose bytes contain ``text``."""
    needle = text.encode()
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime >= modified_after and needle in path.read_bytes():
                found.append(path)
        except OSError:
            # Ray removes some session files (sockets, temporary logs) while this scan runs.
            continue
    return found


def test_eight_trials_share_sqlite_store(local_ray: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    betas = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    search = {
        "algorithm": "grid",
        "max_concurrent": 8,
        "space": {"step1.beta": {"type": "grid", "values": betas}},
    }
    # 8 trials x 0.25 CPU fill the fixture's 2 CPUs, so all 8 start at once.
    resources = {"cpus_per_worker": 0.25, "max_failures": 0}
    path = _write_study(tmp_path, "eight-at-once", search, resources, step1_epochs=3, step2_epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.time()

    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")

    errors = [str(result.error) for result in _result_grid(outcome) if result.error is not None]
    assert errors == []
    assert outcome.errors == 0
    assert outcome.trials == 8

    client = MlflowClient(tracking_uri=uri)
    children = _child_runs(client, outcome)
    assert len(children) == 8
    assert sorted(float(run.data.params["step1.beta"]) for run in children) == betas
    # Tune starts the 8 trial processes together, but their start-up on 2 cores spreads the runs'
    # start times over about 9 s, so only most of them are open at the busiest moment.
    assert _max_open_runs(children) >= 6
    per_epoch = {
        "step1/train/loss": [1, 2, 3],
        "step1/train/cmi_penalty": [1, 2, 3],
        "step1/lr": [1, 2, 3],
        "step2/train/loss": [4, 5],
        "step2/train/overlap": [4, 5],
        "epoch": [1, 2, 3, 4, 5],
    }
    final = {METRIC: [5], "probe/both/digit": [5], "time/trial_seconds": [5]}
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get(ERROR_TAG)
        trial = run.data.tags[TRIAL_ID_TAG]
        for metric, steps in {**per_epoch, **final}.items():
            assert _metric_steps(client, run.info.run_id, metric) == steps, (trial, metric)

    # Optuna's SQLite database took all 8 results.
    complete = [t for t in _optuna_trials(outcome) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8

    # No lock error anywhere: the driver's log records, the study folder and Ray's session logs
    # (which hold the output of every trial process).
    assert not [record for record in caplog.records if LOCK_MESSAGE in record.getMessage()]
    assert _files_containing(Path(outcome.results_path), LOCK_MESSAGE) == []
    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert _files_containing(session_logs, LOCK_MESSAGE, modified_after=started) == []
