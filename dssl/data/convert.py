"""Convert users' .npz files, CSV tables and SMILES tables into the dssl Parquet dataset format.

Every converter validates the whole input before it writes anything and raises one
:class:`ConversionError` that lists the problems found. The dataset is written by
:func:`dssl.data.parquet.write_paired_dataset` into a temporary folder next to ``out_dir`` and
renamed into place only after the write succeeded, so a failed conversion leaves ``out_dir``
as it was.

Example:
    >>> import numpy as np
    >>> np.savez("pairs.npz", x1=np.ones((4, 3), np.float32), x2=np.zeros((4, 2), np.float32))
    >>> convert_npz("pairs.npz", "pairs_dataset")  # doctest: +SKIP
    PosixPath('pairs_dataset/dataset.yaml')
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dssl.data.dataset import PairedDataset

_logger = logging.getLogger(__name__)

Layout = Literal["list", "columns"]

_LAYOUTS: tuple[str, ...] = ("list", "columns")
_SPLIT_VALUES: tuple[str, ...] = ("train", "test")

# At most this many problems are printed in an error message. ConversionError.problems keeps all.
_MAX_PROBLEMS_IN_MESSAGE = 20
# At most this many bad rows are named per column (or key) and kind of problem.
_MAX_ROWS_PER_PROBLEM = 5

# A canonical integer: no sign on zero, no leading zeros, no spaces, so "007" stays a string.
_CANONICAL_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
# The "[hh:mm:ss] " time stamp that RDKit puts before each logged line.
_RDKIT_LOG_TIMESTAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}\]\s*")


class ConversionError(ValueError):
    """Invalid input to a converter, or a conversion that could not be written.

    Each problem is one sentence that names the file, the key or column, the row or line where
    it applies, and how to fix it. ``str(error)`` lists the first problems, one per line.

    Attributes:
        problems: Every problem found, in the order found.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(_format_problems(self.problems))


