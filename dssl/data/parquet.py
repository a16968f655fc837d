"""Parquet storage of paired two-modality datasets: writing, validation and memory-mapped reads.

A dataset is one or more Parquet files with the same columns plus a YAML manifest
(:mod:`dssl.data.manifest`) that names the id, modality, label, latent and split columns. Global
row numbers run over the files in manifest order.

- :func:`write_paired_dataset` stores a :class:`~dssl.data.dataset.PairedDataset` with its
  manifest.
- :func:`validate_dataset` streams every file row group by row group and raises
  :class:`DatasetValidationError` with all problems found, each naming the file, column and row.
- :func:`read_dataset` validates and reads a whole dataset into a ``PairedDataset``.
  :func:`read_split` reads only the train/test split, and :func:`read_rows` reads the features
  and labels of selected rows, one row group at a time, so a data-parallel worker keeps only its
  shard in memory and not the whole file.

String labels are mapped to int64 codes in the sorted order of their distinct values over the
whole dataset. Integer and boolean labels are returned as their values (as int64).

Example:
    >>> import tempfile
    >>> from dssl.data.synthetic import make_synthetic
    >>> data = make_synthetic(n_samples=200, latent_dim=4, x_dim=8)
    >>> manifest_path = write_paired_dataset(data, tempfile.mkdtemp(), layout="columns")
    >>> summary = validate_dataset(manifest_path)
    >>> summary.n_rows, summary.dims
    (200, (8, 8))
    >>> again = read_dataset(manifest_path)
    >>> bool((again.x1 == data.x1).all()), bool((again.test_index == data.test_index).all())
    (True, True)
    >>> x1, x2, labels = read_rows(manifest_path, data.train_index[:5])
    >>> x1.shape, sorted(labels)
    ((5, 8), ['y_1', 'y_2', 'y_c'])
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dssl.data.dataset import PairedDataset
from dssl.data.manifest import (
    MANIFEST_FILE_NAME,
    DatasetManifest,
    DatasetProblem,
    DatasetValidationError,
    ModalityColumns,
    SplitSpec,
    dump_manifest,
    load_manifest,
)

_logger = logging.getLogger(__name__)

__all__ = [
    "DatasetProblem",
    "DatasetSummary",
    "DatasetValidationError",
    "ID_COLUMN",
    "SPLIT_COLUMN",
    "read_dataset",
    "read_rows",
    "read_split",
    "read_view",
    "validate_dataset",
    "write_paired_dataset",
]

ID_COLUMN = "sample_id"
"""Name of the sample id column that :func:`write_paired_dataset` writes."""

SPLIT_COLUMN = "split"
"""Name of the split column that :func:`write_paired_dataset` writes, with values ``"train"`` and ``"test"``."""

LAYOUTS: tuple[str, ...] = ("list", "columns")
"""Values accepted by the ``layout`` argument of :func:`write_paired_dataset`."""

MAX_PROBLEMS_PER_KIND = 20
"""Maximum problems of one kind listed in a :class:`DatasetValidationError`. Further ones are only counted."""

_TRAIN_VALUE = "train"
_TEST_VALUE = "test"
_BATCH_ROWS = 65536
_MAX_LISTED_VALUES = 5
_MAX_LISTED_COLUMNS = 12

ManifestLike = str | os.PathLike[str] | DatasetManifest


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """Facts about a valid dataset, returned by :func:`validate_dataset`.

    Attributes:
        name: The manifest's dataset name.
        files: Absolute paths of the Parquet files, in manifest order.
        rows_per_file: Row count of each file, in the same order.
        n_rows: Total number of rows.
        dims: Feature dimensions ``(d1, d2)`` of ``X1`` and ``X2``.
        label_classes: Label name to its sorted distinct values (integers or strings).
        split_counts: ``{"train": ..., "test": ..., "unassigned": ...}`` row counts from the split
            column (``"unassigned"`` counts null split values), or ``None`` without a split
            column (the split is then drawn at read time).
    """

    name: str
    files: list[Path]
    rows_per_file: list[int]
    n_rows: int
    dims: tuple[int, int]
    label_classes: dict[str, list[int | str]]
    split_counts: dict[str, int] | None

    def __str__(self) -> str:
        lines = [
            f"dataset {self.name!r}: {self.n_rows} rows in {len(self.files)} file(s)",
            f"  dims: x1 {self.dims[0]}, x2 {self.dims[1]}",
        ]
        for label, classes in self.label_classes.items():
            shown = ", ".join(map(repr, classes[:_MAX_LISTED_COLUMNS]))
            more = ", ..." if len(classes) > _MAX_LISTED_COLUMNS else ""
            lines.append(f"  label {label!r}: {len(classes)} classes ({shown}{more})")
        if self.split_counts is None:
            lines.append("  split: none stored. A seeded random split is drawn when the dataset is read")
        else:
            counts = ", ".join(f"{name} {count}" for name, count in self.split_counts.items())
            lines.append(f"  split rows: {counts}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_paired_dataset(
    dataset: PairedDataset,
    out_dir: str | os.PathLike[str],
    *,
    modality_names: tuple[str, str] = ("x1", "x2"),
    layout: Literal["list", "columns"] = "list",
    ids: np.ndarray | None = None,
    label_values: dict[str, np.ndarray] | None = None,
    rows_per_file: int | None = None,
    row_group_size: int = 65536,
) -> Path:
    """Write a paired dataset as Parquet files plus a manifest.

    Columns, in this order:

    - ``sample_id``;
    - the two modalities. Layout ``"list"`` writes one ``fixed_size_list<float32>[d]`` column
      named after the modality, layout ``"columns"`` the float32 columns ``<name>_0`` ..
      ``<name>_{d-1}``;
    - one column per label, with the int64 codes or the values from ``label_values``;
    - one ``fixed_size_list<float32>[m]`` column per latent;
    - ``split`` with ``"train"``, ``"test"``, or null for rows in neither split.

    The same input gives byte-identical files.

    Args:
        dataset: The dataset to write. Its test split must be non-empty, because a dataset with
            a split column needs both splits.
        out_dir: Output folder, created if needed. Existing files of the same names are replaced;
            other files are left alone.
        modality_names: Names of ``X1`` and ``X2`` in the manifest and the column names (or
            prefixes, with ``"_"`` appended) of their features.
        layout: ``"list"`` or ``"columns"``, see above. Latents always use the list layout.
        ids: Sample ids, shape ``(N,)``, unique, integers or strings. Default: ``0 .. N-1``.
        label_values: Label name to the original values of shape ``(N,)`` (integers or strings)
            to store in place of the codes. They must correspond one to one to the codes.
            :func:`read_dataset` returns string values as codes in sorted order of the values
            and integer values as themselves, so the codes read back equal the dataset's codes
            only when the codes follow that order.
        rows_per_file: Maximum rows per file. ``None`` (or at least ``N``) writes one file
            ``data.parquet``. Otherwise rows ``[k * rows_per_file, (k + 1) * rows_per_file)``
            go to ``data-0000k.parquet``.
        row_group_size: Maximum rows per Parquet row group, the unit that readers load at once.

    Returns:
        Absolute path of the manifest ``out_dir/dataset.yaml``.

    Raises:
        TypeError: If ``dataset`` is not a :class:`PairedDataset`.
        ValueError: If an option is invalid, two columns would get the same name, the ids are not
            unique, ``label_values`` do not match the codes, or the test split is empty.
    """
    if not isinstance(dataset, PairedDataset):
        raise TypeError(f"dataset must be a PairedDataset, got {type(dataset).__name__}.")
    _check_write_options(dataset, modality_names, layout, rows_per_file, row_group_size)
    n_rows = dataset.n_samples

    names: list[str] = [ID_COLUMN]
    arrays: list[pa.Array] = [_id_array(ids, n_rows)]
    modalities: dict[str, ModalityColumns] = {}
    for name, features in zip(modality_names, (dataset.x1, dataset.x2)):
        dim = int(features.shape[1])
        if layout == "list":
            names.append(name)
            arrays.append(_fixed_size_list_array(features))
            modalities[name] = ModalityColumns(column=name, dim=dim)
        else:
            prefix = f"{name}_"
            for index in range(dim):
                names.append(f"{prefix}{index}")
                arrays.append(pa.array(np.ascontiguousarray(features[:, index])))
            modalities[name] = ModalityColumns(prefix=prefix, dim=dim)

    values = _check_label_values(dataset, label_values or {})
    for label_name, codes in dataset.labels.items():
        names.append(label_name)
        arrays.append(pa.array(values.get(label_name, codes)))

    latents: dict[str, ModalityColumns] = {}
    for latent_name, latent in dataset.latents.items():
        names.append(latent_name)
        arrays.append(_fixed_size_list_array(latent))
        latents[latent_name] = ModalityColumns(column=latent_name, dim=int(latent.shape[1]))

    names.append(SPLIT_COLUMN)
    arrays.append(_split_array(dataset))

    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Columns {duplicates} would be written twice. Modality names, label names, latent names, "
            f"the modality feature columns and the reserved columns {[ID_COLUMN, SPLIT_COLUMN]} must "
            "all differ. Pass other modality_names."
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_arrays(arrays, names=names)
    file_names = _write_files(table, out_dir, rows_per_file, row_group_size)

    manifest = DatasetManifest(
        name=dataset.name,
        files=file_names,
        id_column=ID_COLUMN,
        modalities=modalities,
        labels=list(dataset.labels),
        latents=latents,
        split=SplitSpec(column=SPLIT_COLUMN, train=[_TRAIN_VALUE], test=[_TEST_VALUE]),
    )
    manifest_path = dump_manifest(manifest, out_dir / MANIFEST_FILE_NAME)
    _logger.info(
        "Wrote dataset %r: %d rows in %d file(s), layout %r, manifest %s.",
        dataset.name,
        n_rows,
        len(file_names),
        layout,
        manifest_path,
    )
    return manifest_path


def _check_write_options(
    dataset: PairedDataset,
    modality_names: tuple[str, str],
    layout: str,
    rows_per_file: int | None,
    row_group_size: int,
) -> None:
    if (
        not isinstance(modality_names, (tuple, list))
        or len(modality_names) != 2
        or not all(isinstance(name, str) and name for name in modality_names)
        or modality_names[0] == modality_names[1]
    ):
        raise ValueError(f"modality_names must be two different non-empty strings, got {modality_names!r}.")
    if layout not in LAYOUTS:
        raise ValueError(f"Invalid layout {layout!r}. Expected one of {list(LAYOUTS)}.")
    if rows_per_file is not None and (not _is_int(rows_per_file) or rows_per_file < 1):
        raise ValueError(f"rows_per_file must be None or an integer >= 1, got {rows_per_file!r}.")
    if not _is_int(row_group_size) or row_group_size < 1:
        raise ValueError(f"row_group_size must be an integer >= 1, got {row_group_size!r}.")
    if dataset.test_index.size == 0:
        raise ValueError(
            f"Dataset {dataset.name!r} has an empty test split. The Parquet format needs both splits "
            "when it stores a split column. Give the dataset a test split before writing it."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fixed_size_list_array(features: np.ndarray) -> pa.FixedSizeListArray:
    """Wrap an ``(N, d)`` array as ``fixed_size_list<float32>[d]`` without copying float32 data."""
    flat = np.ascontiguousarray(features, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), int(features.shape[1]))


def _id_array(ids: np.ndarray | None, n_rows: int) -> pa.Array:
    if ids is None:
        return pa.array(np.arange(n_rows, dtype=np.int64))

    ids = np.asarray(ids)
    if ids.shape != (n_rows,):
        raise ValueError(f"ids must have shape ({n_rows},), got {ids.shape}.")
    if ids.dtype.kind in "iu":
        ids = ids.astype(np.int64)
    elif ids.dtype.kind == "U" or (ids.dtype.kind == "O" and all(isinstance(value, str) for value in ids)):
        ids = ids.astype(str)
    else:
        raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}.")

    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != n_rows:
        repeated = unique[counts > 1]
        raise ValueError(
            f"ids must be unique, but {repeated.size} values repeat, the first being {repeated[0]!r}."
        )
    return pa.array(ids)


def _check_label_values(dataset: PairedDataset, label_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check that every value array matches its codes one to one, and return them as NumPy arrays."""
    unknown = sorted(set(label_values) - set(dataset.labels))
    if unknown:
        raise ValueError(f"label_values has labels {unknown} that the dataset lacks. Allowed: {list(dataset.labels)}.")

    checked: dict[str, np.ndarray] = {}
    for label_name, raw in label_values.items():
        values = np.asarray(raw)
        if values.dtype.kind == "O" and all(isinstance(value, str) for value in values):
            values = values.astype(str)
        if values.dtype.kind not in "iubU":
            raise ValueError(f"label_values[{label_name!r}] must hold integers or strings, got dtype {values.dtype}.")
        if values.shape != (dataset.n_samples,):
            raise ValueError(
                f"label_values[{label_name!r}] must have shape ({dataset.n_samples},), got {values.shape}."
            )

        codes = dataset.labels[label_name]
        _, value_index = np.unique(values, return_inverse=True)
        n_pairs = np.unique(np.stack([codes, value_index.reshape(-1)]), axis=1).shape[1]
        n_codes = np.unique(codes).size
        n_values = int(value_index.max()) + 1
        if not n_pairs == n_codes == n_values:
            raise ValueError(
                f"label_values[{label_name!r}] must correspond one to one to the codes, but {n_values} "
                f"distinct values and {n_codes} distinct codes form {n_pairs} pairs."
            )
        if values.dtype.kind == "U" and not np.array_equal(value_index.reshape(-1), codes):
            _logger.warning(
                "The codes of label %r are not in sorted order of its values, so reading the dataset "
                "back will give other codes for the same classes.",
                label_name,
            )
        checked[label_name] = values
    return checked


