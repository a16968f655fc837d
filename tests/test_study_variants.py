"""Study variants on local Ray: a grid over beta x seeds with ASHA, and a multi-objective TPE search.

Trials are tiny and single-worker (they train inside the Tune trial process), so each study takes
seconds after Ray has started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from dssl.study.runner import run_study

pytestmark = pytest.mark.slow


def _tiny_study(name: str, search: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"kind": "synthetic", "n_samples": 2000},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"beta": 0.1, "epochs": 3, "lr": 1.0e-3},
            "step2": {"enabled": True, "lambda": 1.0, "epochs": 1, "lr": 1.0e-3},
        },
        "search": search,
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "eval": {"probe_max_train_samples": 800, "diagnostics_samples": 128},
    }


def _run(tmp_path: Path, study: dict[str, Any]) -> tuple[Any, MlflowClient, list[Any]]:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study["name"])
    children = [
        run
        for run in client.search_runs([experiment.experiment_id], max_results=100)
        if run.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id
    ]
    return outcome, client, children


def test_grid_with_asha(local_ray: None, tmp_path: Path) -> None:
    study = _tiny_study(
        "grid-asha",
        {
            "algorithm": "grid",
            "metric": "probe/shared/y_c",
            "mode": "max",
            "seeds": [0, 1],
            "max_concurrent": 2,
            "scheduler": "asha",
            "asha": {"grace_period": 1, "reduction_factor": 2, "metric": "mi/shared_infonce_lower_bound", "mode": "max"},
            "space": {"step1.beta": {"type": "grid", "values": [0.01, 100.0]}},
        },
    )
    # ASHA compares a step-1 diagnostic, which a trial that reuses a step-1 model never reports.
    study["tracking"] = {"reuse_step1": False}
    outcome, client, children = _run(tmp_path, study)

    assert outcome.trials == 4
    assert outcome.errors == 0
    visited = sorted((float(r.data.params["step1.beta"]), int(r.data.params["seed"])) for r in children)
    assert visited == [(0.01, 0), (0.01, 1), (100.0, 0), (100.0, 1)]

    # ASHA may stop trials early; whatever it decided, no run stays RUNNING, and exactly the
    # trials that reached the final evaluation are FINISHED.
    for run in children:
        status = client.get_run(run.info.run_id).info.status
        evaluated = "probe/shared/y_c" in run.data.metrics
        assert status in ("FINISHED", "KILLED")
        assert (status == "FINISHED") == evaluated


def test_multi_objective_tpe(local_ray: None, tmp_path: Path) -> None:
    study = _tiny_study(
        "multi-objective",
        {
            "algorithm": "tpe",
            "metric": ["probe/shared/y_c", "probe/shared/y_1"],
            "mode": ["max", "min"],
            "num_trials": 2,
            "max_concurrent": 2,
            "space": {
                "step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 10.0},
                "step1.penalty": {"type": "categorical", "choices": ["cosine", "kl"]},
            },
        },
    )
    outcome, client, children = _run(tmp_path, study)

    assert outcome.errors == 0
    assert len(children) == 2
    for run in children:
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
        assert run.data.params["step1.penalty"] in ("cosine", "kl")

    summaries = optuna.get_all_study_summaries(storage=outcome.optuna_storage)
    study_state = optuna.load_study(study_name=summaries[0].study_name, storage=outcome.optuna_storage)
    assert [d.name for d in study_state.directions] == ["MAXIMIZE", "MINIMIZE"]
    completed = [t for t in study_state.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == 2
    assert all(len(t.values) == 2 for t in completed)
