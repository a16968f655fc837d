"""Two-view version of the scikit-learn handwritten digits: left and right halves of each image."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dssl.data.dataset import PairedDataset

_logger = logging.getLogger(__name__)

_IMAGE_SIDE = 8
_HALF_WIDTH = _IMAGE_SIDE // 2


def make_digits_two_view(test_fraction: float = 0.2, seed: int = 0, standardize: bool = True) -> PairedDataset:
    """Split each 8x8 digit image into a left view and a right view.

    The data is ``sklearn.datasets.load_digits`` (1,797 images, 10 classes, shipped with
    scikit-learn, so no download is needed). Both views see the same digit, so the class is shared
    information, while stroke details of each half are view-specific.

    Args:
        test_fraction: Fraction of rows in the test split, in (0, 1). The split is stratified by
            digit class.
        seed: Seed of the stratified split.
        standardize: If true, each feature is shifted and scaled by the mean and standard deviation
            of the training split only. Features that are constant on the training split are only
            shifted, so they stay finite.

    Returns:
        A :class:`PairedDataset` named ``"digits"`` with ``x1`` (columns 0-3 of each image) and
        ``x2`` (columns 4-7), each of shape ``(1797, 32)`` and float32, the label ``"digit"`` of
        shape ``(1797,)`` (int64, values 0-9) and no latents.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    digit = np.asarray(bunch.target, dtype=np.int64)
    n_rows = images.shape[0]

    # images has shape (N, 8, 8) indexed as (sample, row, column).
    left = images[:, :, :_HALF_WIDTH].reshape(n_rows, -1)
    right = images[:, :, _HALF_WIDTH:].reshape(n_rows, -1)

    train_index, test_index = train_test_split(
        np.arange(n_rows, dtype=np.int64),
        test_size=test_fraction,
        random_state=seed,
        stratify=digit,
    )
    train_index = np.sort(train_index).astype(np.int64)
    test_index = np.sort(test_index).astype(np.int64)

    if standardize:
        left = _standardize_with_train_statistics(left, train_index)
        right = _standardize_with_train_statistics(right, train_index)

    _logger.debug(
        "Built two-view digits: %d training rows, %d test rows, standardize=%s, seed=%d.",
        train_index.size,
        test_index.size,
        standardize,
        seed,
    )
    return PairedDataset(
        x1=left.astype(np.float32),
        x2=right.astype(np.float32),
        labels={"digit": digit},
        latents={},
        train_index=train_index,
        test_index=test_index,
        name="digits",
    )


def _standardize_with_train_statistics(features: np.ndarray, train_index: np.ndarray) -> np.ndarray:
    """Standardise ``features`` of shape ``(N, d)`` with the mean and std of the training rows."""
    train_rows = features[train_index]
    mean = train_rows.mean(axis=0)
    std = train_rows.std(axis=0)

    # Border pixels of the digits are 0 in almost every image, so some std values are exactly 0.
    std = np.where(std > 0.0, std, 1.0)
    return (features - mean) / std
