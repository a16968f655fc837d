"""End to end: the smoke study on local Ray, with a real MLflow SQLite store and real Optuna.

The study runs once per test module (2 TPE trials x 2 Ray Train workers). The tests below read
what it left in MLflow, Optuna and the Tune results folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from dssl.study.runner import StudyOutcome, run_study
from dssl.study.schema import load_study

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parent.parent / "studies" / "smoke.yaml"
LABELS = ("y_c", "y_1", "y_2")
REPRESENTATIONS = ("shared", "specific1", "specific2", "specific", "both")


@dataclasses.dataclass
class SmokeRun:
    outcome: StudyOutcome
    client: MlflowClient
    parent: object
    children: list


@pytest.fixture(scope="module")
def smoke_run(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    folder = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    outcome = run_study(SMOKE, tracking_uri=uri, storage_path=folder / "results")

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert len(parents) == 1
    return SmokeRun(outcome=outcome, client=client, parent=parents[0], children=children)


def test_study_outcome(smoke_run: SmokeRun) -> None:
    assert smoke_run.outcome.trials == 2
    assert smoke_run.outcome.errors == 0
    assert smoke_run.outcome.best_config is not None
    assert set(smoke_run.outcome.best_config) == {"step1.beta", "seed"}


def test_one_parent_two_children(smoke_run: SmokeRun) -> None:
    assert smoke_run.parent.info.run_id == smoke_run.outcome.parent_run_id
    assert len(smoke_run.children) == 2
    trial_ids = {run.data.tags["dssl.trial_id"] for run in smoke_run.children}
    assert len(trial_ids) == 2


def test_runs_finished(smoke_run: SmokeRun) -> None:
    assert smoke_run.parent.info.status == "FINISHED"
    for run in smoke_run.children:
        final = smoke_run.client.get_run(run.info.run_id)
        assert final.info.status == "FINISHED", final.data.tags.get("dssl.error")


def test_flattened_params(smoke_run: SmokeRun) -> None:
    for run in smoke_run.children:
        params = run.data.params
        assert 1e-3 <= float(params["step1.beta"]) <= 10.0
        assert params["step1.penalty"] == "cosine"
        assert params["step2.lambda"] == "1.0"
        assert params["embed_dim"] == "16"
        assert params["resources.num_workers"] == "2"
        assert params["seed"] == "0"


def test_every_epoch_logged(smoke_run: SmokeRun) -> None:
    expected = {
        "step1/train/loss": [1, 2],
        "step1/train/infonce": [1, 2],
        "step1/train/cmi_penalty": [1, 2],
        "mi/shared_infonce_lower_bound": [1, 2],
        "mi/cmi_upper_bound_kl": [1, 2],
        "step2/train/loss": [3, 4],
        "step2/train/overlap": [3, 4],
        "mi/specific1_infonce_lower_bound": [3, 4],
    }
    for run in smoke_run.children:
        for metric, steps in expected.items():
            history = smoke_run.client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == steps, metric


def test_diagnostics_in_range(smoke_run: SmokeRun) -> None:
    log_batch = 4.852  # log(128), the study's global batch size
    for run in smoke_run.children:
        history = smoke_run.client.get_metric_history(run.info.run_id, "mi/shared_infonce_lower_bound")
        for point in history:
            assert -1.0 < point.value <= log_batch + 1e-6
        kl = smoke_run.client.get_metric_history(run.info.run_id, "mi/cmi_upper_bound_kl")
        assert all(point.value >= 0.0 for point in kl)


def test_probe_accuracies(smoke_run: SmokeRun) -> None:
    for run in smoke_run.children:
        metrics = run.data.metrics
        for representation in REPRESENTATIONS:
            for label in LABELS:
                value = metrics[f"probe/{representation}/{label}"]
                assert 0.0 <= value <= 1.0
        # 2 epochs on 3,200 rows already carry shared information; chance is 0.5.
        assert metrics["probe/shared/y_c"] > 0.56


def test_artifacts_logged(smoke_run: SmokeRun) -> None:
    parent_files = {a.path for a in smoke_run.client.list_artifacts(smoke_run.parent.info.run_id)}
    assert "study.yaml" in parent_files
    for run in smoke_run.children:
        files = {a.path for a in smoke_run.client.list_artifacts(run.info.run_id, "checkpoints")}
        assert files == {"checkpoints/step1.pt", "checkpoints/step2.pt"}


def test_resolved_study_artifact(smoke_run: SmokeRun, tmp_path: Path) -> None:
    local = smoke_run.client.download_artifacts(smoke_run.parent.info.run_id, "study.yaml", str(tmp_path))
    resolved = load_study(local)
    assert resolved == load_study(SMOKE)


def test_optuna_study_stored(smoke_run: SmokeRun) -> None:
    summaries = optuna.get_all_study_summaries(storage=smoke_run.outcome.optuna_storage)
    assert len(summaries) == 1
    study = optuna.load_study(study_name=summaries[0].study_name, storage=smoke_run.outcome.optuna_storage)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == 2
    assert all(0.0 <= t.value <= 1.0 for t in completed)
    assert {"step1.beta", "seed"} <= set(completed[0].params)
