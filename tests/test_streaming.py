"""Streaming training rows through Ray Data (``data.streaming: true``) for datasets larger than memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from dssl.data.parquet import write_paired_dataset
from dssl.data.synthetic import make_synthetic
from dssl.study.runner import run_study
from dssl.study.schema import StudyValidationError, validate_study

SYNTHETIC = {"n_samples": 3000, "latent_dim": 4, "x_dim": 8, "seed": 2, "test_fraction": 0.2}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("streamed")
    return write_paired_dataset(make_synthetic(**SYNTHETIC), folder, rows_per_file=1000, row_group_size=300)


def _study(manifest: Path, **changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "name": "streamed",
        "data": {"kind": "parquet", "manifest": str(manifest), "streaming": True},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 128,
            "step1": {"epochs": 3, "lr": 1.0e-3},
            "step2": {"epochs": 1, "lr": 1.0e-3},
        },
        "search": {"algorithm": "grid", "metric": "probe/shared/y_c", "seeds": [0]},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "eval": {"probe_max_train_samples": 1000, "diagnostics_samples": 256},
    }
    for section, values in changes.items():
        study[section] = {**study[section], **values}
    return study


def test_streaming_needs_probe_sample_size(manifest: Path) -> None:
    study = _study(manifest, eval={"probe_max_train_samples": None})
    with pytest.raises(StudyValidationError, match="eval.probe_max_train_samples: must be set with data.streaming: true"):
        validate_study(study)


def test_streaming_needs_split_column(tmp_path: Path) -> None:
    folder = tmp_path / "no-split"
    write_paired_dataset(make_synthetic(**SYNTHETIC), folder)
    text = (folder / "dataset.yaml").read_text()
    manifest = yaml.safe_load(text)
    del manifest["split"]
    (folder / "dataset.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(StudyValidationError, match="data.streaming: needs a manifest with a split column"):
        validate_study(_study(folder / "dataset.yaml"))


@pytest.mark.slow
def test_training_rows_are_the_train_split(local_ray: None, manifest: Path) -> None:
    from dssl.data.streaming import training_rows

    dataset = make_synthetic(**SYNTHETIC)
    rows = training_rows(manifest).take_all()
    streamed = np.stack([row["x1"] for row in rows])
    assert streamed.shape == (dataset.train_index.size, 8)
    assert streamed.dtype == np.float32
    expected = dataset.x1[dataset.train_index]
    # Ray Data may reorder blocks, so the rows are compared as sorted sets.
    np.testing.assert_array_equal(np.unique(streamed, axis=0), np.unique(expected, axis=0))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_trial_trains(local_ray: None, manifest: Path, tmp_path: Path, workers: int) -> None:
    path = tmp_path / "streamed.yaml"
    path.write_text(yaml.safe_dump(_study(manifest, resources={"num_workers": workers})))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(path, tracking_uri=uri, storage_path=tmp_path / "results")
    assert (outcome.trials, outcome.errors) == (1, 0)

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("streamed").experiment_id])
    child = next(run for run in runs if "mlflow.parentRunId" in run.data.tags)
    losses = [metric.value for metric in client.get_metric_history(child.info.run_id, "step1/train/loss")]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    speeds = client.get_metric_history(child.info.run_id, "step1/samples_per_second")
    assert all(metric.value > 0 for metric in speeds)
    assert child.data.metrics["probe/shared/y_c"] > 0.55
    assert 0.0 < child.data.metrics["retrieval/x1_to_x2/mrr"] <= 1.0


def test_block_features_both_layouts() -> None:
    import pyarrow as pa

    from dssl.data.manifest import ModalityColumns
    from dssl.data.streaming import _features

    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    listed = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 3)})
    prefixed = pa.table({f"x_{i}": values[:, i] for i in range(3)})
    np.testing.assert_array_equal(_features(listed, ModalityColumns(column="x", dim=3)), values)
    np.testing.assert_array_equal(_features(prefixed, ModalityColumns(prefix="x_", dim=3)), values)
    assert _features(prefixed, ModalityColumns(prefix="x_", dim=3)).dtype == np.float32