def _split_array(dataset: PairedDataset) -> pa.Array:
    # Code 2 marks rows in neither split, which are stored as null.
    codes = np.full(dataset.n_samples, 2, dtype=np.int64)
    codes[dataset.train_index] = 0
    codes[dataset.test_index] = 1
    return pa.array([_TRAIN_VALUE, _TEST_VALUE, None], type=pa.string()).take(pa.array(codes))


def _write_files(table: pa.Table, out_dir: Path, rows_per_file: int | None, row_group_size: int) -> list[str]:
    n_rows = table.num_rows
    if rows_per_file is None or rows_per_file >= n_rows:
        pq.write_table(table, out_dir / "data.parquet", row_group_size=row_group_size)
        return ["data.parquet"]

    file_names = []
    for number, start in enumerate(range(0, n_rows, rows_per_file)):
        file_name = f"data-{number:05d}.parquet"
        chunk = table.slice(start, min(rows_per_file, n_rows - start))
        pq.write_table(chunk, out_dir / file_name, row_group_size=row_group_size)
        file_names.append(file_name)
    return file_names


# --------------------------------------------------------------------------------------------
# Validation: problem collection and the column plan of a file
# --------------------------------------------------------------------------------------------


class _Kind:
    """Problem kinds. Each kind is listed at most :data:`MAX_PROBLEMS_PER_KIND` times."""

    MISSING_FILE = "missing file"
    UNREADABLE = "unreadable file"
    SCHEMA = "schema differs between files"
    MISSING_COLUMN = "missing column"
    COLUMN_TYPE = "wrong column type"
    DIMENSION = "wrong feature dimension"
    RAGGED = "ragged feature list"
    NONFINITE = "NaN or infinite value"
    NULL_VALUE = "null feature value"
    UNPAIRED = "unpaired row"
    NULL_ID = "null sample id"
    DUPLICATE_ID = "duplicate sample id"
    NULL_LABEL = "null label"
    SINGLE_CLASS = "label with a single class"
    SPLIT_VALUE = "unknown split value"
    EMPTY_SPLIT = "empty split"
    NO_ROWS = "no rows"


