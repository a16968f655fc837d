"""Dataset manifest: the YAML file that describes a Parquet dataset.

A manifest names the Parquet files of a dataset and the columns that hold the sample id, the two
modalities, the labels, the optional true latents and the optional train/test split::

    name: digits-two-view
    files: [data.parquet]              # relative to the manifest's folder, read in order
    id_column: sample_id
    modalities:                        # exactly two entries: the first is X1, the second X2
      left:  {column: left, dim: 32}   # one fixed-size list column
      right: {prefix: "right_", dim: 32}  # or the numeric columns right_0 .. right_31
    labels: [digit]
    latents:
      z_s: {column: z_s, dim: 50}
    split:
      column: split
      train: [train]
      test: [test]

:func:`load_manifest` reads such a file with ``yaml.safe_load`` and validates it. Every problem,
whether in the manifest or, through :func:`dssl.data.parquet.validate_dataset`, in the Parquet
files, is reported as a :class:`DatasetProblem` inside one :class:`DatasetValidationError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, StrictStr, ValidationError
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

_logger = logging.getLogger(__name__)

__all__ = [
    "DatasetManifest",
    "DatasetProblem",
    "DatasetValidationError",
    "MANIFEST_FILE_NAME",
    "ModalityColumns",
    "SplitSpec",
    "dump_manifest",
    "load_manifest",
    "validate_manifest_data",
]

MANIFEST_FILE_NAME = "dataset.yaml"
"""File name that :func:`dssl.data.parquet.write_paired_dataset` gives the manifest."""

_MANIFEST_ERROR_TYPE = "dataset_manifest"
_MAX_VALUE_REPR = 120
# A prefix column is the prefix followed by a decimal number without leading zeros.
_PREFIX_NUMBER = re.compile(r"^(0|[1-9][0-9]*)$")


# --------------------------------------------------------------------------------------------
# Problems and the validation error
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetProblem:
    """One problem found in a manifest or in a Parquet file of a dataset.

    Attributes:
        file: The manifest path or the Parquet file as the manifest lists it, or ``None`` for
            problems of the dataset as a whole (such as an empty test split).
        column: The column concerned, or ``None``.
        row: The 0-based row within ``file``, or ``None``.
        message: What is wrong, with the offending value and how to fix it.
    """

    file: str | None
    column: str | None
    row: int | None
    message: str

    def __str__(self) -> str:
        place = []
        if self.column is not None:
            place.append(f"column {self.column!r}")
        if self.row is not None:
            place.append(f"row {self.row}")
        where = ", ".join(place)
        if self.file is not None:
            where = f"{self.file}: {where}" if where else self.file
        return f"{where}: {self.message}" if where else self.message


class DatasetValidationError(ValueError):
    """Raised when a dataset manifest or its Parquet files are invalid.

    ``str(error)`` has a summary line followed by one line per problem, for example
    ``data.parquet: column 'left', row 17: NaN or infinite value ...``.

    Attributes:
        problems: Every problem found, in the order the checks found them.
        source: The manifest path or dataset name the problems belong to, used in the summary.
    """

    def __init__(self, problems: list[DatasetProblem], source: str = "dataset") -> None:
        if not problems:
            raise ValueError("DatasetValidationError needs at least one problem.")
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"{self.source} is invalid ({count} problem{'s' if count != 1 else ''}):"
        return "\n".join([header] + [f"  {problem}" for problem in self.problems])

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle only their args by default; Ray pickles errors raised in workers.
        return (type(self), (self.problems, self.source))


def _short_repr(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_REPR:
        text = text[: _MAX_VALUE_REPR - 3] + "..."
    return text


def _manifest_error(detail: str) -> PydanticCustomError:
    # The message travels as a context value so braces inside it are not parsed as a template.
    return PydanticCustomError(_MANIFEST_ERROR_TYPE, "{detail}", {"detail": detail})


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class _ManifestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModalityColumns(_ManifestModel):
    """Columns of one feature group (a modality or a latent) of dimension ``dim``.

    Exactly one of ``column`` and ``prefix`` is given:

    - ``column``: one list column (``fixed_size_list<float32>[dim]``, or a variable-size list
      whose rows all hold ``dim`` numbers);
    - ``prefix``: ``dim`` numeric columns named ``prefix + "0"`` .. ``prefix + str(dim - 1)``.

    Attributes:
        column: Name of the list column, or ``None``.
        prefix: Common prefix of the scalar columns, or ``None``.
        dim: Number of features, at least 1.
    """

    column: StrictStr | None = Field(default=None, min_length=1)
    prefix: StrictStr | None = Field(default=None, min_length=1)
    dim: StrictInt = Field(ge=1)

    @model_validator(mode="after")
    def _check_one_form(self) -> ModalityColumns:
        if self.column is not None and self.prefix is not None:
            raise _manifest_error(
                f"give either column or prefix, not both (got column={self.column!r}, prefix={self.prefix!r})"
            )
        if self.column is None and self.prefix is None:
            raise _manifest_error(
                "give column (one list column) or prefix (numbered scalar columns), got neither"
            )
        return self

    @property
    def layout(self) -> Literal["list", "columns"]:
        """``"list"`` for one list column, ``"columns"`` for numbered scalar columns."""
        return "list" if self.column is not None else "columns"

    def column_names(self) -> list[str]:
        """Return the Parquet column names of this group, in feature order."""
        if self.column is not None:
            return [self.column]
        return [f"{self.prefix}{index}" for index in range(self.dim)]

    def prefix_number(self, column_name: str) -> int | None:
        """Return ``k`` when ``column_name`` is ``prefix + str(k)``, else ``None`` (also for list layout)."""
        if self.prefix is None or not column_name.startswith(self.prefix):
            return None
        suffix = column_name[len(self.prefix) :]
        return int(suffix) if _PREFIX_NUMBER.match(suffix) else None


class SplitSpec(_ManifestModel):
    """Column that assigns each row to the train or the test split.

    A row whose split value is null belongs to neither split.

    Attributes:
        column: Name of the split column (string or integer values).
        train: Column values that mean the training split. Compared as text, so ``1`` matches the
            integer 1 as well as the string ``"1"``.
        test: Column values that mean the held-out split, disjoint from ``train``.
    """

    column: StrictStr = Field(min_length=1)
    train: list[StrictStr | StrictInt] = Field(min_length=1)
    test: list[StrictStr | StrictInt] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_disjoint(self) -> SplitSpec:
        shared = sorted(set(map(str, self.train)) & set(map(str, self.test)))
        if shared:
            raise _manifest_error(
                f"train and test must not share values, but both list {', '.join(map(repr, shared))}"
            )
        return self

    @property
    def train_values(self) -> frozenset[str]:
        """Training values as text."""
        return frozenset(map(str, self.train))

    @property
    def test_values(self) -> frozenset[str]:
        """Test values as text."""
        return frozenset(map(str, self.test))


class DatasetManifest(_ManifestModel):
    """Validated content of a dataset manifest.

    File paths are kept as written. :meth:`file_paths` resolves them relative to the manifest's
    folder (:attr:`root`), which is the folder of the file that :func:`load_manifest` read, or
    the current directory for a manifest built in memory.

    Attributes:
        name: Short identifier of the dataset.
        files: Parquet files, read in this order. Global row numbers run over them in this order.
        id_column: Column of unique, non-null sample ids (integers or strings).
        modalities: Exactly two feature groups: the first is ``X1``, the second ``X2``.
        labels: Class columns (integers or strings).
        latents: True generating factors (synthetic data only).
        split: The train/test split column, or ``None`` for a seeded random split at read time.
    """

    name: StrictStr = Field(min_length=1)
    files: list[StrictStr] = Field(min_length=1)
    id_column: StrictStr = Field(default="sample_id", min_length=1)
    modalities: dict[StrictStr, ModalityColumns]
    labels: list[StrictStr] = Field(default_factory=list)
    latents: dict[StrictStr, ModalityColumns] = Field(default_factory=dict)
    split: SplitSpec | None = None

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("files")
    @classmethod
    def _check_files(cls, files: list[str]) -> list[str]:
        empty = [index for index, entry in enumerate(files) if not entry.strip()]
        if empty:
            raise _manifest_error(f"entry {empty[0]} is an empty path. List Parquet file paths")
        duplicates = sorted({entry for entry in files if files.count(entry) > 1})
        if duplicates:
            raise _manifest_error(f"lists {', '.join(map(repr, duplicates))} more than once. List each file once")
        return files

    @field_validator("modalities")
    @classmethod
    def _check_two_modalities(cls, modalities: dict[str, ModalityColumns]) -> dict[str, ModalityColumns]:
        problem = _modality_count_problem(modalities)
        if problem is not None:
            raise _manifest_error(problem)
        return modalities

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: list[str]) -> list[str]:
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise _manifest_error(f"lists {', '.join(map(repr, duplicates))} more than once. List each label once")
        if any(not label for label in labels):
            raise _manifest_error("contains an empty column name")
        return labels

    @model_validator(mode="after")
    def _check_column_collisions(self) -> DatasetManifest:
        owners = self._column_owners()
        named: dict[str, str] = {}
        for column, owner in owners:
            if column in named:
                raise _manifest_error(
                    f"column {column!r} is used by both {named[column]} and {owner}. Give each role its own column"
                )
            named[column] = owner

        groups = [(f"modalities.{key}", spec) for key, spec in self.modalities.items()]
        groups += [(f"latents.{key}", spec) for key, spec in self.latents.items()]
        for owner, spec in groups:
            if spec.prefix is None:
                continue
            for column, other_owner in owners:
                if spec.prefix_number(column) is not None:
                    raise _manifest_error(
                        f"column {column!r} of {other_owner} looks like a feature column of {owner} "
                        f"(prefix {spec.prefix!r}). Rename the column or change the prefix"
                    )
            for other_owner, other in groups:
                if other is spec or other.prefix is None:
                    continue
                if other.prefix.startswith(spec.prefix) and other.prefix != spec.prefix:
                    remainder = other.prefix[len(spec.prefix) :]
                    if remainder[:1].isdigit():
                        raise _manifest_error(
                            f"prefix {other.prefix!r} of {other_owner} starts with prefix {spec.prefix!r} of "
                            f"{owner} followed by a digit, so their columns can clash. Choose distinct prefixes"
                        )
                elif other.prefix == spec.prefix and other_owner > owner:
                    raise _manifest_error(
                        f"{owner} and {other_owner} both use prefix {spec.prefix!r}. Give each its own prefix"
                    )
        return self

    def _column_owners(self) -> list[tuple[str, str]]:
        """Return ``(column, role)`` for every named column (prefix groups excluded)."""
        owners = [(self.id_column, "id_column")]
        for key, spec in self.modalities.items():
            if spec.column is not None:
                owners.append((spec.column, f"modalities.{key}"))
        owners += [(label, "labels") for label in self.labels]
        for key, spec in self.latents.items():
            if spec.column is not None:
                owners.append((spec.column, f"latents.{key}"))
        if self.split is not None:
            owners.append((self.split.column, "split.column"))
        return owners

    @property
    def path(self) -> Path | None:
        """Absolute path of the manifest file, or ``None`` for a manifest built in memory."""
        return self._path

    @property
    def root(self) -> Path:
        """Folder that relative file paths are resolved against."""
        return self._path.parent if self._path is not None else Path.cwd()

    @property
    def modality_names(self) -> tuple[str, str]:
        """Names of ``X1`` and ``X2``, in manifest order."""
        first, second = self.modalities
        return first, second

    @property
    def x1(self) -> ModalityColumns:
        """Columns of the first modality."""
        return self.modalities[self.modality_names[0]]

    @property
    def x2(self) -> ModalityColumns:
        """Columns of the second modality."""
        return self.modalities[self.modality_names[1]]

    @property
    def source(self) -> str:
        """The manifest path, or ``dataset <name>`` for a manifest built in memory, for messages."""
        return str(self._path) if self._path is not None else f"dataset {self.name!r}"

    def file_paths(self) -> list[Path]:
        """Return the Parquet file paths, relative entries resolved against :attr:`root`."""
        return [self.root / entry for entry in self.files]

    def with_path(self, path: str | os.PathLike[str]) -> DatasetManifest:
        """Return a copy whose relative file paths resolve against the folder of ``path``."""
        copy = self.model_copy()
        copy._path = Path(path).resolve()
        return copy

    def to_yaml(self) -> str:
        """Serialize the manifest to YAML text in the key order of the format, omitting empty keys."""
        data: dict[str, Any] = {"name": self.name, "files": list(self.files), "id_column": self.id_column}
        data["modalities"] = {key: _group_to_dict(spec) for key, spec in self.modalities.items()}
        if self.labels:
            data["labels"] = list(self.labels)
        if self.latents:
            data["latents"] = {key: _group_to_dict(spec) for key, spec in self.latents.items()}
        if self.split is not None:
            data["split"] = {
                "column": self.split.column,
                "train": list(self.split.train),
                "test": list(self.split.test),
            }
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def _modality_count_problem(modalities: Any) -> str | None:
    if not isinstance(modalities, Mapping) or len(modalities) == 2:
        return None
    names = ", ".join(map(str, modalities)) if modalities else "none"
    return f"needs exactly 2 entries (X1 first, X2 second), got {len(modalities)} ({names})"


def _group_to_dict(spec: ModalityColumns) -> dict[str, Any]:
    if spec.column is not None:
        return {"column": spec.column, "dim": spec.dim}
    return {"prefix": spec.prefix, "dim": spec.dim}


# --------------------------------------------------------------------------------------------
# Loading and writing
# --------------------------------------------------------------------------------------------


def load_manifest(path: str | os.PathLike[str]) -> DatasetManifest:
    """Read and validate a dataset manifest.

    Args:
        path: The manifest YAML file.

    Returns:
        The validated manifest. Its :attr:`DatasetManifest.path` is the absolute path of the file,
        so relative Parquet paths resolve against the manifest's folder.

    Raises:
        DatasetValidationError: If the file is missing, is not valid YAML or is not a mapping.
            Also if it breaks the format: unknown or missing keys, wrong types, not exactly two
            modalities, both or neither of ``column`` and ``prefix``, or a column used for two
            roles. Every problem names the manifest file and the key.

    Example:
        >>> manifest = load_manifest("data/digits/dataset.yaml")  # doctest: +SKIP
        >>> manifest.modality_names, manifest.x1.dim  # doctest: +SKIP
        (('left', 'right'), 32)
    """
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetValidationError(
            [DatasetProblem(label, None, None, "manifest file not found. Check the path")], label
        ) from None
    except OSError as exc:
        raise DatasetValidationError(
            [DatasetProblem(label, None, None, f"cannot read the manifest file: {exc}")], label
        ) from exc

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DatasetValidationError(
            [DatasetProblem(label, None, None, f"invalid YAML{where}: {problem}")], label
        ) from exc

    if not isinstance(data, Mapping):
        raise DatasetValidationError(
            [
                DatasetProblem(
                    label,
                    None,
                    None,
                    f"the manifest must be a YAML mapping with keys name, files, modalities, ..., "
                    f"got {type(data).__name__} {_short_repr(data)}",
                )
            ],
            label,
        )

    manifest = validate_manifest_data(data, source=label)
    _logger.debug("Loaded dataset manifest %s (%d files).", path, len(manifest.files))
    return manifest.with_path(path)


def validate_manifest_data(data: Mapping[str, Any], source: str = "<manifest>") -> DatasetManifest:
    """Validate a manifest given as a mapping (the parsed YAML).

    Args:
        data: The manifest content.
        source: Name used as the file of every problem, usually the manifest path.

    Returns:
        The validated manifest, without a path (files resolve against the current directory).

    Raises:
        DatasetValidationError: With one problem per invalid key.
    """
    # pydantic runs the two-entry check of modalities only when every entry is valid, so the count
    # is checked here as well to report it together with the problems inside the entries.
    count_problem = _modality_count_problem(data.get("modalities"))
    try:
        return DatasetManifest.model_validate(dict(data))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = []
        if count_problem is not None:
            problems.append(DatasetProblem(source, None, None, f"modalities: {count_problem}"))
            errors = [error for error in errors if tuple(error["loc"]) != ("modalities",)]
        problems += [DatasetProblem(source, None, None, _error_message(error)) for error in errors]
        raise DatasetValidationError(problems, source) from None


def dump_manifest(manifest: DatasetManifest, path: str | os.PathLike[str]) -> Path:
    """Write a manifest as YAML.

    Args:
        manifest: The manifest to write. Its file entries are written as they are, so relative
            entries must be relative to the folder of ``path``.
        path: Destination file, overwritten if it exists.

    Returns:
        The absolute path written.
    """
    path = Path(path).resolve()
    path.write_text(manifest.to_yaml(), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------


def _error_message(error: Mapping[str, Any]) -> str:
    """Format one pydantic error as ``key.path: what is wrong (got value)``."""
    loc = tuple(error["loc"])
    key = ".".join(str(item) for item in loc)
    error_type = error["type"]

    if error_type == _MANIFEST_ERROR_TYPE:
        detail = error["ctx"]["detail"]
        return f"{key}: {detail}" if key else detail
    if error_type == "missing":
        return f"{key}: required key is missing. Add it to the manifest"
    if error_type == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = ""
        matches = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        if matches:
            hint = f"Did you mean {matches[0]!r}? "
        return f"{key}: unknown key. {hint}Allowed keys here are {', '.join(allowed)}"

    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    elif message.startswith("Input should be "):
        message = "must be " + message[len("Input should be ") :]
    return f"{key}: {message} (got {_short_repr(error.get('input'))})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Return the keys allowed in the mapping at ``loc`` of the manifest."""
    if not loc:
        return list(DatasetManifest.model_fields)
    if loc[0] in ("modalities", "latents"):
        return list(ModalityColumns.model_fields)
    if loc[0] == "split":
        return list(SplitSpec.model_fields)
    return []
