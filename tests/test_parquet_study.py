"""Studies on Parquet data: per-worker shard reads, and the digits study with retrieval metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from dssl.data.parquet import read_split, write_paired_dataset
from dssl.data.synthetic import make_synthetic
from dssl.study.runner import run_study
from dssl.train.distributed import DataParallelContext
from dssl.train.worker import _read_worker_view

REPO_ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC = {"n_samples": 3000, "latent_dim": 4, "x_dim": 8, "seed": 1, "test_fraction": 0.2}
RETRIEVAL = [
    f"retrieval/{direction}/{name}"
    for direction in ("x1_to_x2", "x2_to_x1")
    for name in ("top1", "top5", "top10", "mrr")
]


@pytest.fixture(scope="module")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Three files with small row groups, so shards cross files and row groups.
    folder = tmp_path_factory.mktemp("synthetic-parquet")
    return write_paired_dataset(make_synthetic(**SYNTHETIC), folder, rows_per_file=1100, row_group_size=256)


def test_worker_views_disjoint_shards(synthetic_manifest: Path) -> None:
    dataset = make_synthetic(**SYNTHETIC)
    view = {"manifest": str(synthetic_manifest), "test_fraction": 0.2, "seed": 1, "held_out_rows": 300}
    train_index, test_index = read_split(synthetic_manifest, test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(train_index, dataset.train_index)

    views = [_read_worker_view(view, DataParallelContext(rank=rank, world_size=2), seed=7) for rank in (0, 1)]
    shards = [dataset.shard_indices(rank, 2, 7) for rank in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 2 * (dataset.train_index.size // 2)
    for worker, shard in zip(views, shards):
        # The worker keeps its shard and the first held-out rows, and nothing else.
        assert worker.n_samples == shard.size + 300
        np.testing.assert_array_equal(worker.x1[worker.train_index], dataset.x1[shard])
        np.testing.assert_array_equal(worker.x2[worker.train_index], dataset.x2[shard])
        np.testing.assert_array_equal(worker.labels["y_c"][worker.train_index], dataset.labels["y_c"][shard])
        held = test_index[:300]
        np.testing.assert_array_equal(worker.x1[worker.test_index], dataset.x1[held])
        np.testing.assert_array_equal(worker.latents["z_s"][worker.test_index], dataset.latents["z_s"][held])


def _study(tmp_path: Path, data: dict[str, Any], name: str, workers: int) -> Path:
    study = {
        "name": name,
        "data": data,
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 128,
            "step1": {"epochs": 2, "lr": 1.0e-3},
            "step2": {"epochs": 1, "lr": 1.0e-3},
        },
        "search": {"algorithm": "grid", "metric": "probe/shared/y_c", "seeds": [0]},
        "resources": {"num_workers": workers, "cpus_per_worker": 1},
        "eval": {"probe_max_train_samples": 1000, "diagnostics_samples": 256, "mi_every_n_epochs": None},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _only_child(uri: str, experiment: str) -> Any:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 1
    return client, children[0]


@pytest.mark.slow
def test_parquet_two_workers_match_memory(
    local_ray: None, synthetic_manifest: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parquet = _study(tmp_path, {"kind": "parquet", "manifest": str(synthetic_manifest)}, "from-parquet", workers=2)
    built_in = _study(tmp_path, {"kind": "synthetic", **SYNTHETIC}, "from-memory", workers=2)
    for path in (parquet, built_in):
        outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")
        assert (outcome.trials, outcome.errors) == (1, 0)

    client, from_parquet = _only_child(uri, "from-parquet")
    _, from_memory = _only_child(uri, "from-memory")
    for metric in ("step1/train/loss", "step2/train/loss"):
        parquet_history = [m.value for m in client.get_metric_history(from_parquet.info.run_id, metric)]
        memory_history = [m.value for m in client.get_metric_history(from_memory.info.run_id, metric)]
        assert len(parquet_history) == {"step1/train/loss": 2, "step2/train/loss": 1}[metric]
        assert parquet_history == pytest.approx(memory_history, rel=1e-5)
    for metric in ("probe/shared/y_c", *RETRIEVAL):
        assert from_parquet.data.metrics[metric] == pytest.approx(from_memory.data.metrics[metric], abs=1e-6)


@pytest.mark.slow
def test_digits_smoke_study_logs_retrieval(local_ray: None, digits_manifest: Path, tmp_path: Path) -> None:
    study = yaml.safe_load((REPO_ROOT / "studies" / "digits-two-view.yaml").read_text())
    study["name"] = "digits-smoke"
    study["data"]["manifest"] = str(digits_manifest)
    study["method"]["step1"]["epochs"] = 3
    study["method"]["step2"]["epochs"] = 1
    study["search"]["seeds"] = [0]
    study["search"]["grids"][0]["step1.beta"]["values"] = [0.1]
    study["search"]["grids"][0]["step2.lambda"]["values"] = [1.0]
    path = tmp_path / "digits-smoke.yaml"
    path.write_text(yaml.safe_dump(study))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")
    assert (outcome.trials, outcome.errors) == (2, 0)

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("digits-smoke").experiment_id])
    children = {run.data.params["name"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert set(children) == {"disentangled_ssl", "clip"}
    for method, run in children.items():
        metrics = run.data.metrics
        for direction in ("x1_to_x2", "x2_to_x1"):
            top = [metrics[f"retrieval/{direction}/top{k}"] for k in (1, 5, 10)]
            assert top == sorted(top), (method, direction, top)
            # 360 held-out rows: chance top-1 is 1/360; the halves of one image must find each other far above it.
            assert top[0] > 10 / 360, (method, direction, top)
            assert 0.0 < metrics[f"retrieval/{direction}/mrr"] <= 1.0
        assert metrics["probe/shared/digit"] > 0.5, method
    assert "probe/both/digit" in children["disentangled_ssl"].data.metrics
    assert "probe/specific/digit" not in children["clip"].data.metrics