class _ProblemCollector:
    """Collect problems, keeping the first :data:`MAX_PROBLEMS_PER_KIND` of each kind."""

    def __init__(self) -> None:
        self._problems: list[DatasetProblem] = []
        self._counts: dict[str, int] = {}

    def add(self, kind: str, file: str | None, column: str | None, row: int | None, message: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        if self._counts[kind] <= MAX_PROBLEMS_PER_KIND:
            self._problems.append(DatasetProblem(file, column, None if row is None else int(row), message))

    def add_unlisted(self, kind: str, count: int) -> None:
        """Count ``count`` further problems of ``kind`` without describing them."""
        self._counts[kind] = self._counts.get(kind, 0) + count

    def __bool__(self) -> bool:
        return bool(self._problems)

    def problems(self) -> list[DatasetProblem]:
        listed = list(self._problems)
        for kind, count in self._counts.items():
            if count > MAX_PROBLEMS_PER_KIND:
                listed.append(
                    DatasetProblem(
                        None,
                        None,
                        None,
                        f"{count - MAX_PROBLEMS_PER_KIND} more problems of kind {kind!r} are not listed",
                    )
                )
        return listed


@dataclasses.dataclass
class _ListPlan:
    """A feature group stored as one list column that is present in the file."""

    owner: str
    is_modality: bool
    column: str
    dim: int
    fixed_size: bool
    is_float: bool


@dataclasses.dataclass
class _PrefixPlan:
    """A feature group stored as numbered scalar columns, with the numeric ones present in the file."""

    owner: str
    is_modality: bool
    columns: list[str]
    float_columns: set[str]
    display: str


@dataclasses.dataclass
class _FilePlan:
    """The columns of one file that the streaming checks read."""

    list_groups: list[_ListPlan] = dataclasses.field(default_factory=list)
    prefix_groups: list[_PrefixPlan] = dataclasses.field(default_factory=list)
    id_column: str | None = None
    labels: list[str] = dataclasses.field(default_factory=list)
    split_column: str | None = None

    def columns(self) -> list[str]:
        names = [group.column for group in self.list_groups]
        for prefix_group in self.prefix_groups:
            names += prefix_group.columns
        if self.id_column is not None:
            names.append(self.id_column)
        names += self.labels
        if self.split_column is not None:
            names.append(self.split_column)
        return list(dict.fromkeys(names))


def _value_type(data_type: pa.DataType) -> pa.DataType:
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def _is_numeric(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type)


def _is_list(data_type: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(data_type) or pa.types.is_list(data_type) or pa.types.is_large_list(data_type)


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _prefix_display(spec: ModalityColumns) -> str:
    return f"{spec.prefix}0..{spec.prefix}{spec.dim - 1}"


def _list_columns(schema: pa.Schema) -> str:
    names = schema.names
    shown = ", ".join(names[:_MAX_LISTED_COLUMNS])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED_COLUMNS else "")


def _feature_groups(manifest: DatasetManifest) -> list[tuple[str, bool, ModalityColumns]]:
    groups = [(f"modalities.{key}", True, spec) for key, spec in manifest.modalities.items()]
    groups += [(f"latents.{key}", False, spec) for key, spec in manifest.latents.items()]
    return groups


def _plan_file(manifest: DatasetManifest, entry: str, schema: pa.Schema, problems: _ProblemCollector) -> _FilePlan:
    """Check the columns of one file against the manifest and plan the value checks."""
    plan = _FilePlan()
    for owner, is_modality, spec in _feature_groups(manifest):
        if spec.layout == "list":
            list_plan = _plan_list_group(owner, is_modality, spec, entry, schema, problems)
            if list_plan is not None:
                plan.list_groups.append(list_plan)
        else:
            prefix_plan = _plan_prefix_group(owner, is_modality, spec, entry, schema, problems)
            if prefix_plan is not None:
                plan.prefix_groups.append(prefix_plan)

    id_type = _require_column(manifest.id_column, "id_column", entry, schema, problems)
    if id_type is not None:
        if pa.types.is_integer(id_type) or _is_string(id_type):
            plan.id_column = manifest.id_column
        else:
            message = f"sample ids must be integers or strings, got type {id_type}"
            problems.add(_Kind.COLUMN_TYPE, entry, manifest.id_column, None, message)

    for label in manifest.labels:
        label_type = _require_column(label, "labels", entry, schema, problems)
        if label_type is None:
            continue
        if pa.types.is_integer(label_type) or pa.types.is_boolean(label_type) or _is_string(label_type):
            plan.labels.append(label)
        else:
            problems.add(
                _Kind.COLUMN_TYPE,
                entry,
                label,
                None,
                f"labels must be integers, booleans or strings, got type {label_type}. Store class values, not scores",
            )

    if manifest.split is not None:
        split_type = _require_column(manifest.split.column, "split.column", entry, schema, problems)
        if split_type is not None:
            if pa.types.is_integer(split_type) or _is_string(split_type):
                plan.split_column = manifest.split.column
            else:
                problems.add(
                    _Kind.COLUMN_TYPE,
                    entry,
                    manifest.split.column,
                    None,
                    f"split values must be strings or integers, got type {split_type}",
                )
    return plan


def _require_column(
    column: str, owner: str, entry: str, schema: pa.Schema, problems: _ProblemCollector
) -> pa.DataType | None:
    index = schema.get_field_index(column)
    if index < 0:
        problems.add(
            _Kind.MISSING_COLUMN,
            entry,
            column,
            None,
            f"missing column, which the manifest's {owner} names (columns in this file: {_list_columns(schema)})",
        )
        return None
    return _value_type(schema.field(index).type)


def _plan_list_group(
    owner: str, is_modality: bool, spec: ModalityColumns, entry: str, schema: pa.Schema, problems: _ProblemCollector
) -> _ListPlan | None:
    assert spec.column is not None
    data_type = _require_column(spec.column, owner, entry, schema, problems)
    if data_type is None:
        return None
    if not _is_list(data_type):
        problems.add(
            _Kind.COLUMN_TYPE,
            entry,
            spec.column,
            None,
            f"{owner} expects a list column (fixed_size_list<float32>[{spec.dim}]), got type {data_type}. "
            "Store one list per row or use prefix columns in the manifest",
        )
        return None

    value_type = _value_type(data_type.value_type)
    if not _is_numeric(value_type):
        problems.add(
            _Kind.COLUMN_TYPE,
            entry,
            spec.column,
            None,
            f"feature values must be floats or integers, got list values of type {value_type}",
        )
        return None

    fixed_size = pa.types.is_fixed_size_list(data_type)
    if fixed_size and data_type.list_size != spec.dim:
        problems.add(
            _Kind.DIMENSION,
            entry,
            spec.column,
            None,
            f"fixed-size lists of {data_type.list_size} values, but {owner} sets dim {spec.dim}. "
            "Fix dim in the manifest or the column",
        )
        return None
    return _ListPlan(owner, is_modality, spec.column, spec.dim, fixed_size, pa.types.is_floating(value_type))


def _plan_prefix_group(
    owner: str, is_modality: bool, spec: ModalityColumns, entry: str, schema: pa.Schema, problems: _ProblemCollector
) -> _PrefixPlan | None:
    display = _prefix_display(spec)
    numbered = {}
    for name in schema.names:
        number = spec.prefix_number(name)
        if number is not None:
            numbered[number] = name
    if not numbered:
        problems.add(
            _Kind.MISSING_COLUMN,
            entry,
            display,
            None,
            f"no column is named {spec.prefix!r} followed by a number, but {owner} needs {display} "
            f"(columns in this file: {_list_columns(schema)})",
        )
        return None

    gaps = [number for number in range(len(numbered)) if number not in numbered]
    if gaps:
        shown = ", ".join(f"{spec.prefix}{number}" for number in gaps[:_MAX_LISTED_VALUES])
        problems.add(
            _Kind.MISSING_COLUMN,
            entry,
            display,
            None,
            f"prefix columns must be numbered 0..k-1 without gaps, but {len(gaps)} are missing ({shown})",
        )
    if len(numbered) != spec.dim:
        problems.add(
            _Kind.DIMENSION,
            entry,
            display,
            None,
            f"{len(numbered)} columns have prefix {spec.prefix!r}, but {owner} sets dim {spec.dim}. "
            "Fix dim in the manifest or the columns",
        )

    columns: list[str] = []
    float_columns: set[str] = set()
    for number in sorted(numbered):
        name = numbered[number]
        data_type = _value_type(schema.field(name).type)
        if not _is_numeric(data_type):
            problems.add(
                _Kind.COLUMN_TYPE, entry, name, None, f"feature values must be floats or integers, got type {data_type}"
            )
            continue
        columns.append(name)
        if pa.types.is_floating(data_type):
            float_columns.add(name)
    return _PrefixPlan(owner, is_modality, columns, float_columns, display)


def _compare_schema(
    entry: str, schema: pa.Schema, reference_entry: str, reference: pa.Schema, problems: _ProblemCollector
) -> None:
    if schema.equals(reference, check_metadata=False):
        return

    found = False
    for field in reference:
        index = schema.get_field_index(field.name)
        if index < 0:
            message = f"schema differs from {reference_entry}: column is missing here"
            problems.add(_Kind.SCHEMA, entry, field.name, None, message)
            found = True
        elif schema.field(index).type != field.type:
            problems.add(
                _Kind.SCHEMA,
                entry,
                field.name,
                None,
                f"schema differs from {reference_entry}: type {schema.field(index).type} here, {field.type} there",
            )
            found = True
    for field in schema:
        if reference.get_field_index(field.name) < 0:
            problems.add(
                _Kind.SCHEMA, entry, field.name, None, f"schema differs from {reference_entry}: column exists only here"
            )
            found = True
    if not found:
        problems.add(
            _Kind.SCHEMA,
            entry,
            None,
            None,
            f"schema differs from {reference_entry} in column order or nullability. Write all files with one schema",
        )


# --------------------------------------------------------------------------------------------
# Validation: streaming value checks
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Tally:
    """Rows of one file with one kind of problem in one column."""

    first_row: int
    count: int = 0
    detail: Any = None


class _DatasetScan:
    """Accumulate row-level findings over all files of a dataset."""

    def __init__(self, manifest: DatasetManifest) -> None:
        self.manifest = manifest
        self.ids: list[pa.Array] = []
        self.id_rows: list[np.ndarray] = []
        self.id_kind: str | None = None
        self.label_classes: dict[str, set[Any]] = {label: set() for label in manifest.labels}
        self.labels_complete: dict[str, bool] = {label: True for label in manifest.labels}
        self.label_rows_read: dict[str, int] = {label: 0 for label in manifest.labels}
        self.split_counts = {"train": 0, "test": 0, "unassigned": 0}
        self.split_complete = manifest.split is not None
        self.rows_per_file: list[int] = []
        self.file_offsets: list[int] = []

    def scan_file(
        self, entry: str, parquet: pq.ParquetFile, plan: _FilePlan, offset: int, problems: _ProblemCollector
    ) -> None:
        """Check the values of one file batch by batch and report its row-level problems."""
        findings = _FileFindings()
        _drop_unreadable_fixed_size_lists(entry, parquet, plan, problems)
        columns = plan.columns()
        if plan.id_column is not None:
            self._remember_id_kind(parquet.schema_arrow.field(plan.id_column).type)
        if not columns:
            return

        start = 0
        try:
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                self._scan_batch(batch, start, plan, findings, offset)
                start += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            problems.add(_Kind.UNREADABLE, entry, None, start, f"reading failed after {start} rows: {exc}")
            # Counts over a partly read file would make the split and class checks report false problems.
            self.split_complete = False
            self.labels_complete = dict.fromkeys(self.labels_complete, False)
        _report_findings(entry, findings, self.manifest, problems)

    def _remember_id_kind(self, data_type: pa.DataType) -> None:
        kind = "string" if _is_string(_value_type(data_type)) else "integer"
        if self.id_kind is None:
            self.id_kind = kind

    def _scan_batch(
        self, batch: pa.RecordBatch, start: int, plan: _FilePlan, findings: _FileFindings, offset: int
    ) -> None:
        for list_plan in plan.list_groups:
            _scan_list_column(batch.column(list_plan.column), list_plan, start, findings)
        for prefix_plan in plan.prefix_groups:
            _scan_prefix_columns(batch, prefix_plan, start, findings)
        if plan.id_column is not None:
            self._scan_ids(_decode(batch.column(plan.id_column)), start, offset, plan.id_column, findings)
        for label in plan.labels:
            self._scan_label(_decode(batch.column(label)), label, start, findings)
        if plan.split_column is not None:
            self._scan_split(batch.column(plan.split_column), start, findings)

    def _scan_ids(
        self, ids: pa.Array, start: int, offset: int, column: str, findings: _FileFindings
    ) -> None:
        if ids.null_count:
            findings.tally(_Kind.NULL_ID, column, start + _null_rows(ids))
        kind = "string" if _is_string(ids.type) else "integer"
        if kind != self.id_kind:
            # The schema comparison reports the differing type, so such ids are left out of the duplicate check.
            return
        ids = ids.cast(pa.large_string() if kind == "string" else pa.int64())
        self.ids.append(ids)
        self.id_rows.append(np.arange(offset + start, offset + start + len(ids), dtype=np.int64))

    def _scan_label(self, values: pa.Array, label: str, start: int, findings: _FileFindings) -> None:
        if values.null_count:
            findings.tally(_Kind.NULL_LABEL, label, start + _null_rows(values))
        self.label_rows_read[label] += len(values)
        if pa.types.is_boolean(values.type):
            values = values.cast(pa.int64())
        self.label_classes[label].update(value for value in pc.unique(values).to_pylist() if value is not None)

    def _scan_split(self, values: pa.Array, start: int, findings: _FileFindings) -> None:
        assert self.manifest.split is not None
        train, test, valid = _classify_split(values, self.manifest.split, start, findings)
        self.split_counts["train"] += int(train.sum())
        self.split_counts["test"] += int(test.sum())
        self.split_counts["unassigned"] += int((~valid).sum())

    def finish(self, problems: _ProblemCollector) -> None:
        """Run the checks that need every file: duplicate ids, class and split counts, row count."""
        self._check_duplicate_ids(problems)
        n_rows = sum(self.rows_per_file)
        if n_rows == 0:
            problems.add(_Kind.NO_ROWS, None, None, None, "the dataset has no rows. Every file is empty")
            return

        for label, classes in self.label_classes.items():
            if len(classes) != 1:
                continue
            (only,) = classes
            read = self.label_rows_read[label]
            scope = f"all {n_rows} rows" if self.labels_complete[label] else f"the {read} rows that could be read"
            problems.add(
                _Kind.SINGLE_CLASS,
                None,
                label,
                None,
                f"the label has a single class {only!r} in {scope}. A label needs at least 2 classes "
                "to train or evaluate a probe, so fix the column or remove it from labels",
            )

        split = self.manifest.split
        if split is None:
            if n_rows < 2:
                message = f"a random train/test split needs at least 2 rows, got {n_rows}"
                problems.add(_Kind.EMPTY_SPLIT, None, None, None, message)
            return

        read = sum(self.split_counts.values())
        scope = "" if self.split_complete else f" among the {read} rows that could be read"
        for name, listed in (("train", split.train), ("test", split.test)):
            if read > 0 and self.split_counts[name] == 0:
                problems.add(
                    _Kind.EMPTY_SPLIT,
                    None,
                    split.column,
                    None,
                    f"the {name} split is empty: no row{scope} has a value in split.{name} {list(listed)}. "
                    f"Assign rows to it or fix split.{name}",
                )

    def _check_duplicate_ids(self, problems: _ProblemCollector) -> None:
        if not self.ids:
            return
        ids = pa.chunked_array(self.ids).combine_chunks()
        rows = np.concatenate(self.id_rows)
        order = pc.sort_indices(ids).to_numpy()
        ordered = ids.take(pa.array(order))
        same = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).fill_null(False)
        repeated_at = np.flatnonzero(same.to_numpy(zero_copy_only=False))
        if repeated_at.size == 0:
            return

        # The sort is stable, so the first row of each run of equal ids is its first occurrence.
        unlisted = max(int(repeated_at.size) - MAX_PROBLEMS_PER_KIND, 0)
        run_start: dict[int, int] = {}
        for position in repeated_at[:MAX_PROBLEMS_PER_KIND].tolist():
            first = run_start.get(position, position)
            run_start[position + 1] = first
            first_row = int(rows[order[first]])
            second_row = int(rows[order[position + 1]])
            first_entry, first_local = self._locate(first_row)
            second_entry, second_local = self._locate(second_row)
            value = ordered[int(position) + 1].as_py()
            problems.add(
                _Kind.DUPLICATE_ID,
                second_entry,
                self.manifest.id_column,
                second_local,
                f"duplicate sample id {value!r}, first seen in {first_entry} row {first_local}. "
                "Sample ids must be unique",
            )
        if unlisted:
            problems.add_unlisted(_Kind.DUPLICATE_ID, unlisted)

    def _locate(self, global_row: int) -> tuple[str, int]:
        index = int(np.searchsorted(self.file_offsets, global_row, side="right")) - 1
        return self.manifest.files[index], global_row - self.file_offsets[index]


