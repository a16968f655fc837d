"""Container for two-view (multimodal) datasets and the loader that builds them by name."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

_logger = logging.getLogger(__name__)

DATASET_KINDS: tuple[str, ...] = ("synthetic", "digits", "parquet")
"""Names accepted by :func:`load_dataset`."""

_SPLIT_NAMES: tuple[str, ...] = ("train", "test")


# eq=False keeps identity comparison and hashing, because field-wise == on numpy arrays is ambiguous.
@dataclass(frozen=True, eq=False)
class PairedDataset:
    """Paired samples of two modalities with labels, optional true latents and a train/test split.

    Row ``i`` of ``x1``, ``x2``, every label array and every latent array describe the same sample.

    Attributes:
        x1: First modality, shape ``(N, d1)``, float32, finite.
        x2: Second modality, shape ``(N, d2)``, float32, finite.
        labels: Label name (for example ``"y_c"``, ``"y_1"``, ``"y_2"`` or ``"digit"``) to class
            indices of shape ``(N,)``, int64.
        latents: Latent name (for example ``"z_s"``) to the true generating factors of shape
            ``(N, m)``, float32. Empty for real data.
        train_index: Row indices of the training split, shape ``(n_train,)``, int64, non-empty,
            without duplicates.
        test_index: Row indices of the test split, shape ``(n_test,)``, int64, without duplicates
            and disjoint from ``train_index``. It may be empty.
        name: Short identifier of the dataset, used in logs and run metadata.
    """

    x1: np.ndarray
    x2: np.ndarray
    labels: dict[str, np.ndarray]
    latents: dict[str, np.ndarray]
    train_index: np.ndarray
    test_index: np.ndarray
    name: str

    def __post_init__(self) -> None:
        n_rows = _validate_modality("x1", self.x1)
        n_rows_x2 = _validate_modality("x2", self.x2)
        if n_rows_x2 != n_rows:
            raise ValueError(
                f"x2 has {n_rows_x2} rows but x1 has {n_rows}. Both modalities must be paired row by row."
            )

        for label_name, label in self.labels.items():
            _validate_label(label_name, label, n_rows)
        for latent_name, latent in self.latents.items():
            _validate_latent(latent_name, latent, n_rows)

        _validate_index("train_index", self.train_index, n_rows)
        _validate_index("test_index", self.test_index, n_rows)
        if self.train_index.size == 0:
            raise ValueError("train_index is empty. The training split needs at least one row.")
        overlap = np.intersect1d(self.train_index, self.test_index)
        if overlap.size > 0:
            raise ValueError(
                f"train_index and test_index share {overlap.size} rows, the first being {int(overlap[0])}. "
                "The splits must be disjoint."
            )

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}.")

    @property
    def n_samples(self) -> int:
        """Number of paired rows ``N``."""
        return int(self.x1.shape[0])

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Select the rows of one split.

        Args:
            which: ``"train"`` or ``"test"``.

        Returns:
            ``(x1, x2, labels)`` restricted to the split: arrays of shape ``(n_split, d1)``,
            ``(n_split, d2)`` and a dict of ``(n_split,)`` label arrays. The arrays are copies.
        """
        if which not in _SPLIT_NAMES:
            raise ValueError(f"Invalid split {which!r}. Expected one of {list(_SPLIT_NAMES)}.")

        index = self.train_index if which == "train" else self.test_index
        labels = {label_name: label[index] for label_name, label in self.labels.items()}
        return self.x1[index], self.x2[index], labels

    def shard_indices(self, rank: int, world_size: int, seed: int) -> np.ndarray:
        """Compute the training rows assigned to one data-parallel worker (see :func:`shard_rows`)."""
        return shard_rows(self.train_index, rank, world_size, seed)


