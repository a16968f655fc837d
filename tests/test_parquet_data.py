"""Tests of the Parquet dataset format: manifest loading, writing, validation and reads."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from dssl.data.dataset import PairedDataset
from dssl.data.digits import make_digits_two_view
from dssl.data.manifest import DatasetManifest, load_manifest
from dssl.data.parquet import (
    MAX_PROBLEMS_PER_KIND,
    DatasetProblem,
    DatasetValidationError,
    read_dataset,
    read_rows,
    read_split,
    validate_dataset,
    write_paired_dataset,
)
from dssl.data.synthetic import make_synthetic


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _small_dataset(n_rows: int = 41, n_test: int = 10) -> PairedDataset:
    rng = np.random.default_rng(7)
    test_index = np.sort(rng.choice(n_rows, size=n_test, replace=False)).astype(np.int64)
    train_index = np.setdiff1d(np.arange(n_rows), test_index).astype(np.int64)
    return PairedDataset(
        x1=rng.standard_normal((n_rows, 3)).astype(np.float32),
        x2=rng.standard_normal((n_rows, 5)).astype(np.float32),
        labels={"y": rng.integers(0, 3, n_rows).astype(np.int64), "parity": (np.arange(n_rows) % 2).astype(np.int64)},
        latents={"z": rng.standard_normal((n_rows, 2)).astype(np.float32)},
        train_index=train_index,
        test_index=test_index,
        name="small",
    )


def _assert_same_dataset(read: PairedDataset, original: PairedDataset) -> None:
    assert read.name == original.name
    assert read.x1.dtype == np.float32
    assert read.x2.dtype == np.float32
    assert np.array_equal(read.x1, original.x1)
    assert np.array_equal(read.x2, original.x2)
    assert list(read.labels) == list(original.labels)
    for name, label in original.labels.items():
        assert read.labels[name].dtype == np.int64
        assert np.array_equal(read.labels[name], label)
    assert list(read.latents) == list(original.latents)
    for name, latent in original.latents.items():
        assert np.array_equal(read.latents[name], latent)
    assert np.array_equal(read.train_index, original.train_index)
    assert np.array_equal(read.test_index, original.test_index)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["list", "columns"])
@pytest.mark.parametrize("rows_per_file", [None, 15])
def test_round_trip_bit_exact(tmp_path: Path, layout: str, rows_per_file: int | None) -> None:
    original = _small_dataset()
    manifest_path = write_paired_dataset(
        original, tmp_path, layout=layout, rows_per_file=rows_per_file, row_group_size=4
    )

    manifest = load_manifest(manifest_path)
    expected_files = ["data.parquet"] if rows_per_file is None else [f"data-0000{k}.parquet" for k in range(3)]
    assert manifest.files == expected_files
    assert manifest.x1.layout == layout
    assert [pq.ParquetFile(tmp_path / name).metadata.num_rows for name in expected_files] == (
        [41] if rows_per_file is None else [15, 15, 11]
    )

    read = read_dataset(manifest_path)
    _assert_same_dataset(read, original)
    assert torch.equal(torch.as_tensor(read.x1), torch.tensor(original.x1))
    assert torch.equal(torch.as_tensor(read.x2), torch.tensor(original.x2))
    assert torch.equal(torch.as_tensor(read.labels["y"]), torch.tensor(original.labels["y"]))


def test_round_trip_generators(tmp_path: Path) -> None:
    for dataset in (make_synthetic(n_samples=600, latent_dim=4, x_dim=8), make_digits_two_view()):
        folder = tmp_path / dataset.name
        read = read_dataset(write_paired_dataset(dataset, folder, row_group_size=256))
        _assert_same_dataset(read, dataset)


def test_writer_output_is_deterministic(tmp_path: Path) -> None:
    dataset = _small_dataset()
    write_paired_dataset(dataset, tmp_path / "a", layout="columns", rows_per_file=20)
    write_paired_dataset(dataset, tmp_path / "b", layout="columns", rows_per_file=20)
    for name in ("data-00000.parquet", "data-00001.parquet", "data-00002.parquet", "dataset.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_written_schema(tmp_path: Path) -> None:
    manifest_path = write_paired_dataset(_small_dataset(), tmp_path, modality_names=("left", "right"))
    schema = pq.read_schema(tmp_path / "data.parquet")
    assert schema.names == ["sample_id", "left", "right", "y", "parity", "z", "split"]
    assert schema.field("left").type == pa.list_(pa.float32(), 3)
    assert schema.field("sample_id").type == pa.int64()
    manifest = load_manifest(manifest_path)
    assert manifest.modality_names == ("left", "right")
    assert manifest.split is not None
    assert manifest.split.column == "split"


def test_read_rows_permuted_subset(tmp_path: Path) -> None:
    original = _small_dataset()
    manifest_path = write_paired_dataset(original, tmp_path, layout="columns", rows_per_file=15, row_group_size=4)
    rows = np.random.default_rng(3).permutation(41)[:17]
    rows = np.concatenate([rows, rows[:2]])

    x1, x2, labels = read_rows(manifest_path, rows)

    assert np.array_equal(x1, original.x1[rows])
    assert np.array_equal(x2, original.x2[rows])
    assert set(labels) == {"y", "parity"}
    assert np.array_equal(labels["y"], original.labels["y"][rows])
    assert np.array_equal(labels["parity"], original.labels["parity"][rows])


def test_read_rows_shards_are_disjoint(tmp_path: Path) -> None:
    original = _small_dataset()
    manifest_path = write_paired_dataset(original, tmp_path, rows_per_file=15, row_group_size=4)
    dataset = read_dataset(manifest_path)
    shards = [dataset.shard_indices(rank, 2, seed=5) for rank in (0, 1)]

    # 31 training rows in 2 shards of 15: one row is dropped.
    assert [shard.size for shard in shards] == [15, 15]
    assert np.intersect1d(shards[0], shards[1]).size == 0
    covered = np.union1d(shards[0], shards[1])
    assert covered.size == original.train_index.size - 1
    assert np.isin(covered, original.train_index).all()

    for shard in shards:
        x1, x2, labels = read_rows(manifest_path, shard)
        assert torch.equal(torch.as_tensor(x1), torch.tensor(original.x1[shard]))
        assert torch.equal(torch.as_tensor(x2), torch.tensor(original.x2[shard]))
        assert np.array_equal(labels["y"], original.labels["y"][shard])


@pytest.mark.parametrize("layout", ["list", "columns"])
def test_read_rows_memory_is_output_plus_row_group(tmp_path: Path, layout: str) -> None:
    # tracemalloc tracks NumPy allocations (not Arrow's), so the peak shows whether the features
    # are copied once into the output or also kept in intermediate NumPy arrays.
    dataset = make_synthetic(n_samples=8000, latent_dim=4, x_dim=32)
    manifest_path = write_paired_dataset(dataset, tmp_path, layout=layout, row_group_size=500)
    rows = np.random.default_rng(0).permutation(8000)[:4000]

    tracemalloc.start()
    try:
        x1, x2, labels = read_rows(manifest_path, rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    output_bytes = x1.nbytes + x2.nbytes + sum(label.nbytes for label in labels.values())
    assert np.array_equal(x1, dataset.x1[rows])
    # One row group of both modalities is 2 * 500 * 32 * 4 bytes = 128 kB, 11% of the output.
    assert peak < 1.25 * output_bytes


def test_read_rows_rejects_out_of_range(tmp_path: Path) -> None:
    manifest_path = write_paired_dataset(_small_dataset(), tmp_path)
    with pytest.raises(ValueError, match=r"outside the dataset's range \[0, 41\)"):
        read_rows(manifest_path, np.array([0, 41]))
    x1, x2, labels = read_rows(manifest_path, np.array([], dtype=np.int64))
    assert x1.shape == (0, 3)
    assert x2.shape == (0, 5)
    assert labels["y"].shape == (0,)


def test_string_labels_map_to_sorted_codes(tmp_path: Path) -> None:
    original = _small_dataset()
    names = np.array(["cat", "ant", "bee"])
    # Codes 0, 1, 2 stand for cat, ant, bee; sorted order makes them ant=0, bee=1, cat=2.
    manifest_path = write_paired_dataset(
        original, tmp_path, label_values={"y": names[original.labels["y"]]}, rows_per_file=15
    )
    assert pq.read_schema(tmp_path / "data-00000.parquet").field("y").type == pa.string()

    summary = validate_dataset(manifest_path)
    assert summary.label_classes["y"] == ["ant", "bee", "cat"]
    expected = np.array([2, 0, 1])[original.labels["y"]]
    assert np.array_equal(read_dataset(manifest_path).labels["y"], expected)
    rows = np.array([40, 3, 17, 3])
    assert np.array_equal(read_rows(manifest_path, rows)[2]["y"], expected[rows])


def test_summary_counts(tmp_path: Path) -> None:
    summary = validate_dataset(write_paired_dataset(_small_dataset(), tmp_path, rows_per_file=15))
    assert summary.n_rows == 41
    assert summary.rows_per_file == [15, 15, 11]
    assert summary.dims == (3, 5)
    assert summary.split_counts == {"train": 31, "test": 10, "unassigned": 0}
    assert summary.label_classes["parity"] == [0, 1]
    assert [path.name for path in summary.files] == ["data-00000.parquet", "data-00001.parquet", "data-00002.parquet"]


def test_random_split_without_split_column(tmp_path: Path) -> None:
    table = _good_table(n_rows=50)
    _write(tmp_path, table.drop_columns(["split"]))
    manifest_path = _manifest(tmp_path, split=None)

    train, test = read_split(manifest_path, test_fraction=0.3, seed=4)
    again_train, again_test = read_split(manifest_path, test_fraction=0.3, seed=4)
    other_train, _ = read_split(manifest_path, test_fraction=0.3, seed=5)

    assert test.size == 15
    assert train.size == 35
    assert np.array_equal(np.union1d(train, test), np.arange(50))
    assert np.array_equal(train, again_train)
    assert np.array_equal(test, again_test)
    assert not np.array_equal(train, other_train)
    assert validate_dataset(manifest_path).split_counts is None
    dataset = read_dataset(manifest_path, test_fraction=0.3, seed=4)
    assert np.array_equal(dataset.test_index, test)


def test_random_split_keeps_both_parts(tmp_path: Path) -> None:
    _write(tmp_path, _good_table(n_rows=3).drop_columns(["split"]))
    manifest_path = _manifest(tmp_path, split=None)
    train, test = read_split(manifest_path, test_fraction=0.01, seed=0)
    assert train.size == 2
    assert test.size == 1


def test_split_with_unassigned_rows(tmp_path: Path) -> None:
    split = pa.array(["train", None, "test", "train", None, "test"])
    _write(tmp_path, _good_table(n_rows=6).set_column(5, "split", split))
    manifest_path = _manifest(tmp_path)
    train, test = read_split(manifest_path)
    assert train.tolist() == [0, 3]
    assert test.tolist() == [2, 5]
    assert validate_dataset(manifest_path).split_counts == {"train": 2, "test": 2, "unassigned": 2}


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    dataset = _small_dataset()
    with pytest.raises(ValueError, match=r"Invalid layout 'rows'"):
        write_paired_dataset(dataset, tmp_path, layout="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\['y'\] would be written twice"):
        write_paired_dataset(dataset, tmp_path, modality_names=("y", "x2"))
    with pytest.raises(ValueError, match=r"\['split'\] would be written twice"):
        write_paired_dataset(dataset, tmp_path, modality_names=("split", "x2"))
    with pytest.raises(ValueError, match=r"ids must be unique"):
        write_paired_dataset(dataset, tmp_path, ids=np.zeros(41, dtype=np.int64))
    with pytest.raises(ValueError, match=r"correspond one to one"):
        write_paired_dataset(dataset, tmp_path, label_values={"y": np.array(["a"] * 41)})
    assert not (tmp_path / "dataset.yaml").exists()


def test_writer_stores_given_ids(tmp_path: Path) -> None:
    ids = np.array([f"sample-{index:03d}" for index in range(41)])
    write_paired_dataset(_small_dataset(), tmp_path, ids=ids)
    assert pq.read_table(tmp_path / "data.parquet", columns=["sample_id"]).column(0).to_pylist() == ids.tolist()


# --------------------------------------------------------------------------------------------
# Validation errors, each from a crafted file
# --------------------------------------------------------------------------------------------


def _good_table(n_rows: int = 8, dim: int = 3) -> pa.Table:
    """A valid table: sample_id, left and right fixed-size lists, label y, split."""
    values = np.arange(n_rows * dim, dtype=np.float32)
    left = pa.FixedSizeListArray.from_arrays(pa.array(values), dim)
    right = pa.FixedSizeListArray.from_arrays(pa.array(-values), dim)
    return pa.table(
        {
            "sample_id": pa.array(np.arange(n_rows, dtype=np.int64)),
            "left": left,
            "right": right,
            "y": pa.array(np.arange(n_rows, dtype=np.int64) % 2),
            "tissue": pa.array(["liver", "lung"] * (n_rows // 2) + ["liver"] * (n_rows % 2)),
            "split": pa.array(["train", "test"] * (n_rows // 2) + ["train"] * (n_rows % 2)),
        }
    )


def _write(folder: Path, table: pa.Table, name: str = "data.parquet", row_group_size: int = 3) -> None:
    pq.write_table(table, folder / name, row_group_size=row_group_size)


def _manifest(folder: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "name": "crafted",
        "files": ["data.parquet"],
        "id_column": "sample_id",
        "modalities": {"left": {"column": "left", "dim": 3}, "right": {"column": "right", "dim": 3}},
        "labels": ["y", "tissue"],
        "split": {"column": "split", "train": ["train"], "test": ["test"]},
    }
    data.update(overrides)
    data = {key: value for key, value in data.items() if value is not None}
    path = folder / "dataset.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _validation_error(manifest_path: Path) -> DatasetValidationError:
    with pytest.raises(DatasetValidationError) as caught:
        validate_dataset(manifest_path)
    return caught.value


def _find(
    error: DatasetValidationError, file: str | None, column: str | None, row: int | None, text: str
) -> DatasetProblem:
    """Return the problem at (file, column, row) whose message contains ``text``, checking str(error) too."""
    matches = [
        problem
        for problem in error.problems
        if problem.file == file and problem.column == column and problem.row == row and text in problem.message
    ]
    assert matches, f"no problem at {file}, {column!r}, row {row} containing {text!r} in:\n{error}"
    assert str(matches[0]) in str(error)
    return matches[0]


def test_valid_crafted_file_passes(tmp_path: Path) -> None:
    _write(tmp_path, _good_table())
    summary = validate_dataset(_manifest(tmp_path))
    assert summary.label_classes == {"y": [0, 1], "tissue": ["liver", "lung"]}


def test_missing_file(tmp_path: Path) -> None:
    _write(tmp_path, _good_table())
    error = _validation_error(_manifest(tmp_path, files=["data.parquet", "absent.parquet"]))
    _find(error, "absent.parquet", None, None, "file not found")
    assert len(error.problems) == 1


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_text("not parquet")
    _find(_validation_error(_manifest(tmp_path)), "data.parquet", None, None, "cannot be read as Parquet")


def test_missing_list_column(tmp_path: Path) -> None:
    _write(tmp_path, _good_table().drop_columns(["right"]))
    problem = _find(_validation_error(_manifest(tmp_path)), "data.parquet", "right", None, "missing column")
    assert "modalities.right" in problem.message
    assert "sample_id, left, y" in problem.message


def test_missing_prefix_columns(tmp_path: Path) -> None:
    _write(tmp_path, _good_table())
    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": 3}}
    )
    error = _validation_error(manifest_path)
    _find(error, "data.parquet", "r_0..r_2", None, "no column is named 'r_' followed by a number")


def test_prefix_columns_with_gap(tmp_path: Path) -> None:
    table = _good_table()
    for name in ("r_0", "r_1", "r_3"):
        table = table.append_column(name, pa.array(np.zeros(8, dtype=np.float32)))
    _write(tmp_path, table)
    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": 3}}
    )
    error = _validation_error(manifest_path)
    _find(error, "data.parquet", "r_0..r_2", None, "numbered 0..k-1 without gaps, but 1 are missing (r_2)")
    assert len(error.problems) == 1


def test_prefix_columns_wrong_count(tmp_path: Path) -> None:
    table = _good_table()
    for name in ("r_0", "r_1"):
        table = table.append_column(name, pa.array(np.zeros(8, dtype=np.float32)))
    _write(tmp_path, table)
    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": 3}}
    )
    error = _validation_error(manifest_path)
    _find(error, "data.parquet", "r_0..r_2", None, "2 columns have prefix 'r_', but modalities.right sets dim 3")


def test_fixed_size_list_wrong_dimension(tmp_path: Path) -> None:
    _write(tmp_path, _good_table())
    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 4}, "right": {"column": "right", "dim": 3}}
    )
    error = _validation_error(manifest_path)
    _find(error, "data.parquet", "left", None, "fixed-size lists of 3 values, but modalities.left sets dim 4")


def test_variable_list_wrong_dimension(tmp_path: Path) -> None:
    table = _good_table()
    table = table.set_column(1, "left", pa.array([[1.0, 2.0]] * 8, type=pa.list_(pa.float32())))
    _write(tmp_path, table)
    _find(_validation_error(_manifest(tmp_path)), "data.parquet", "left", 0, "every row contains 2 values, but dim is 3")


def test_ragged_list(tmp_path: Path) -> None:
    rows = [[1.0, 2.0, 3.0]] * 8
    rows[5] = [1.0, 2.0]
    rows[7] = [1.0]
    table = _good_table().set_column(1, "left", pa.array(rows, type=pa.list_(pa.float64())))
    _write(tmp_path, table)
    problem = _find(_validation_error(_manifest(tmp_path)), "data.parquet", "left", 5, "list rows differ in length")
    assert "this row has 2 values, but dim is 3" in problem.message
    assert "2 rows in this file" in problem.message


def test_ragged_list_across_row_groups(tmp_path: Path) -> None:
    # The first row group has the right length everywhere, the second never: still ragged.
    rows = [[1.0, 2.0, 3.0]] * 3 + [[1.0, 2.0]] * 5
    _write(tmp_path, _good_table().set_column(1, "left", pa.array(rows)), row_group_size=3)
    _find(_validation_error(_manifest(tmp_path)), "data.parquet", "left", 3, "list rows differ in length")


def test_non_numeric_feature_columns(tmp_path: Path) -> None:
    table = _good_table()
    table = table.set_column(1, "left", pa.array([["a", "b", "c"]] * 8))
    table = table.append_column("r_0", pa.array(["x"] * 8)).append_column("r_1", pa.array(np.ones(8)))
    _write(tmp_path, table)
    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": 2}}
    )
    error = _validation_error(manifest_path)
    _find(error, "data.parquet", "left", None, "must be floats or integers, got list values of type string")
    _find(error, "data.parquet", "r_0", None, "feature values must be floats or integers, got type string")


def test_non_list_column_for_list_layout(tmp_path: Path) -> None:
    _write(tmp_path, _good_table().set_column(1, "left", pa.array(np.ones(8))))
    _find(_validation_error(_manifest(tmp_path)), "data.parquet", "left", None, "expects a list column")


def test_nan_and_infinite_values(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.float32)
    values[3 * 4 + 1] = np.nan
    values[3 * 6] = np.inf
    table = _good_table().set_column(1, "left", pa.FixedSizeListArray.from_arrays(pa.array(values), 3))
    table = table.append_column("r_0", pa.array([0.0, 1.0, -np.inf, 0.0, 0.0, 0.0, 0.0, 0.0]))
    _write(tmp_path, table)
    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": 1}}
    )
    error = _validation_error(manifest_path)
    problem = _find(error, "data.parquet", "left", 4, "NaN or infinite value")
    assert "2 rows in this file" in problem.message
    _find(error, "data.parquet", "r_0", 2, "NaN or infinite value (1 row in this file")


def test_null_ids(tmp_path: Path) -> None:
    ids = pa.array([0, 1, 2, None, 4, None, 6, 7], type=pa.int64())
    _write(tmp_path, _good_table().set_column(0, "sample_id", ids))
    problem = _find(_validation_error(_manifest(tmp_path)), "data.parquet", "sample_id", 3, "null value")
    assert "2 rows in this file" in problem.message


def test_duplicate_ids_within_and_across_files(tmp_path: Path) -> None:
    first = _good_table().set_column(0, "sample_id", pa.array([0, 1, 2, 3, 4, 5, 2, 7], type=pa.int64()))
    second = _good_table().set_column(0, "sample_id", pa.array([10, 11, 12, 5, 14, 15, 16, 17], type=pa.int64()))
    _write(tmp_path, first, "a.parquet")
    _write(tmp_path, second, "b.parquet")
    error = _validation_error(_manifest(tmp_path, files=["a.parquet", "b.parquet"]))
    _find(error, "a.parquet", "sample_id", 6, "duplicate sample id 2, first seen in a.parquet row 2")
    _find(error, "b.parquet", "sample_id", 3, "duplicate sample id 5, first seen in a.parquet row 5")
    assert len(error.problems) == 2


def test_duplicate_string_ids(tmp_path: Path) -> None:
    ids = pa.array(["a", "b", "c", "d", "b", "f", "g", "b"])
    _write(tmp_path, _good_table().set_column(0, "sample_id", ids))
    error = _validation_error(_manifest(tmp_path))
    _find(error, "data.parquet", "sample_id", 4, "duplicate sample id 'b', first seen in data.parquet row 1")
    _find(error, "data.parquet", "sample_id", 7, "duplicate sample id 'b', first seen in data.parquet row 1")


def test_unpaired_rows(tmp_path: Path) -> None:
    right = pa.array([[1.0, 2.0, 3.0]] * 4 + [None] + [[1.0, 2.0, 3.0]] * 3, type=pa.list_(pa.float32()))
    table = _good_table().set_column(2, "right", right)
    table = table.append_column("r_0", pa.array([1.0, None, 1.0, 1.0, 1.0, 1.0, None, 1.0]))
    table = table.append_column("r_1", pa.array([1.0, None, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    _write(tmp_path, table)
    error = _validation_error(_manifest(tmp_path))
    _find(error, "data.parquet", "right", 4, "only one modality")

    manifest_path = _manifest(
        tmp_path, modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": 2}}
    )
    error = _validation_error(manifest_path)
    _find(error, "data.parquet", "r_0..r_1", 1, "only one modality")
    _find(error, "data.parquet", "r_0", 6, "null feature value")


def test_unpaired_rows_in_fixed_size_list(tmp_path: Path) -> None:
    right = pa.array([[1.0, 2.0, 3.0]] * 4 + [None] + [[1.0, 2.0, 3.0]] * 3, type=pa.list_(pa.float32(), 3))
    _write(tmp_path, _good_table().set_column(2, "right", right), row_group_size=3)
    error = _validation_error(_manifest(tmp_path))
    _find(error, "data.parquet", "right", None, "a row in rows 3..5 is null, which is an unpaired sample")
    # The other columns are still checked.
    assert len(error.problems) == 1


def test_empty_splits(tmp_path: Path) -> None:
    _write(tmp_path, _good_table().set_column(5, "split", pa.array(["train"] * 8)))
    error = _validation_error(_manifest(tmp_path))
    _find(error, None, "split", None, "the test split is empty: no row has a value in split.test ['test']")

    _write(tmp_path, _good_table().set_column(5, "split", pa.array(["test"] * 8)))
    error = _validation_error(_manifest(tmp_path))
    _find(error, None, "split", None, "the train split is empty")


def test_single_class_label(tmp_path: Path) -> None:
    _write(tmp_path, _good_table().set_column(4, "tissue", pa.array(["liver"] * 8)))
    _find(_validation_error(_manifest(tmp_path)), None, "tissue", None, "single class 'liver'")


def test_null_label(tmp_path: Path) -> None:
    _write(tmp_path, _good_table().set_column(3, "y", pa.array([0, 1, 0, 1, 0, None, 0, 1])))
    _find(_validation_error(_manifest(tmp_path)), "data.parquet", "y", 5, "null value")


def test_unknown_split_values(tmp_path: Path) -> None:
    split = pa.array(["train", "test", "train", "dev", "test", "val", "train", "dev"])
    _write(tmp_path, _good_table().set_column(5, "split", split))
    problem = _find(_validation_error(_manifest(tmp_path)), "data.parquet", "split", 3, "split values 'dev', 'val'")
    assert "3 rows in this file" in problem.message

    with pytest.raises(DatasetValidationError, match=r"data.parquet: column 'split', row 3: split values 'dev', 'val'"):
        read_split(_manifest(tmp_path))


def test_schemas_differ(tmp_path: Path) -> None:
    _write(tmp_path, _good_table(), "a.parquet")
    other = _good_table().set_column(3, "y", pa.array(["0", "1"] * 4)).append_column("extra", pa.array(np.ones(8)))
    _write(tmp_path, other, "b.parquet")
    error = _validation_error(_manifest(tmp_path, files=["a.parquet", "b.parquet"]))
    _find(error, "b.parquet", "y", None, "schema differs from a.parquet: type string here, int64 there")
    _find(error, "b.parquet", "extra", None, "column exists only here")


def test_all_problems_reported_together(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.float32)
    values[5] = np.nan
    table = _good_table().set_column(1, "left", pa.FixedSizeListArray.from_arrays(pa.array(values), 3))
    table = table.set_column(0, "sample_id", pa.array([0, 1, 1, 3, 4, 5, 6, 7], type=pa.int64()))
    table = table.drop_columns(["tissue"])
    _write(tmp_path, table)
    error = _validation_error(_manifest(tmp_path))
    _find(error, "data.parquet", "left", 1, "NaN or infinite value")
    _find(error, "data.parquet", "sample_id", 2, "duplicate sample id 1")
    _find(error, "data.parquet", "tissue", None, "missing column")
    assert len(error.problems) == 3
    assert str(error).startswith(f"{tmp_path / 'dataset.yaml'} is invalid (3 problems):")


def test_problems_capped_per_kind(tmp_path: Path) -> None:
    n_rows = 2 * (MAX_PROBLEMS_PER_KIND + 5)
    table = _good_table(n_rows=n_rows)
    for index in range(MAX_PROBLEMS_PER_KIND + 5):
        table = table.append_column(f"r_{index}", pa.array([np.nan] * n_rows))
    _write(tmp_path, table)
    manifest_path = _manifest(
        tmp_path,
        modalities={"left": {"column": "left", "dim": 3}, "right": {"prefix": "r_", "dim": MAX_PROBLEMS_PER_KIND + 5}},
    )
    error = _validation_error(manifest_path)
    listed = [problem for problem in error.problems if problem.file == "data.parquet"]
    assert len(listed) == MAX_PROBLEMS_PER_KIND
    assert all(problem.message.startswith("NaN or infinite value") for problem in listed)
    assert error.problems[-1].message == "5 more problems of kind 'NaN or infinite value' are not listed"


def test_read_dataset_validates_first(tmp_path: Path) -> None:
    _write(tmp_path, _good_table().set_column(4, "tissue", pa.array(["liver"] * 8)))
    with pytest.raises(DatasetValidationError, match=r"column 'tissue': the label has a single class 'liver'"):
        read_dataset(_manifest(tmp_path))


def test_validation_error_pickles() -> None:
    error = DatasetValidationError([DatasetProblem("a.parquet", "left", 3, "NaN or infinite value")], "m.yaml")
    restored = pickle.loads(pickle.dumps(error))
    assert restored.problems == error.problems
    assert str(restored) == "m.yaml is invalid (1 problem):\n  a.parquet: column 'left', row 3: NaN or infinite value"


# --------------------------------------------------------------------------------------------
# Manifest errors
# --------------------------------------------------------------------------------------------


def _manifest_error(path: Path) -> DatasetValidationError:
    with pytest.raises(DatasetValidationError) as caught:
        load_manifest(path)
    for problem in caught.value.problems:
        assert problem.file == str(path)
    return caught.value


def _messages(error: DatasetValidationError) -> list[str]:
    return [problem.message for problem in error.problems]


def test_manifest_three_modalities(tmp_path: Path) -> None:
    modalities = {name: {"column": name, "dim": 2} for name in ("a", "b", "c")}
    error = _manifest_error(_manifest(tmp_path, modalities=modalities))
    assert _messages(error) == ["modalities: needs exactly 2 entries (X1 first, X2 second), got 3 (a, b, c)"]


def test_manifest_column_and_prefix(tmp_path: Path) -> None:
    modalities = {"left": {"column": "left", "prefix": "left_", "dim": 3}, "right": {"column": "right", "dim": 3}}
    error = _manifest_error(_manifest(tmp_path, modalities=modalities))
    assert _messages(error) == [
        "modalities.left: give either column or prefix, not both (got column='left', prefix='left_')"
    ]


def test_manifest_reports_every_problem(tmp_path: Path) -> None:
    path = _manifest(
        tmp_path,
        labls=["y"],
        modalities={"left": {"column": "left", "dim": "3"}, "right": {"dim": 3}, "third": {"column": "t", "dim": 1}},
        split={"column": "split", "train": ["train"], "test": ["train"]},
    )
    messages = _messages(_manifest_error(path))
    assert "modalities: needs exactly 2 entries (X1 first, X2 second), got 3 (left, right, third)" in messages
    assert "modalities.left.dim: must be a valid integer (got '3')" in messages
    assert any(message.startswith("modalities.right: give column") for message in messages)
    assert "split: train and test must not share values, but both list 'train'" in messages
    assert any(message.startswith("labls: unknown key. Did you mean 'labels'?") for message in messages)
    assert len(messages) == 5


def test_manifest_missing_key_and_bad_dim(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text("name: x\nmodalities:\n  a: {column: a, dim: 0}\n  b: {column: b, dim: 2}\n")
    messages = _messages(_manifest_error(path))
    assert "files: required key is missing. Add it to the manifest" in messages
    assert "modalities.a.dim: must be greater than or equal to 1 (got 0)" in messages


def test_manifest_column_used_twice(tmp_path: Path) -> None:
    error = _manifest_error(_manifest(tmp_path, labels=["y", "split"]))
    assert _messages(error) == [
        "column 'split' is used by both labels and split.column. Give each role its own column"
    ]


def test_manifest_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text("name: [unclosed\n")
    assert _messages(_manifest_error(path))[0].startswith("invalid YAML at line 2")
    path.write_text("- a\n- b\n")
    assert "must be a YAML mapping" in _messages(_manifest_error(path))[0]
    assert _messages(_manifest_error(tmp_path / "absent.yaml")) == ["manifest file not found. Check the path"]


def test_manifest_resolves_files_and_dumps(tmp_path: Path) -> None:
    folder = tmp_path / "nested"
    folder.mkdir()
    manifest = load_manifest(_manifest(folder, files=["part/a.parquet", str(tmp_path / "b.parquet")]))
    assert manifest.path == folder / "dataset.yaml"
    assert manifest.file_paths() == [folder / "part" / "a.parquet", tmp_path / "b.parquet"]

    dumped = yaml.safe_load(manifest.to_yaml())
    assert dumped["files"] == ["part/a.parquet", str(tmp_path / "b.parquet")]
    assert DatasetManifest.model_validate(dumped).model_dump() == manifest.model_dump()


def test_validate_dataset_errors_on_bad_manifest(tmp_path: Path) -> None:
    path = _manifest(tmp_path, modalities={"a": {"column": "a", "dim": 2}})
    with pytest.raises(DatasetValidationError, match=r"got 1 \(a\)"):
        validate_dataset(path)