def _drop_unreadable_fixed_size_lists(
    entry: str, parquet: pq.ParquetFile, plan: _FilePlan, problems: _ProblemCollector
) -> None:
    """Report fixed-size list columns with null rows and remove them from the plan.

    pyarrow 25.0.1 writes null rows of a ``fixed_size_list`` column to Parquet but fails to read
    them back with "Expected all lists to be of size=...". The row groups whose column statistics
    count nulls are read once more, that column alone, to find them.
    """
    metadata = parquet.metadata
    readable = []
    for group in plan.list_groups:
        failed_group = None
        if group.fixed_size:
            for index in range(metadata.num_row_groups):
                if not _row_group_has_nulls(metadata.row_group(index), group.column):
                    continue
                try:
                    parquet.read_row_group(index, columns=[group.column])
                except pa.ArrowInvalid:
                    failed_group = index
                    break
        if failed_group is None:
            readable.append(group)
            continue

        first_row = sum(metadata.row_group(index).num_rows for index in range(failed_group))
        last_row = first_row + metadata.row_group(failed_group).num_rows - 1
        meaning = "an unpaired sample (only one modality)" if group.is_modality else "a sample without latent values"
        problems.add(
            _Kind.UNPAIRED if group.is_modality else _Kind.NULL_VALUE,
            entry,
            group.column,
            None,
            f"a row in rows {first_row}..{last_row} is null, which is {meaning}, and pyarrow cannot read null rows "
            "of a fixed-size list column from Parquet. Drop such rows or fill in the values",
        )
    plan.list_groups = readable