def shard_rows(train_index: np.ndarray, rank: int, world_size: int, seed: int) -> np.ndarray:
    """Compute the training rows assigned to one data-parallel worker.

    The training indices are permuted with ``numpy.random.default_rng(seed)`` and cut into
    ``world_size`` contiguous shards of ``len(train_index) // world_size`` rows. The remainder
    (fewer than ``world_size`` rows) is dropped so that every worker runs the same number of
    steps. All ranks must pass the same ``seed`` to get disjoint shards.

    Args:
        train_index: Row indices of the training split, shape ``(n_train,)``.
        rank: Worker index in ``[0, world_size)``.
        world_size: Number of workers, at least 1.
        seed: Seed of the permutation shared by all workers.

    Returns:
        Row indices, shape ``(n_train // world_size,)``, int64, in permuted order.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}.")

    shard_size = train_index.size // world_size
    if shard_size == 0:
        raise ValueError(
            f"The training split has {train_index.size} rows, fewer than world_size={world_size}. "
            "Use fewer workers."
        )

    permuted = np.random.default_rng(seed).permutation(train_index)
    start = int(rank) * shard_size
    return permuted[start : start + shard_size]


def load_dataset(kind: str, **options: Any) -> PairedDataset:
    """Build a dataset by name.

    Args:
        kind: ``"synthetic"`` (see :func:`dssl.data.synthetic.make_synthetic`), ``"digits"``
            (see :func:`dssl.data.digits.make_digits_two_view`) or ``"parquet"`` (a manifest read
            by :func:`dssl.data.parquet.read_dataset`).
        **options: Keyword arguments passed to the builder.

    Returns:
        The built :class:`PairedDataset`.
    """
    # The builders import this module, so they are imported here to avoid an import cycle.
    if kind == "synthetic":
        from dssl.data.synthetic import make_synthetic

        builder = make_synthetic
    elif kind == "digits":
        from dssl.data.digits import make_digits_two_view

        builder = make_digits_two_view
    elif kind == "parquet":
        from dssl.data.parquet import read_dataset

        builder = read_dataset
    else:
        raise ValueError(f"Unknown dataset kind {kind!r}. Expected one of {list(DATASET_KINDS)}.")

    _logger.debug("Building dataset %r with options %s.", kind, options)
    return builder(**options)


def _validate_modality(field_name: str, array: np.ndarray) -> int:
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise ValueError(f"{field_name} must be a 2-D numpy array of shape (N, d), got shape {shape}.")
    if array.dtype != np.float32:
        raise ValueError(f"{field_name} must have dtype float32, got {array.dtype}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{field_name} must have at least one row and one column, got shape {array.shape}.")
    if not np.isfinite(array).all():
        n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{field_name} contains {n_bad} non-finite values (NaN or inf).")
    return int(array.shape[0])


def _validate_label(label_name: str, label: np.ndarray, n_rows: int) -> None:
    if not isinstance(label, np.ndarray) or label.shape != (n_rows,):
        shape = getattr(label, "shape", None)
        raise ValueError(f"labels[{label_name!r}] must have shape ({n_rows},), got {shape}.")
    if label.dtype != np.int64:
        raise ValueError(f"labels[{label_name!r}] must have dtype int64, got {label.dtype}.")


def _validate_latent(latent_name: str, latent: np.ndarray, n_rows: int) -> None:
    if not isinstance(latent, np.ndarray) or latent.ndim != 2 or latent.shape[0] != n_rows:
        shape = getattr(latent, "shape", None)
        raise ValueError(f"latents[{latent_name!r}] must have shape ({n_rows}, m), got {shape}.")
    if not np.isfinite(latent).all():
        raise ValueError(f"latents[{latent_name!r}] contains non-finite values (NaN or inf).")


def _validate_index(field_name: str, index: np.ndarray, n_rows: int) -> None:
    if not isinstance(index, np.ndarray) or index.ndim != 1:
        shape = getattr(index, "shape", None)
        raise ValueError(f"{field_name} must be a 1-D numpy array, got shape {shape}.")
    if index.dtype != np.int64:
        raise ValueError(f"{field_name} must have dtype int64, got {index.dtype}.")
    if index.size == 0:
        return

    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= n_rows:
        raise ValueError(f"{field_name} has values in [{low}, {high}], outside the valid range [0, {n_rows}).")
    n_unique = np.unique(index).size
    if n_unique != index.size:
        raise ValueError(f"{field_name} contains {index.size - n_unique} duplicate row indices.")
