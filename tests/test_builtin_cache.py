"""Built-in datasets cached in the Parquet format: written once, read back unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dssl.data.builtin import materialize
from dssl.data.parquet import read_dataset
from dssl.data.synthetic import make_synthetic
from dssl.study.runner import build_dataset, dataset_manifest
from dssl.study.schema import validate_study

OPTIONS = {"n_samples": 1500, "latent_dim": 3, "x_dim": 6, "seed": 4}


def test_materialize_writes_once(data_cache: Path) -> None:
    first = materialize("synthetic", OPTIONS)
    assert first.parent.parent == data_cache
    stamp = (first.parent / "data.parquet").stat().st_mtime_ns
    second = materialize("synthetic", OPTIONS)
    assert second == first
    assert (first.parent / "data.parquet").stat().st_mtime_ns == stamp
    assert materialize("synthetic", {**OPTIONS, "seed": 5}) != first


def test_cached_dataset_equals_generator() -> None:
    spec = validate_study({"name": "cached", "data": {"kind": "synthetic", **OPTIONS}, "search": {"metric": "probe/shared/y_c", "num_trials": 1}})
    read = build_dataset(spec)
    expected = make_synthetic(**spec.data.model_dump(exclude={"kind"}))
    np.testing.assert_array_equal(read.x1, expected.x1)
    np.testing.assert_array_equal(read.x2, expected.x2)
    np.testing.assert_array_equal(read.latents["z_1"], expected.latents["z_1"])
    np.testing.assert_array_equal(read.labels["y_2"], expected.labels["y_2"])
    np.testing.assert_array_equal(read.train_index, expected.train_index)
    assert read_dataset(dataset_manifest(spec)).n_samples == 1500