def _row_group_has_nulls(row_group: pq.RowGroupMetaData, column: str) -> bool:
    """Return whether the statistics of ``column`` count nulls (``True`` when no statistics exist)."""
    for index in range(row_group.num_columns):
        chunk = row_group.column(index)
        if chunk.path_in_schema == column or chunk.path_in_schema.startswith(f"{column}."):
            statistics = chunk.statistics
            if statistics is None or not statistics.has_null_count:
                return True
            if statistics.null_count > 0:
                return True
    return False


def _decode(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _null_rows(array: pa.Array) -> np.ndarray:
    return np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))


def _is_in(text: pa.Array, values: frozenset[str]) -> np.ndarray:
    mask = pc.is_in(text, value_set=pa.array(sorted(values), type=pa.string()))
    return mask.fill_null(False).to_numpy(zero_copy_only=False)


def _classify_split(
    values: pa.Array, split: SplitSpec, start: int, findings: _FileFindings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return train, test and non-null masks of a batch of split values, and tally unlisted values."""
    text = _decode(values).cast(pa.string())
    train = _is_in(text, split.train_values)
    test = _is_in(text, split.test_values)
    valid = text.is_valid().to_numpy(zero_copy_only=False)
    unknown_rows = np.flatnonzero(valid & ~train & ~test)
    if unknown_rows.size:
        tally = findings.tally(_Kind.SPLIT_VALUE, split.column, start + unknown_rows)
        unknown_values = set(pc.unique(text.take(pa.array(unknown_rows))).to_pylist())
        tally.detail = (tally.detail or set()) | unknown_values
    return train, test, valid


class _FileFindings:
    """Row-level findings of one file, merged over its batches."""

    def __init__(self) -> None:
        self.tallies: dict[tuple[str, str], _Tally] = {}
        # Distinct row lengths of each variable-size list column, to tell ragged from uniform.
        self.lengths: dict[str, set[int]] = {}

    def tally(self, kind: str, column: str, rows: np.ndarray) -> _Tally:
        """Add sorted file rows that have one kind of problem in ``column``."""
        key = (kind, column)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = _Tally(first_row=int(rows[0]))
        tally.count += int(rows.size)
        return tally


def _scan_list_column(
    column: pa.Array, plan: _ListPlan, start: int, findings: _FileFindings
) -> None:
    if column.null_count:
        kind = _Kind.UNPAIRED if plan.is_modality else _Kind.NULL_VALUE
        findings.tally(kind, plan.column, start + _null_rows(column))

    if not plan.fixed_size:
        lengths = pc.list_value_length(column)
        seen = findings.lengths.setdefault(plan.column, set())
        seen.update(value for value in pc.unique(lengths).to_pylist() if value is not None)
        lengths = lengths.fill_null(plan.dim).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != plan.dim)
        if bad.size:
            tally = findings.tally(_Kind.RAGGED, plan.column, start + bad)
            if tally.detail is None:
                tally.detail = int(lengths[bad[0]])

    values = column.flatten()
    valid = None
    if values.null_count:
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(column).to_numpy()
        findings.tally(_Kind.NULL_VALUE, plan.column, start + np.unique(parents[~valid]))
    if plan.is_float:
        numbers = values.to_numpy(zero_copy_only=False)
        finite = np.isfinite(numbers)
        if valid is not None:
            finite |= ~valid
        if not finite.all():
            parents = pc.list_parent_indices(column).to_numpy()
            findings.tally(_Kind.NONFINITE, plan.column, start + np.unique(parents[~finite]))


def _scan_prefix_columns(
    batch: pa.RecordBatch, plan: _PrefixPlan, start: int, findings: _FileFindings
) -> None:
    null_per_row = np.zeros(batch.num_rows, dtype=np.int64)
    null_masks: dict[str, np.ndarray] = {}
    for name in plan.columns:
        column = batch.column(name)
        if column.null_count:
            mask = column.is_null().to_numpy(zero_copy_only=False)
            null_masks[name] = mask
            null_per_row += mask
        if name in plan.float_columns:
            numbers = column.to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(numbers)
            if name in null_masks:
                bad &= ~null_masks[name]
            if bad.any():
                findings.tally(_Kind.NONFINITE, name, start + np.flatnonzero(bad))

    if not null_masks:
        return
    all_null = null_per_row == len(plan.columns)
    if all_null.any():
        kind = _Kind.UNPAIRED if plan.is_modality else _Kind.NULL_VALUE
        findings.tally(kind, plan.display, start + np.flatnonzero(all_null))
    for name, mask in null_masks.items():
        partial = np.flatnonzero(mask & ~all_null)
        if partial.size:
            findings.tally(_Kind.NULL_VALUE, name, start + partial)


def _report_findings(
    entry: str, findings: _FileFindings, manifest: DatasetManifest, problems: _ProblemCollector
) -> None:
    dims = {spec.column: spec.dim for _, _, spec in _feature_groups(manifest) if spec.column is not None}
    for (kind, column), tally in findings.tallies.items():
        rows = f"{_count(tally.count, 'row')} in this file"
        if kind == _Kind.UNPAIRED:
            message = (
                f"the modality is null, so this sample has only one modality ({rows}). "
                "Drop unpaired rows or fill in both modalities"
            )
        elif kind == _Kind.NONFINITE:
            message = f"NaN or infinite value ({rows}, first shown). Replace or drop these rows"
        elif kind == _Kind.NULL_VALUE:
            message = f"null feature value ({rows}, first shown). Fill in or drop these rows"
        elif kind == _Kind.RAGGED:
            kind, message = _ragged_message(tally, findings.lengths[column], dims[column], rows)
        elif kind in (_Kind.NULL_ID, _Kind.NULL_LABEL):
            message = f"null value ({rows}, first shown). Every row needs a value"
        elif kind == _Kind.SPLIT_VALUE:
            assert manifest.split is not None
            shown = ", ".join(repr(value) for value in sorted(tally.detail)[:_MAX_LISTED_VALUES])
            values = "split value" if len(tally.detail) == 1 else "split values"
            message = (
                f"{values} {shown} not listed in split.train {list(manifest.split.train)} or split.test "
                f"{list(manifest.split.test)} ({rows}, first shown). Add them to the manifest or fix the column"
            )
        else:
            raise AssertionError(f"Unhandled problem kind {kind!r}.")
        problems.add(kind, entry, column, tally.first_row, message)


def _ragged_message(tally: _Tally, lengths: set[int], dim: int, rows: str) -> tuple[str, str]:
    if len(lengths) == 1:
        (length,) = lengths
        message = f"every row contains {length} values, but dim is {dim}. Fix dim in the manifest or the column"
        return _Kind.DIMENSION, message
    return _Kind.RAGGED, (
        f"list rows differ in length: this row has {_count(tally.detail, 'value')}, but dim is {dim} "
        f"(rows of another length: {rows}). Every row needs exactly {dim} values"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# Validation: entry point
# --------------------------------------------------------------------------------------------


def validate_dataset(manifest: ManifestLike) -> DatasetSummary:
    """Check a dataset's files against its manifest, streaming them row group by row group.

    Checks:

    - missing or unreadable files, and schemas that differ between files;
    - missing columns, including prefix columns not numbered ``0..d-1``;
    - non-numeric feature columns, a feature dimension other than ``dim``, ragged list columns;
    - NaN, infinite and null feature values, and unpaired rows (one modality null);
    - null and duplicate sample ids, across files too;
    - null labels and labels with a single class;
    - split values not listed in the manifest, and an empty train or test split.

    Only the manifest's columns are read, in batches of at most 65,536 rows from memory-mapped
    files.

    Args:
        manifest: Manifest path or a loaded :class:`DatasetManifest`.

    Returns:
        A :class:`DatasetSummary` of the valid dataset.

    Raises:
        DatasetValidationError: With every problem found (at most :data:`MAX_PROBLEMS_PER_KIND`
            per kind, and a count of the rest). Row-level problems name the file, the column and
            the first bad row within the file (0-based), and count the bad rows of that file.

    NOTE: The duplicate-id check keeps all ids in memory (8 bytes per integer id plus string
    bytes), and the distinct values of each label are kept as a Python set.
    """
    manifest = _as_manifest(manifest)
    problems = _ProblemCollector()
    scan = _DatasetScan(manifest)
    reference: tuple[str, pa.Schema] | None = None
    offset = 0

    for entry, path in zip(manifest.files, manifest.file_paths()):
        scan.file_offsets.append(offset)
        parquet = _open_for_validation(entry, path, problems)
        if parquet is None:
            scan.rows_per_file.append(0)
            scan.split_complete = False
            scan.labels_complete = dict.fromkeys(scan.labels_complete, False)
            continue

        schema = parquet.schema_arrow
        if reference is None:
            reference = (entry, schema)
        else:
            _compare_schema(entry, schema, reference[0], reference[1], problems)

        plan = _plan_file(manifest, entry, schema, problems)
        if manifest.split is not None and plan.split_column is None:
            scan.split_complete = False
        for label in manifest.labels:
            if label not in plan.labels:
                scan.labels_complete[label] = False

        n_rows = parquet.metadata.num_rows
        scan.rows_per_file.append(n_rows)
        scan.scan_file(entry, parquet, plan, offset, problems)
        offset += n_rows

    scan.finish(problems)
    if problems:
        raise DatasetValidationError(problems.problems(), manifest.source)

    summary = DatasetSummary(
        name=manifest.name,
        files=[path.resolve() for path in manifest.file_paths()],
        rows_per_file=list(scan.rows_per_file),
        n_rows=offset,
        dims=(manifest.x1.dim, manifest.x2.dim),
        label_classes={label: sorted(classes) for label, classes in scan.label_classes.items()},
        split_counts=dict(scan.split_counts) if manifest.split is not None else None,
    )
    _logger.info(
        "Dataset %r is valid: %d rows in %d file(s), dims %s, split %s.",
        summary.name,
        summary.n_rows,
        len(summary.files),
        summary.dims,
        summary.split_counts,
    )
    return summary


def _as_manifest(manifest: ManifestLike) -> DatasetManifest:
    if isinstance(manifest, DatasetManifest):
        return manifest
    if isinstance(manifest, (str, os.PathLike)):
        return load_manifest(manifest)
    raise TypeError(f"manifest must be a path or a DatasetManifest, got {type(manifest).__name__}.")


def _open_for_validation(entry: str, path: Path, problems: _ProblemCollector) -> pq.ParquetFile | None:
    if not path.is_file():
        problems.add(
            _Kind.MISSING_FILE, entry, None, None, f"file not found at {path}. Fix the path in files or create the file"
        )
        return None
    try:
        return pq.ParquetFile(path, memory_map=True)
    except (pa.ArrowException, OSError) as exc:
        problems.add(_Kind.UNREADABLE, entry, None, None, f"cannot be read as Parquet: {exc}")
        return None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_split(manifest: ManifestLike, *, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read the train/test split of a dataset over global row numbers.

    With a split column, only that column is read (row counts come from the file footers). Rows
    with a null split value belong to neither split. Without a split column, ``test_fraction``
    of the rows (rounded, at least 1 and at most ``N - 1``) are drawn as the test split with a
    permutation from ``numpy.random.default_rng(seed)``, the same on every call.

    Args:
        manifest: Manifest path or a loaded :class:`DatasetManifest`.
        test_fraction: Fraction of rows in the test split, in (0, 1). Used only without a split column.
        seed: Seed of the random split. Used only without a split column.

    Returns:
        ``(train_index, test_index)``: sorted int64 global row numbers, disjoint, both non-empty.

    Raises:
        DatasetValidationError: If a file is missing or unreadable, or the split column is
            missing, contains values not listed in the manifest or leaves a split empty. Also if a
            random split is requested for fewer than 2 rows.
        ValueError: If ``test_fraction`` or ``seed`` is invalid.
    """
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}.")

    manifest = _as_manifest(manifest)
    parquets = _open_all(manifest)
    n_rows = sum(parquet.metadata.num_rows for _, parquet in parquets)
    split = manifest.split
    if split is None:
        return _random_split(manifest, n_rows, float(test_fraction), int(seed))

    problems = _ProblemCollector()
    train_parts, test_parts = [], []
    offset = 0
    for entry, parquet in parquets:
        if parquet.schema_arrow.get_field_index(split.column) < 0:
            _require_column(split.column, "split.column", entry, parquet.schema_arrow, problems)
            offset += parquet.metadata.num_rows
            continue
        findings = _FileFindings()
        start = 0
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[split.column]):
            train, test, _ = _classify_split(batch.column(0), split, start, findings)
            train_parts.append(offset + start + np.flatnonzero(train))
            test_parts.append(offset + start + np.flatnonzero(test))
            start += batch.num_rows
        _report_findings(entry, findings, manifest, problems)
        offset += parquet.metadata.num_rows

    train_index = np.concatenate(train_parts).astype(np.int64) if train_parts else np.empty(0, np.int64)
    test_index = np.concatenate(test_parts).astype(np.int64) if test_parts else np.empty(0, np.int64)
    if not problems:
        for name, index in (("train", train_index), ("test", test_index)):
            if index.size == 0:
                problems.add(_Kind.EMPTY_SPLIT, None, split.column, None, f"the {name} split is empty")
    if problems:
        raise DatasetValidationError(problems.problems(), manifest.source)
    return train_index, test_index


