"""Step-1 models are trained once per (data, step-1 settings, seed) and reused by step-2 trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from dssl.study.runner import run_study
from dssl.study.schema import validate_study
from dssl.study.step1_cache import STEP1_KEY_TAG, step1_key


def _study(name: str, max_concurrent: int) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"kind": "synthetic", "n_samples": 1500},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"beta": 0.1, "epochs": 2, "lr": 1.0e-3},
            "step2": {"enabled": True, "lambda": 1.0, "epochs": 1, "lr": 1.0e-3},
        },
        "search": {
            "algorithm": "grid",
            "metric": "probe/specific1/y_1",
            "mode": "max",
            "seeds": [0],
            "max_concurrent": max_concurrent,
            "space": {"step2.lambda": {"type": "grid", "values": [0.0, 1.0, 10.0]}},
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "eval": {"probe_max_train_samples": 500, "diagnostics_samples": 128},
    }


def _children(client: MlflowClient, name: str, parent_run_id: str) -> list[Any]:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_run_id]


def _run(tmp_path: Path, study: dict[str, Any]) -> tuple[MlflowClient, list[Any]]:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")
    assert outcome.errors == 0
    client = MlflowClient(tracking_uri=uri)
    return client, _children(client, study["name"], outcome.parent_run_id)


def test_key_ignores_step2_settings() -> None:
    spec = validate_study(_study("keys", 1))
    other_lambda = spec.method.model_copy(update={"step2": spec.method.step2.model_copy(update={"lam": 7.0})})
    other_beta = spec.method.model_copy(update={"step1": spec.method.step1.model_copy(update={"beta": 7.0})})

    assert step1_key(spec, spec.method, 0) == step1_key(spec, other_lambda, 0)
    assert step1_key(spec, spec.method, 0) != step1_key(spec, other_beta, 0)
    assert step1_key(spec, spec.method, 0) != step1_key(spec, spec.method, 1)


def test_key_follows_rewritten_parquet_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from dssl.cli import main

    assert main(["data", "synthetic", "--out", str(tmp_path / "d"), "--n-samples", "1000", "--x-dim", "4", "--latent-dim", "2"]) == 0
    study = _study("keys-parquet", 1)
    study["data"] = {"kind": "parquet", "manifest": str(tmp_path / "d" / "dataset.yaml")}
    spec = validate_study(study)
    before = step1_key(spec, spec.method, 0)
    assert step1_key(spec, spec.method, 0) == before

    # The same path with rewritten rows: the key must change, or a later study would load a
    # step-1 model trained on the old rows.
    assert main(["data", "synthetic", "--out", str(tmp_path / "d"), "--n-samples", "1000", "--x-dim", "4",
                 "--latent-dim", "2", "--seed", "5", "--overwrite"]) == 0  # fmt: skip
    # A file system with coarse timestamps can give a rewrite within the same tick the same
    # modification time, so the test moves it on by 1 ms as any later rewrite would.
    data_file = tmp_path / "d" / "data.parquet"
    stat = data_file.stat()
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert step1_key(spec, spec.method, 0) != before


@pytest.mark.slow
def test_lambda_grid_trains_step1_once(local_ray: None, tmp_path: Path) -> None:
    client, runs = _run(tmp_path, _study("reuse-a", max_concurrent=2))

    assert len(runs) == 3
    producers = [run for run in runs if STEP1_KEY_TAG in run.data.tags]
    assert len(producers) == 1
    producer = producers[0]
    assert "step1/train/loss" in producer.data.metrics
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["step1.run_id"] == producer.info.run_id
        assert "probe/specific1/y_1" in run.data.metrics
    for run in runs:
        if run.info.run_id == producer.info.run_id:
            continue
        # A reusing trial trains only step 2 and records where its step-1 model came from.
        assert "step1/train/loss" not in run.data.metrics
        assert run.data.params["step1.checkpoint_uri"].endswith("checkpoints/step1.pt")
        # Its frozen shared encoders are the producer's, so the shared probes agree exactly.
        assert run.data.metrics["probe/shared/y_c"] == producer.data.metrics["probe/shared/y_c"]

    # A second study with the same step-1 settings trains no step-1 model at all.
    client, second = _run(tmp_path, _study("reuse-b", max_concurrent=1))
    assert len(second) == 3
    for run in second:
        assert run.data.params["step1.run_id"] == producer.info.run_id
        assert "step1/train/loss" not in run.data.metrics
        assert STEP1_KEY_TAG not in run.data.tags