def convert_npz(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    x1_key: str = "x1",
    x2_key: str = "x2",
    label_keys: Sequence[str] = (),
    id_key: str | None = None,
    split_key: str | None = None,
    modality_names: tuple[str, str] = ("x1", "x2"),
    layout: Layout = "list",
    name: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    rows_per_file: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the arrays of a NumPy ``.npz`` file into a Parquet dataset with a manifest.

    The file is read with ``numpy.load(path, allow_pickle=False)``, so object arrays are rejected.

    Args:
        path: The ``.npz`` file.
        out_dir: Folder to write ``data.parquet`` (or several ``data-*.parquet``) and
            ``dataset.yaml`` into. It must not exist or be empty unless ``overwrite`` is true.
        x1_key: Key of the first modality, a 2-D numeric array of shape ``(N, d1)``.
        x2_key: Key of the second modality, a 2-D numeric array of shape ``(N, d2)``.
        label_keys: Keys of class labels, each a 1-D array of shape ``(N,)`` holding integers
            (integral floats are accepted) or strings. Each key becomes a label of that name.
        id_key: Key of unique sample ids of shape ``(N,)`` (integers or strings). Without it the
            ids are ``0 .. N-1``.
        split_key: Key of a string array of shape ``(N,)`` whose values are ``"train"`` or
            ``"test"``, each at least once. Without it a seeded random split is made and
            written.
        modality_names: Names of the two modalities in the manifest, X1 first.
        layout: ``"list"`` stores each modality as one fixed-size list column, ``"columns"`` as
            one numeric column per feature.
        name: Dataset name in the manifest. Defaults to the file name without its suffix.
        test_fraction: Fraction of rows in the random test split, in ``(0, 1)``, rounded so
            that each split has at least one row. Used only without ``split_key``.
        seed: Seed of the random split. Used only without ``split_key``.
        rows_per_file: Maximum rows per Parquet file, or ``None`` for a single file.
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        The path of the written manifest, ``out_dir / "dataset.yaml"``.

    Raises:
        ConversionError: If an argument is invalid, the file cannot be read or a key is
            missing. Also if an array has the wrong shape or type, a value is non-finite, an id
            is duplicated or a split value is not ``"train"`` or ``"test"``. Also if ``out_dir``
            is not empty or the write fails. Nothing is written to ``out_dir`` in any of these
            cases.
    """
    source_path = Path(path)
    label_keys = _validate_key_list("label_keys", label_keys)
    _validate_common_options(modality_names, layout, name, test_fraction, seed, rows_per_file)
    out_path = _check_out_dir(out_dir, source_path, overwrite)

    arrays = _load_npz(source_path, [x1_key, x2_key, *label_keys, id_key, split_key])
    source = _Source(path=source_path, field_kind="key", describe_row=lambda row: f"row index {row}")
    problems: list[str] = []

    x1 = _npz_features(source, x1_key, arrays[x1_key], problems)
    x2 = _npz_features(source, x2_key, arrays[x2_key], problems)
    if x1 is None or x2 is None:
        raise ConversionError(problems)
    if x1.shape[0] != x2.shape[0]:
        problems.append(
            f"{source.where(None, None)}: key {x1_key!r} has shape {x1.shape} but key {x2_key!r} has shape "
            f"{x2.shape}. Both modalities need the same number of rows, one row per paired sample."
        )
        raise ConversionError(problems)
    n_rows = int(x1.shape[0])

    columns = _ColumnsToEncode(
        labels={key: arrays[key] for key in label_keys},
        ids=None if id_key is None else (id_key, arrays[id_key]),
        split=None if split_key is None else (split_key, arrays[split_key]),
    )
    dataset_name = name if name is not None else source_path.stem
    dataset, ids, label_values = _assemble_dataset(
        source, dataset_name, x1, x2, columns, n_rows, test_fraction, seed, problems, parse_integers=False
    )
    return _write_into_place(
        dataset, out_path, modality_names=modality_names, layout=layout, ids=ids,
        label_values=label_values, rows_per_file=rows_per_file, overwrite=overwrite, source=source,
    )


def convert_csv(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    x1_prefix: str,
    x2_prefix: str,
    label_columns: Sequence[str] = (),
    id_column: str | None = None,
    split_column: str | None = None,
    modality_names: tuple[str, str] = ("x1", "x2"),
    layout: Layout = "list",
    name: str | None = None,
    delimiter: str = ",",
    test_fraction: float = 0.2,
    seed: int = 0,
    rows_per_file: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CSV table with two groups of feature columns into a Parquet dataset.

    The first line is the header. Each modality is the group of columns whose names start with
    its prefix, in file order. Feature cells must be finite numbers. The file is read with
    ``pyarrow.csv``: blank lines are skipped, and a UTF-8 byte order mark is removed.

    Args:
        path: The CSV file, UTF-8 encoded.
        out_dir: Folder to write the Parquet files and ``dataset.yaml`` into. It must not exist
            or be empty unless ``overwrite`` is true.
        x1_prefix: Name prefix of the first modality's columns, for example ``"left_"``.
        x2_prefix: Name prefix of the second modality's columns.
        label_columns: Class label columns. A column whose cells are all integers (written
            without leading zeros) is stored as integers, any other as strings.
        id_column: Column of unique sample ids, stored as integers under the same rule as
            labels. Without it the ids are ``0 .. N-1``.
        split_column: Column whose cells are ``train`` or ``test``, each at least once. Without
            it a seeded random split is made and written.
        modality_names: Names of the two modalities in the manifest, X1 first.
        layout: ``"list"`` stores each modality as one fixed-size list column, ``"columns"`` as
            one numeric column per feature.
        name: Dataset name in the manifest. Defaults to the file name without its suffix.
        delimiter: Field delimiter, one character.
        test_fraction: Fraction of rows in the random test split, in ``(0, 1)``, rounded so
            that each split has at least one row. Used only without ``split_column``.
        seed: Seed of the random split. Used only without ``split_column``.
        rows_per_file: Maximum rows per Parquet file, or ``None`` for a single file.
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        The path of the written manifest, ``out_dir / "dataset.yaml"``.

    Raises:
        ConversionError: If an argument is invalid, the file cannot be parsed, a named column is
            missing, no column has a prefix or a column matches both prefixes. Also if a cell is
            empty, non-numeric or non-finite (named by column and 1-based line), an id is
            duplicated or a split value is invalid. Also if ``out_dir`` is not empty or the
            write fails. Nothing is written to ``out_dir`` in any of these cases.
    """
    source_path = Path(path)
    label_columns = _validate_key_list("label_columns", label_columns)
    _validate_common_options(modality_names, layout, name, test_fraction, seed, rows_per_file)
    _validate_prefixes(x1_prefix, x2_prefix)
    out_path = _check_out_dir(out_dir, source_path, overwrite)

    named_columns = [*label_columns, id_column, split_column]
    table = _read_csv(source_path, delimiter, string_columns=[column for column in named_columns if column])
    source = table.source()
    problems: list[str] = []

    _check_named_columns(table, named_columns, problems)
    x1_columns, x2_columns = _feature_column_groups(table, x1_prefix, x2_prefix, named_columns, problems)
    if problems:
        raise ConversionError(problems)

    x1 = _csv_features(table, x1_columns, problems)
    x2 = _csv_features(table, x2_columns, problems)
    columns = _ColumnsToEncode(
        labels={column: table.strings(column) for column in label_columns},
        ids=None if id_column is None else (id_column, table.strings(id_column)),
        split=None if split_column is None else (split_column, table.strings(split_column)),
    )
    dataset_name = name if name is not None else source_path.stem
    dataset, ids, label_values = _assemble_dataset(
        source, dataset_name, x1, x2, columns, table.n_rows, test_fraction, seed, problems, parse_integers=True
    )
    return _write_into_place(
        dataset, out_path, modality_names=modality_names, layout=layout, ids=ids,
        label_values=label_values, rows_per_file=rows_per_file, overwrite=overwrite, source=source,
    )


def smiles_to_morgan(smiles: Sequence[str], *, radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """Compute Morgan (ECFP-like) bit fingerprints of molecules given as SMILES.

    Uses ``rdkit.Chem.rdFingerprintGenerator.GetMorganGenerator`` with its defaults besides
    ``radius`` and ``fpSize``, so chirality is ignored. The fingerprint does not depend on how the
    SMILES is written: ``"OCC"`` and ``"CCO"`` give the same row. RDKit's parse messages are kept
    off stderr and reported in the error instead.

    Args:
        smiles: One SMILES string per molecule.
        radius: Radius of the circular atom environments, at least 0 (2 gives ECFP4-like bits).
        n_bits: Fingerprint length, at least 1.

    Returns:
        Fingerprints of shape ``(N, n_bits)``, float32, with values 0 or 1.

    Raises:
        ConversionError: If ``smiles`` is a single string, ``radius`` or ``n_bits`` is invalid,
            or any entry is empty, not a string or not a valid molecule. The error lists every
            such entry with its 0-based row index and RDKit's reason.

    Example:
        >>> smiles_to_morgan(["CCO", "c1ccccc1"], n_bits=64).shape
        (2, 64)
    """
    smiles_list = _validate_smiles_sequence(smiles)
    _validate_fingerprint_options(radius, n_bits)

    fingerprints, failures = _morgan_fingerprints(smiles_list, radius, n_bits)
    if failures:
        raise ConversionError(
            [
                f"SMILES at row index {row} ({text!r}): {reason}. Correct the SMILES or remove the row."
                for row, text, reason in failures
            ]
        )
    return fingerprints


def convert_smiles_table(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    smiles_column: str,
    x1_prefix: str,
    label_columns: Sequence[str] = (),
    id_column: str | None = None,
    split_column: str | None = None,
    radius: int = 2,
    n_bits: int = 2048,
    molecule_modality: str = "molecule",
    profile_modality: str = "profile",
    layout: Layout = "list",
    name: str | None = None,
    delimiter: str = ",",
    test_fraction: float = 0.2,
    seed: int = 0,
    rows_per_file: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CSV of phenotype profiles paired with perturbing molecules into a Parquet dataset.

    Each row is one profile (for example a cell-painting or L1000 signature) and the SMILES of
    the molecule that caused it. X1 is the profile (the columns whose names start with
    ``x1_prefix``, in file order) and X2 the Morgan fingerprint of the SMILES, as computed by
    :func:`smiles_to_morgan`. Rows of the same molecule share one fingerprint computation.

    NOTE: The manifest has no field for ``radius`` and ``n_bits``, so they are only logged.
    Record them with the dataset if fingerprints of new molecules must match later.

    Args:
        path: The CSV file, UTF-8 encoded, with a header line.
        out_dir: Folder to write the Parquet files and ``dataset.yaml`` into. It must not exist
            or be empty unless ``overwrite`` is true.
        smiles_column: Column with one SMILES per row.
        x1_prefix: Name prefix of the profile feature columns.
        label_columns: Class label columns, stored as in :func:`convert_csv`.
        id_column: Column of unique sample ids. Without it the ids are ``0 .. N-1``.
        split_column: Column whose cells are ``train`` or ``test``, each at least once. Without
            it a seeded random split is made and written.
        radius: Morgan radius, at least 0.
        n_bits: Fingerprint length, at least 1. X2 has shape ``(N, n_bits)``.
        molecule_modality: Manifest name of the fingerprint modality (X2).
        profile_modality: Manifest name of the profile modality (X1).
        layout: ``"list"`` or ``"columns"``, as in :func:`convert_csv`.
        name: Dataset name in the manifest. Defaults to the file name without its suffix.
        delimiter: Field delimiter, one character.
        test_fraction: Fraction of rows in the random test split, in ``(0, 1)``, rounded so
            that each split has at least one row. Used only without ``split_column``.
        seed: Seed of the random split. Used only without ``split_column``.
        rows_per_file: Maximum rows per Parquet file, or ``None`` for a single file.
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        The path of the written manifest, ``out_dir / "dataset.yaml"``.

    Raises:
        ConversionError: For every error of :func:`convert_csv`, and for each empty or
            unparsable SMILES, named by its 1-based CSV line. Nothing is written to
            ``out_dir`` in any of these cases.
    """
    source_path = Path(path)
    label_columns = _validate_key_list("label_columns", label_columns)
    modality_names = (profile_modality, molecule_modality)
    _validate_common_options(modality_names, layout, name, test_fraction, seed, rows_per_file)
    _validate_fingerprint_options(radius, n_bits)
    if not isinstance(x1_prefix, str) or not x1_prefix:
        raise ConversionError([f"x1_prefix must be a non-empty string, got {x1_prefix!r}."])
    if not isinstance(smiles_column, str) or not smiles_column:
        raise ConversionError([f"smiles_column must be a non-empty column name, got {smiles_column!r}."])
    out_path = _check_out_dir(out_dir, source_path, overwrite)

    named_columns = [smiles_column, *label_columns, id_column, split_column]
    table = _read_csv(source_path, delimiter, string_columns=[column for column in named_columns if column])
    source = table.source()
    problems: list[str] = []

    _check_named_columns(table, named_columns, problems)
    profile_columns = _prefixed_columns(table, x1_prefix, "x1_prefix", named_columns, problems)
    if problems:
        raise ConversionError(problems)

    x1 = _csv_features(table, profile_columns, problems)
    x2 = _csv_fingerprints(table, smiles_column, radius, n_bits, problems)
    columns = _ColumnsToEncode(
        labels={column: table.strings(column) for column in label_columns},
        ids=None if id_column is None else (id_column, table.strings(id_column)),
        split=None if split_column is None else (split_column, table.strings(split_column)),
    )
    dataset_name = name if name is not None else source_path.stem
    dataset, ids, label_values = _assemble_dataset(
        source, dataset_name, x1, x2, columns, table.n_rows, test_fraction, seed, problems, parse_integers=True
    )
    _logger.info(
        "Computed Morgan fingerprints (radius=%d, n_bits=%d) for %d rows of %s.",
        radius, n_bits, table.n_rows, source_path,
    )
    return _write_into_place(
        dataset, out_path, modality_names=modality_names, layout=layout, ids=ids,
        label_values=label_values, rows_per_file=rows_per_file, overwrite=overwrite, source=source,
    )


# ---------------------------------------------------------------------------------------------
# Problem reporting


@dataclass(frozen=True)
class _Source:
    """Input file plus how its fields (keys or columns) and rows are named in messages."""

    path: Path
    field_kind: str
    describe_row: Callable[[int], str]

    def where(self, field_name: str | None, row: int | None) -> str:
        parts = [str(self.path)]
        if field_name is not None:
            parts.append(f"{self.field_kind} {field_name!r}")
        if row is not None:
            parts.append(self.describe_row(row))
        return ", ".join(parts)


def _format_problems(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    listed = problems[:_MAX_PROBLEMS_IN_MESSAGE]
    lines = [f"{len(problems)} problems found:", *(f"  - {problem}" for problem in listed)]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more (see ConversionError.problems).")
    return "\n".join(lines)


def _report_rows(
    source: _Source, field_name: str, rows: np.ndarray, describe: Callable[[int], str], fix: str, problems: list[str]
) -> None:
    """Append one problem per bad row, at most ``_MAX_ROWS_PER_PROBLEM``, plus a count of the rest."""
    for row in rows[:_MAX_ROWS_PER_PROBLEM]:
        problems.append(f"{source.where(field_name, int(row))}: {describe(int(row))}. {fix}")
    if rows.size > _MAX_ROWS_PER_PROBLEM:
        problems.append(
            f"{source.where(field_name, None)}: {rows.size - _MAX_ROWS_PER_PROBLEM} more rows with the same "
            f"problem. {fix}"
        )


# ---------------------------------------------------------------------------------------------
# Argument checks


def _validate_key_list(argument: str, keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str):
        raise ConversionError(
            [f"{argument} must be a sequence of names, got the single string {keys!r}. Pass ({keys!r},) instead."]
        )
    key_list = list(keys)
    for key in key_list:
        if not isinstance(key, str) or not key:
            raise ConversionError([f"{argument} must contain non-empty strings, got {key!r} in {key_list!r}."])
    duplicates = sorted({key for key in key_list if key_list.count(key) > 1})
    if duplicates:
        raise ConversionError([f"{argument} names {duplicates} more than once. Name each label once."])
    return key_list


def _validate_common_options(
    modality_names: tuple[str, str],
    layout: str,
    name: str | None,
    test_fraction: float,
    seed: int,
    rows_per_file: int | None,
) -> None:
    if (
        not isinstance(modality_names, (tuple, list))
        or len(modality_names) != 2
        or not all(isinstance(item, str) and item for item in modality_names)
        or modality_names[0] == modality_names[1]
    ):
        raise ConversionError(
            [f"modality_names must be two different non-empty strings (X1 first), got {modality_names!r}."]
        )
    if layout not in _LAYOUTS:
        raise ConversionError([f"Invalid layout {layout!r}. Expected one of {list(_LAYOUTS)}."])
    if name is not None and (not isinstance(name, str) or not name):
        raise ConversionError([f"name must be a non-empty string or None, got {name!r}."])
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ConversionError([f"test_fraction must be a number in (0, 1), got {test_fraction!r}."])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConversionError([f"seed must be a non-negative integer, got {seed!r}."])
    if rows_per_file is not None and (
        isinstance(rows_per_file, bool) or not isinstance(rows_per_file, (int, np.integer)) or rows_per_file < 1
    ):
        raise ConversionError([f"rows_per_file must be a positive integer or None, got {rows_per_file!r}."])


def _validate_prefixes(x1_prefix: str, x2_prefix: str) -> None:
    for argument, prefix in (("x1_prefix", x1_prefix), ("x2_prefix", x2_prefix)):
        if not isinstance(prefix, str) or not prefix:
            raise ConversionError([f"{argument} must be a non-empty string, got {prefix!r}."])
    if x1_prefix == x2_prefix:
        raise ConversionError([f"x1_prefix and x2_prefix are both {x1_prefix!r}. Give each modality its own prefix."])


def _validate_fingerprint_options(radius: int, n_bits: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ConversionError([f"radius must be an integer >= 0, got {radius!r}."])
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or n_bits < 1:
        raise ConversionError([f"n_bits must be an integer >= 1, got {n_bits!r}."])


def _check_out_dir(out_dir: str | os.PathLike[str], source_path: Path, overwrite: bool) -> Path:
    """Reject an output folder that is a file, non-empty without ``overwrite``, or contains the input."""
    out_path = Path(out_dir)
    if out_path.exists() and not out_path.is_dir():
        raise ConversionError([f"out_dir {str(out_path)!r} exists and is not a folder. Choose a folder path."])
    if out_path.is_dir() and any(out_path.iterdir()):
        if not overwrite:
            raise ConversionError(
                [f"out_dir {str(out_path)!r} is not empty. Choose an empty or new folder, or pass overwrite=True."]
            )
        if source_path.resolve().is_relative_to(out_path.resolve()):
            raise ConversionError(
                [
                    f"The input {str(source_path)!r} is inside out_dir {str(out_path)!r}, which overwrite=True "
                    "would delete. Write the dataset to another folder."
                ]
            )
    return out_path


# ---------------------------------------------------------------------------------------------
# Assembling and writing the dataset


@dataclass
class _ColumnsToEncode:
    """Raw label, id and split arrays of shape ``(N,)``, keyed by their key or column name."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    ids: tuple[str, np.ndarray] | None = None
    split: tuple[str, np.ndarray] | None = None


def _assemble_dataset(
    source: _Source,
    name: str,
    x1: np.ndarray | None,
    x2: np.ndarray | None,
    columns: _ColumnsToEncode,
    n_rows: int,
    test_fraction: float,
    seed: int,
    problems: list[str],
    *,
    parse_integers: bool,
) -> tuple[PairedDataset, np.ndarray | None, dict[str, np.ndarray]]:
    """Validate labels, ids and split, then build the dataset or raise with every problem found.

    Returns:
        The dataset, the ids to store (``None`` for ``0 .. N-1``) and the original values of
        string labels, keyed by label name.
    """
    labels: dict[str, np.ndarray] = {}
    label_values: dict[str, np.ndarray] = {}
    for label_name, values in columns.labels.items():
        encoded = _encode_label(source, label_name, values, n_rows, problems, parse_integers=parse_integers)
        if encoded is not None:
            labels[label_name], original = encoded
            if original is not None:
                label_values[label_name] = original

    ids = None
    if columns.ids is not None:
        ids = _validate_ids(source, columns.ids[0], columns.ids[1], n_rows, problems, parse_integers=parse_integers)

    if columns.split is not None:
        split_indices = _split_from_values(source, columns.split[0], columns.split[1], n_rows, problems)
    else:
        split_indices = _random_split(source, n_rows, test_fraction, seed, problems)

    if problems or x1 is None or x2 is None or split_indices is None:
        raise ConversionError(problems)

    train_index, test_index = split_indices
    try:
        dataset = PairedDataset(
            x1=x1, x2=x2, labels=labels, latents={}, train_index=train_index, test_index=test_index, name=name
        )
    except ValueError as error:
        raise ConversionError([f"{source.where(None, None)}: {error}"]) from error
    return dataset, ids, label_values


def _write_into_place(
    dataset: PairedDataset,
    out_path: Path,
    *,
    modality_names: tuple[str, str],
    layout: Layout,
    ids: np.ndarray | None,
    label_values: Mapping[str, np.ndarray],
    rows_per_file: int | None,
    overwrite: bool,
    source: _Source,
) -> Path:
    """Write the dataset into a temporary sibling folder, then rename it to ``out_path``."""
    # Imported here because dssl.data.parquet is a larger module that the parsing helpers do not need.
    from dssl.data.parquet import DatasetValidationError, validate_dataset, write_paired_dataset

    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".converting", dir=out_path.parent))
    try:
        try:
            manifest = write_paired_dataset(
                dataset,
                temporary,
                modality_names=(modality_names[0], modality_names[1]),
                layout=layout,
                ids=ids,
                label_values=dict(label_values) or None,
                rows_per_file=rows_per_file,
            )
        except ValueError as error:
            raise ConversionError(
                [f"{source.where(None, None)}: writing the dataset failed: {error}"]
            ) from error
        # The written files get the checks a study runs (a label with a single class, for
        # example), so an input that no study could use never reaches out_dir.
        try:
            validate_dataset(manifest)
        except DatasetValidationError as error:
            raise ConversionError(
                [f"{source.where(problem.column, None)}: {problem.message}" for problem in error.problems]
            ) from None

        # Checked again because another process may have filled out_dir during the conversion.
        _check_out_dir(out_path, source.path, overwrite)
        if out_path.is_dir():
            shutil.rmtree(out_path)
        os.replace(temporary, out_path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    manifest_path = out_path / Path(manifest).name
    _logger.info(
        "Converted %s into %s: %d rows, dims %d and %d, %d training and %d test rows.",
        source.path, manifest_path, dataset.n_samples, dataset.x1.shape[1], dataset.x2.shape[1],
        dataset.train_index.size, dataset.test_index.size,
    )
    return manifest_path


def _encode_label(
    source: _Source, label_name: str, values: np.ndarray, n_rows: int, problems: list[str], *, parse_integers: bool
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Turn raw label values into int64 codes, plus the original strings for string labels.

    Integer labels are their own codes. String labels get codes in sorted order of their
    distinct values, the order in which dssl.data.parquet maps them back when reading.
    """
    if values.ndim != 1 or values.shape[0] != n_rows:
        problems.append(
            f"{source.where(label_name, None)}: labels must have shape ({n_rows},), got {values.shape}. "
            "Store one class per row in a 1-D array."
        )
        return None

    strings = _as_strings(values)
    if strings is None:
        integers = _as_integers(source, label_name, values, problems, "label")
        return None if integers is None else (integers, None)

    empty_rows = np.flatnonzero(strings == "")
    if empty_rows.size:
        _report_rows(source, label_name, empty_rows, lambda row: "empty label", "Give every row a class.", problems)
        return None
    if parse_integers and _all_canonical_integers(strings):
        return strings.astype(np.int64), None
    if parse_integers and _all_numbers(strings):
        # A column of fractional numbers is a measurement, not a class; as text every value
        # would become its own class.
        problems.append(
            f"{source.where(label_name, None)}: labels must be classes (integers or text), but every "
            f"value is a number and some are not integers (e.g. {str(strings[~_integer_mask(strings)][0])!r}). "
            "Bin or round the values into classes, or leave the column out of the labels."
        )
        return None

    _, codes = np.unique(strings, return_inverse=True)
    return codes.astype(np.int64), strings


def _all_numbers(strings: np.ndarray) -> bool:
    """Return whether every string parses as a finite or infinite decimal number."""
    try:
        strings.astype(np.float64)
    except ValueError:
        return False
    return True


def _integer_mask(strings: np.ndarray) -> np.ndarray:
    """Return which strings are canonical integers (``-3``, ``17``; not ``1.0`` or ``007``)."""
    return np.array([_CANONICAL_INTEGER.fullmatch(value) is not None for value in strings.tolist()], dtype=bool)


def _validate_ids(
    source: _Source, id_name: str, values: np.ndarray, n_rows: int, problems: list[str], *, parse_integers: bool
) -> np.ndarray | None:
    """Return the ids as int64 or str, or ``None`` after appending problems."""
    if values.ndim != 1 or values.shape[0] != n_rows:
        problems.append(
            f"{source.where(id_name, None)}: ids must have shape ({n_rows},), got {values.shape}. "
            "Store one id per row in a 1-D array."
        )
        return None

    ids = _as_strings(values)
    if ids is None:
        ids = _as_integers(source, id_name, values, problems, "id")
        if ids is None:
            return None
    else:
        empty_rows = np.flatnonzero(ids == "")
        if empty_rows.size:
            _report_rows(source, id_name, empty_rows, lambda row: "empty id", "Give every row a unique id.", problems)
            return None
        if parse_integers and _all_canonical_integers(ids):
            ids = ids.astype(np.int64)

    unique, first_rows, counts = np.unique(ids, return_index=True, return_counts=True)
    duplicated = np.flatnonzero(counts > 1)
    for position in duplicated[:_MAX_ROWS_PER_PROBLEM]:
        rows = np.flatnonzero(ids == unique[position])
        row_text = ", ".join(source.describe_row(int(row)) for row in rows[:_MAX_ROWS_PER_PROBLEM])
        problems.append(
            f"{source.where(id_name, None)}: id {unique[position].item()!r} appears {counts[position]} times "
            f"({row_text}). Make every id unique."
        )
    if duplicated.size > _MAX_ROWS_PER_PROBLEM:
        problems.append(
            f"{source.where(id_name, None)}: {duplicated.size - _MAX_ROWS_PER_PROBLEM} more duplicated ids. "
            "Make every id unique."
        )
    return None if duplicated.size else ids


def _split_from_values(
    source: _Source, split_name: str, values: np.ndarray, n_rows: int, problems: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    fix = f"Use only the values {list(_SPLIT_VALUES)}."
    if values.ndim != 1 or values.shape[0] != n_rows:
        problems.append(
            f"{source.where(split_name, None)}: the split must have shape ({n_rows},), got {values.shape}. {fix}"
        )
        return None
    strings = _as_strings(values)
    if strings is None:
        problems.append(f"{source.where(split_name, None)}: the split has dtype {values.dtype}, not strings. {fix}")
        return None

    bad_rows = np.flatnonzero(~np.isin(strings, _SPLIT_VALUES))
    if bad_rows.size:
        _report_rows(
            source, split_name, bad_rows, lambda row: f"invalid split value {str(strings[row])!r}", fix, problems
        )
        return None
    train_index = np.flatnonzero(strings == "train").astype(np.int64)
    test_index = np.flatnonzero(strings == "test").astype(np.int64)
    # The Parquet format stores a split column only with both splits present.
    for split_value, index in (("train", train_index), ("test", test_index)):
        if index.size == 0:
            problems.append(
                f"{source.where(split_name, None)}: no row is {split_value!r}. Put at least one row in each split."
            )
    if train_index.size == 0 or test_index.size == 0:
        return None
    return train_index, test_index


def _random_split(
    source: _Source, n_rows: int, test_fraction: float, seed: int, problems: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    # The Parquet format stores a split column only with both splits present.
    if n_rows < 2:
        problems.append(
            f"{source.where(None, None)}: a random train/test split needs at least 2 rows, got {n_rows}. "
            "Add rows or give a split with at least one training and one test row."
        )
        return None
    n_test = min(max(int(round(test_fraction * n_rows)), 1), n_rows - 1)
    permutation = np.random.default_rng(seed).permutation(n_rows)
    test_index = np.sort(permutation[:n_test]).astype(np.int64)
    train_index = np.sort(permutation[n_test:]).astype(np.int64)
    return train_index, test_index


def _as_strings(values: np.ndarray) -> np.ndarray | None:
    """Return a str array for unicode or bytes input, or ``None`` for any other dtype."""
    if values.dtype.kind == "U":
        return values
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="replace").astype(str)
    return None


def _as_integers(
    source: _Source, field_name: str, values: np.ndarray, problems: list[str], what: str
) -> np.ndarray | None:
    """Return integer, boolean or integral float values as int64, or ``None`` after appending problems."""
    fix = f"Store each {what} as an integer or a string."
    if values.dtype.kind in "bi":
        return values.astype(np.int64)
    if values.dtype.kind == "u":
        if values.size and values.max() > np.iinfo(np.int64).max:
            problems.append(f"{source.where(field_name, None)}: {what}s exceed the int64 range. {fix}")
            return None
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2.0**53)
        bad_rows = np.flatnonzero(bad)
        if bad_rows.size:
            def describe(row: int) -> str:
                return f"{what} {values[row].item()!r} is not an integer"

            _report_rows(source, field_name, bad_rows, describe, fix, problems)
            return None
        return values.astype(np.int64)
    problems.append(f"{source.where(field_name, None)}: {what}s have unsupported dtype {values.dtype}. {fix}")
    return None


def _all_canonical_integers(strings: np.ndarray) -> bool:
    if strings.size == 0:
        return False
    if not all(_CANONICAL_INTEGER.fullmatch(text) for text in strings.tolist()):
        return False
    # Values beyond int64 stay strings rather than overflowing.
    return all(-(2**63) <= int(text) < 2**63 for text in strings.tolist())


# ---------------------------------------------------------------------------------------------
# .npz input


def _load_npz(path: Path, requested_keys: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Load the requested arrays, raising one error that lists every missing or unreadable key."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as error:
        raise ConversionError([f"{path}: file not found. Check the path."]) from error
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(
            [f"{path}: cannot be read as a NumPy file ({error}). Save it with numpy.savez."]
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConversionError(
            [f"{path}: is a single .npy array, not an .npz archive. Save the arrays with numpy.savez."]
        )

    with archive:
        present = list(archive.files)
        keys = [key for key in requested_keys if key is not None]
        missing = [key for key in dict.fromkeys(keys) if key not in present]
        if missing:
            raise ConversionError(
                [f"{path}: key {key!r} not found. The file contains the keys {present}." for key in missing]
            )

        arrays: dict[str, np.ndarray] = {}
        problems: list[str] = []
        for key in dict.fromkeys(keys):
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                problems.append(
                    f"{path}, key {key!r}: cannot be loaded without pickle ({error}). "
                    "Store numbers or fixed-width strings (for example array.astype(str)), not Python objects."
                )
        if problems:
            raise ConversionError(problems)
    return arrays


def _npz_features(source: _Source, key: str, array: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """Return the modality as float32 ``(N, d)``, or ``None`` after appending problems."""
    if array.ndim != 2:
        problems.append(
            f"{source.where(key, None)}: a modality must be a 2-D array of shape (N, d), got shape {array.shape}. "
            "Reshape it to one row per sample."
        )
        return None
    if array.dtype.kind not in "biuf":
        problems.append(
            f"{source.where(key, None)}: a modality must be numeric, got dtype {array.dtype}. "
            "Store the features as floats."
        )
        return None
    if array.shape[0] == 0 or array.shape[1] == 0:
        problems.append(
            f"{source.where(key, None)}: a modality needs at least one row and one column, got shape {array.shape}."
        )
        return None

    features = array.astype(np.float32)
    with np.errstate(over="ignore"):
        bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad_rows.size:
        _report_rows(
            source, key, bad_rows,
            lambda row: "NaN or infinite value (or a value beyond the float32 range)",
            "Replace or drop the non-finite values.", problems,
        )
        return None
    return features


# ---------------------------------------------------------------------------------------------
# CSV input


@dataclass
class _CsvTable:
    """A parsed CSV file and the mapping from data rows to 1-based line numbers of the file."""

    path: Path
    table: pa.Table
    delimiter: str
    _record_lines: list[int] | None = None

    @property
    def n_rows(self) -> int:
        return int(self.table.num_rows)

    @property
    def column_names(self) -> list[str]:
        return list(self.table.column_names)

    def source(self) -> _Source:
        return _Source(path=self.path, field_kind="column", describe_row=self.describe_row)

    def describe_row(self, row: int) -> str:
        if self._record_lines is None:
            self._record_lines = _data_record_lines(self.path, self.delimiter)
        if len(self._record_lines) == self.n_rows:
            return f"line {self._record_lines[row]}"
        # NOTE: The csv module found a different number of records than pyarrow. The line number
        # is then unknown, so the message gives the 1-based data row instead.
        return f"data row {row + 1}"

    def strings(self, column: str) -> np.ndarray:
        return self.table.column(column).to_numpy(zero_copy_only=False).astype(str)


def _read_csv(path: Path, delimiter: str, string_columns: Sequence[str]) -> _CsvTable:
    """Parse the file with pyarrow, keeping the named columns as strings and inferring the rest."""
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
        raise ConversionError([f"delimiter must be one character other than a quote or line break, got {delimiter!r}."])
    if not path.is_file():
        raise ConversionError([f"{path}: file not found. Check the path."])

    convert_options = pacsv.ConvertOptions(
        column_types={column: pa.string() for column in string_columns},
        # Only empty cells are null, so "NA" or "null" in a feature column is reported with its text.
        null_values=[""],
        strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter=delimiter), convert_options=convert_options
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise ConversionError(
            [
                f"{path}: cannot be parsed as CSV ({error}). Check that the file is UTF-8, that the delimiter "
                f"is {delimiter!r}, and that every line has as many fields as the header."
            ]
        ) from error

    names = list(table.column_names)
    duplicates = sorted({column for column in names if names.count(column) > 1})
    if duplicates:
        raise ConversionError([f"{path}: the header names the columns {duplicates} more than once. Rename them."])
    if table.num_rows == 0:
        raise ConversionError([f"{path}: the file has a header but no data rows."])
    return _CsvTable(path=path, table=table, delimiter=delimiter)


def _data_record_lines(path: Path, delimiter: str) -> list[int]:
    """Return the 1-based line on which each data record starts, skipping the header and blank lines.

    A quoted field may span lines, so record numbers and line numbers can differ.
    """
    starts: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            previous_line = 0
            for record in reader:
                if record:
                    starts.append(previous_line + 1)
                previous_line = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return starts[1:]


def _check_named_columns(table: _CsvTable, columns: Sequence[str | None], problems: list[str]) -> None:
    present = table.column_names
    for column in dict.fromkeys(column for column in columns if column is not None):
        if column not in present:
            problems.append(f"{table.path}: column {column!r} not found. The header has the columns {present}.")


def _prefixed_columns(
    table: _CsvTable, prefix: str, argument: str, named_columns: Sequence[str | None], problems: list[str]
) -> list[str]:
    """Return the columns starting with ``prefix`` in file order, reporting clashes with named columns."""
    matches = [column for column in table.column_names if column.startswith(prefix)]
    if not matches:
        problems.append(
            f"{table.path}: no column name starts with {argument}={prefix!r}. "
            f"The header has the columns {table.column_names}."
        )
    for column in matches:
        if column in named_columns:
            problems.append(
                f"{table.path}: column {column!r} starts with {argument}={prefix!r} but is also named as a "
                "label, id, split or SMILES column. Rename the column or use a longer prefix."
            )
    return matches


def _feature_column_groups(
    table: _CsvTable, x1_prefix: str, x2_prefix: str, named_columns: Sequence[str | None], problems: list[str]
) -> tuple[list[str], list[str]]:
    x1_columns = _prefixed_columns(table, x1_prefix, "x1_prefix", named_columns, problems)
    x2_columns = _prefixed_columns(table, x2_prefix, "x2_prefix", named_columns, problems)
    for column in sorted(set(x1_columns) & set(x2_columns), key=table.column_names.index):
        problems.append(
            f"{table.path}: column {column!r} starts with both x1_prefix={x1_prefix!r} and x2_prefix={x2_prefix!r}. "
            "Choose prefixes that select disjoint columns."
        )
    return x1_columns, x2_columns


def _csv_features(table: _CsvTable, columns: Sequence[str], problems: list[str]) -> np.ndarray | None:
    """Stack the columns into float32 ``(N, len(columns))``, or return ``None`` after appending problems."""
    source = table.source()
    features = np.empty((table.n_rows, len(columns)), dtype=np.float32)
    n_problems_before = len(problems)
    for position, column in enumerate(columns):
        values = _csv_numeric_column(table, source, column, problems)
        if values is None:
            continue
        with np.errstate(over="ignore"):
            features[:, position] = values
        bad_rows = np.flatnonzero(~np.isfinite(features[:, position]))
        if bad_rows.size:
            _report_rows(
                source, column, bad_rows,
                lambda row: "NaN or infinite value (or a value beyond the float32 range)",
                "Replace the value with a finite number or drop the row.", problems,
            )
    return None if len(problems) > n_problems_before else features


def _csv_numeric_column(table: _CsvTable, source: _Source, column: str, problems: list[str]) -> np.ndarray | None:
    """Return one feature column as float64, or ``None`` after naming each empty or non-numeric cell."""
    data = table.table.column(column)
    fix = "Fill in a number or drop the row."

    if pa.types.is_integer(data.type) or pa.types.is_floating(data.type):
        empty_rows = np.flatnonzero(data.is_null().to_numpy(zero_copy_only=False))
        if empty_rows.size:
            _report_rows(source, column, empty_rows, lambda row: "empty cell", fix, problems)
            return None
        return data.to_numpy().astype(np.float64)

    if pa.types.is_null(data.type):
        _report_rows(source, column, np.arange(table.n_rows), lambda row: "empty cell", fix, problems)
        return None

    # pyarrow inferred a non-numeric type, so at least one cell is not a number: find which.
    texts = pc.cast(data, pa.string()).to_pylist()
    values = np.empty(len(texts), dtype=np.float64)
    bad_rows: list[int] = []
    for row, text in enumerate(texts):
        try:
            values[row] = float(text)
        except (TypeError, ValueError):
            bad_rows.append(row)
    if not bad_rows:
        return values

    def describe(row: int) -> str:
        text = texts[row]
        return "empty cell" if text in (None, "") else f"non-numeric value {text!r}"

    _report_rows(source, column, np.asarray(bad_rows), describe, fix, problems)
    return None


def _csv_fingerprints(
    table: _CsvTable, smiles_column: str, radius: int, n_bits: int, problems: list[str]
) -> np.ndarray | None:
    source = table.source()
    fingerprints, failures = _morgan_fingerprints(table.strings(smiles_column).tolist(), radius, n_bits)
    for row, text, reason in failures:
        problems.append(
            f"{source.where(smiles_column, row)}: invalid SMILES {text!r} ({reason}). "
            "Correct the SMILES or drop the row."
        )
    return None if failures else fingerprints


# ---------------------------------------------------------------------------------------------
# Molecules


def _validate_smiles_sequence(smiles: Sequence[str]) -> list[str]:
    if isinstance(smiles, (str, bytes)):
        raise ConversionError(
            [f"smiles must be a sequence of SMILES strings, got the single string {smiles!r}; wrap it in a list."]
        )
    try:
        return list(smiles)
    except TypeError as error:
        raise ConversionError([f"smiles must be a sequence of SMILES strings, got {type(smiles).__name__}."]) from error


def _morgan_fingerprints(
    smiles: Sequence[object], radius: int, n_bits: int
) -> tuple[np.ndarray, list[tuple[int, object, str]]]:
    """Fingerprint each SMILES once; return ``(fingerprints (N, n_bits) float32, failures)``.

    Each failure is ``(row, smiles, reason)``. Rows of failed entries stay zero.
    """
    # RDKit is imported here so that the .npz and CSV converters work without loading it.
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=int(radius), fpSize=int(n_bits))
    fingerprints = np.zeros((len(smiles), int(n_bits)), dtype=np.float32)
    failures: list[tuple[int, object, str]] = []
    bits_by_smiles: dict[str, np.ndarray | str] = {}

    # BlockLogs silences RDKit's warnings and restores the previous log settings when released.
    # CaptureErrorLog keeps the parse errors off stderr and collects them, so each failure can be
    # reported with RDKit's reason.
    log_blocker = rdBase.BlockLogs()
    try:
        with rdBase.CaptureErrorLog() as capture:
            for row, text in enumerate(smiles):
                if not isinstance(text, str):
                    failures.append((row, text, f"expected a string, got {type(text).__name__}"))
                    continue
                if not text.strip():
                    failures.append((row, text, "empty SMILES"))
                    continue
                if text not in bits_by_smiles:
                    n_logged = len(capture.messages)
                    molecule = Chem.MolFromSmiles(text)
                    if molecule is None:
                        bits_by_smiles[text] = _first_rdkit_message(capture.messages[n_logged:])
                    else:
                        bits_by_smiles[text] = generator.GetFingerprintAsNumPy(molecule)
                result = bits_by_smiles[text]
                if isinstance(result, str):
                    failures.append((row, text, result))
                else:
                    fingerprints[row] = result
    finally:
        del log_blocker
    return fingerprints, failures


def _first_rdkit_message(log_text: str) -> str:
    for line in log_text.splitlines():
        message = " ".join(_RDKIT_LOG_TIMESTAMP.sub("", line).split())
        if message:
            return message
    return "RDKit could not parse it"