def _random_split(
    manifest: DatasetManifest, n_rows: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if n_rows < 2:
        raise DatasetValidationError(
            [DatasetProblem(None, None, None, f"a random train/test split needs at least 2 rows, got {n_rows}")],
            manifest.source,
        )
    n_test = min(max(int(round(n_rows * test_fraction)), 1), n_rows - 1)
    permutation = np.random.default_rng(seed).permutation(n_rows)
    test_index = np.sort(permutation[:n_test]).astype(np.int64)
    train_index = np.sort(permutation[n_test:]).astype(np.int64)
    return train_index, test_index


def read_dataset(manifest: ManifestLike, *, test_fraction: float = 0.2, seed: int = 0) -> PairedDataset:
    """Validate a dataset and read it into memory.

    The files are memory-mapped and read one row group at a time, only the manifest's columns.
    Each fixed-size list row group is viewed as an ``(n, d)`` array over its flat values buffer
    and copied once, into the output array.

    Args:
        manifest: Manifest path or a loaded :class:`DatasetManifest`.
        test_fraction: Fraction of rows in the test split, in (0, 1). Used only without a split column.
        seed: Seed of the random split. Used only without a split column.

    Returns:
        A :class:`PairedDataset` named after the manifest: ``x1`` ``(N, d1)`` and ``x2``
        ``(N, d2)`` float32, labels ``(N,)`` int64 (strings as sorted codes), latents ``(N, m)``
        float32, sorted train and test indices.

    Raises:
        DatasetValidationError: If :func:`validate_dataset` finds problems.
        ValueError: If ``test_fraction`` or ``seed`` is invalid.
    """
    manifest = _as_manifest(manifest)
    summary = validate_dataset(manifest)
    train_index, test_index = read_split(manifest, test_fraction=test_fraction, seed=seed)
    parquets = _open_all(manifest)
    classes = {
        label: values for label, values in summary.label_classes.items() if values and isinstance(values[0], str)
    }

    x1, x2, labels, latents = _gather(manifest, parquets, None, classes, with_latents=True)
    return PairedDataset(
        x1=x1,
        x2=x2,
        labels=labels,
        latents=latents,
        train_index=train_index,
        test_index=test_index,
        name=manifest.name,
    )


def read_rows(manifest: ManifestLike, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Read the features and labels of selected global rows, in the given order.

    Row groups that contain none of the rows are skipped, and of the others only the requested
    rows are kept, so memory use is the output plus one row group. Duplicate rows are allowed. The
    dataset is not validated here: run :func:`validate_dataset` once beforehand (for example in
    the driver before starting workers). String labels need their classes over the whole
    dataset, so their columns (only those) are read in full to compute the codes.

    Args:
        manifest: Manifest path or a loaded :class:`DatasetManifest`.
        rows: Global row numbers, shape ``(n,)``, integers in ``[0, N)``.

    Returns:
        ``(x1, x2, labels)``: float32 arrays ``(n, d1)`` and ``(n, d2)`` and label name to
        int64 ``(n,)``, equal to ``dataset.x1[rows]`` etc. of :func:`read_dataset`.

    Raises:
        DatasetValidationError: If a file is missing or unreadable or lacks a needed column.
        ValueError: If ``rows`` is not a 1-D integer array or contains a row outside ``[0, N)``.

    Example:
        >>> shard = dataset.shard_indices(rank, world_size, seed)  # doctest: +SKIP
        >>> x1, x2, labels = read_rows("data/dataset.yaml", shard)  # doctest: +SKIP
    """
    manifest = _as_manifest(manifest)
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise ValueError(f"rows must be a 1-D integer array, got shape {rows.shape} and dtype {rows.dtype}.")
    rows = rows.astype(np.int64, copy=False)
    x1, x2, labels, _ = _gather_rows(manifest, rows, with_latents=False)
    return x1, x2, labels


def _gather_rows(
    manifest: DatasetManifest, rows: np.ndarray, *, with_latents: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Check that ``rows`` lie in the dataset and read their features, labels and latents."""
    parquets = _open_all(manifest)
    n_rows = sum(parquet.metadata.num_rows for _, parquet in parquets)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(
            f"rows has values in [{int(rows.min())}, {int(rows.max())}], outside the dataset's range [0, {n_rows})."
        )
    classes = _string_label_classes(manifest, parquets)
    # NOTE: Only column presence is checked here. Null rows, ragged lists or a wrong list size in
    # unvalidated files surface as pyarrow or NumPy errors without the file and row.
    return _gather(manifest, parquets, rows, classes, with_latents=with_latents)


def read_view(manifest: ManifestLike, train_rows: np.ndarray, test_rows: np.ndarray) -> PairedDataset:
    """Read only the given training and held-out rows, as a dataset of their own.

    A data-parallel worker calls this with its shard and the held-out rows its diagnostics use,
    so it keeps those rows in memory rather than the whole dataset. Row ``i`` of the result is global row
    ``train_rows[i]`` for ``i < len(train_rows)``, then the rows of ``test_rows`` follow. Like
    :func:`read_rows`, it does not validate the data.

    Args:
        manifest: Manifest path or a loaded :class:`DatasetManifest`.
        train_rows: Global rows of the view's training split, shape ``(n_train,)``, non-empty.
        test_rows: Global rows of the view's held-out split, shape ``(n_test,)``, disjoint from
            ``train_rows``.

    Returns:
        A :class:`PairedDataset` of ``n_train + n_test`` rows with latents, whose ``train_index``
        is ``0 .. n_train - 1`` and ``test_index`` the rest.
    """
    manifest = _as_manifest(manifest)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    test_rows = np.asarray(test_rows, dtype=np.int64)
    rows = np.concatenate([train_rows, test_rows])
    x1, x2, labels, latents = _gather_rows(manifest, rows, with_latents=True)
    return PairedDataset(
        x1=x1,
        x2=x2,
        labels=labels,
        latents=latents,
        train_index=np.arange(train_rows.size, dtype=np.int64),
        test_index=np.arange(train_rows.size, rows.size, dtype=np.int64),
        name=manifest.name,
    )


def _open_all(manifest: DatasetManifest) -> list[tuple[str, pq.ParquetFile]]:
    problems = _ProblemCollector()
    parquets = []
    for entry, path in zip(manifest.files, manifest.file_paths()):
        parquet = _open_for_validation(entry, path, problems)
        if parquet is not None:
            parquets.append((entry, parquet))
    if problems:
        raise DatasetValidationError(problems.problems(), manifest.source)
    return parquets


def _string_label_classes(
    manifest: DatasetManifest, parquets: list[tuple[str, pq.ParquetFile]]
) -> dict[str, list[str]]:
    """Sorted distinct values of every string label over all files, reading only those columns."""
    problems = _ProblemCollector()
    string_labels = []
    for label in manifest.labels:
        entry, parquet = parquets[0]
        data_type = _require_column(label, "labels", entry, parquet.schema_arrow, problems)
        if data_type is not None and _is_string(data_type):
            string_labels.append(label)
    if problems:
        raise DatasetValidationError(problems.problems(), manifest.source)

    classes: dict[str, set[str]] = {label: set() for label in string_labels}
    if not string_labels:
        return {}
    for _, parquet in parquets:
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=string_labels):
            for label in string_labels:
                values = pc.unique(_decode(batch.column(label))).to_pylist()
                classes[label].update(value for value in values if value is not None)
    return {label: sorted(values) for label, values in classes.items()}


def _gather(
    manifest: DatasetManifest,
    parquets: list[tuple[str, pq.ParquetFile]],
    rows: np.ndarray | None,
    label_classes: dict[str, list[str]],
    *,
    with_latents: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read features, labels and optionally latents of ``rows`` (all rows when ``None``)."""
    n_total = sum(parquet.metadata.num_rows for _, parquet in parquets)
    n_out = n_total if rows is None else int(rows.size)
    # X1 and X2 come first, then the latents in manifest order.
    groups = [manifest.x1, manifest.x2]
    if with_latents:
        groups += list(manifest.latents.values())
    features = [np.empty((n_out, spec.dim), dtype=np.float32) for spec in groups]
    labels = {label: np.empty(n_out, dtype=np.int64) for label in manifest.labels}
    class_arrays = {label: pa.array(values, type=pa.string()) for label, values in label_classes.items()}

    columns = [name for spec in groups for name in spec.column_names()] + list(manifest.labels)
    _require_columns(manifest, parquets, columns)

    if rows is not None:
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]

    offset = 0
    for _, parquet in parquets:
        for group_index, (group_start, group_stop) in enumerate(_row_group_bounds(parquet, offset)):
            if rows is None:
                targets: slice | np.ndarray = slice(group_start, group_stop)
                local = None
            else:
                low = int(np.searchsorted(sorted_rows, group_start, side="left"))
                high = int(np.searchsorted(sorted_rows, group_stop, side="left"))
                if low == high:
                    continue
                targets = order[low:high]
                local = sorted_rows[low:high] - group_start

            table = parquet.read_row_group(group_index, columns=columns)
            for out, spec in zip(features, groups):
                _fill_features(out, targets, table, spec, local)
            for label in manifest.labels:
                _fill_label(labels[label], targets, table.column(label), class_arrays.get(label), local)
        offset += parquet.metadata.num_rows

    latents = dict(zip(manifest.latents, features[2:]))
    return features[0], features[1], labels, latents


def _row_group_bounds(parquet: pq.ParquetFile, offset: int) -> Iterator[tuple[int, int]]:
    start = offset
    for index in range(parquet.metadata.num_row_groups):
        stop = start + parquet.metadata.row_group(index).num_rows
        yield start, stop
        start = stop


def _require_columns(
    manifest: DatasetManifest, parquets: list[tuple[str, pq.ParquetFile]], columns: Sequence[str]
) -> None:
    problems = _ProblemCollector()
    for entry, parquet in parquets:
        schema = parquet.schema_arrow
        for column in columns:
            if schema.get_field_index(column) < 0:
                _require_column(column, "manifest", entry, schema, problems)
    if problems:
        raise DatasetValidationError(problems.problems(), manifest.source)


def _fill_features(
    out: np.ndarray, targets: slice | np.ndarray, table: pa.Table, spec: ModalityColumns, local: np.ndarray | None
) -> None:
    """Copy one row group's features into ``out[targets]``, keeping rows ``local`` when given."""
    if spec.column is None:
        for index, name in enumerate(spec.column_names()):
            values = table.column(name).to_numpy()
            out[targets, index] = values if local is None else values[local]
        return

    chunk_start = 0
    for chunk in table.column(spec.column).chunks:
        n_chunk = len(chunk)
        # For float32 values without nulls, flatten() and to_numpy() are views of the column's
        # buffer, so the assignment below is the only copy.
        view = chunk.flatten().to_numpy(zero_copy_only=False).reshape(n_chunk, spec.dim)
        if local is None:
            assert isinstance(targets, slice)
            start = targets.start + chunk_start
            out[start : start + n_chunk] = view
        else:
            assert isinstance(targets, np.ndarray)
            inside = (local >= chunk_start) & (local < chunk_start + n_chunk)
            out[targets[inside]] = view[local[inside] - chunk_start]
        chunk_start += n_chunk


def _fill_label(
    out: np.ndarray,
    targets: slice | np.ndarray,
    column: pa.ChunkedArray,
    classes: pa.Array | None,
    local: np.ndarray | None,
) -> None:
    column = pa.chunked_array([_decode(chunk) for chunk in column.chunks], type=_value_type(column.type))
    if classes is not None:
        values = pc.index_in(column.cast(pa.string()), value_set=classes).to_numpy()
    else:
        values = column.to_numpy()
    out[targets] = values if local is None else values[local]
