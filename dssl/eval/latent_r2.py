"""Linear recoverability of true latents from a representation, measured by held-out ridge R^2."""

from __future__ import annotations

import logging
import math

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

_logger = logging.getLogger(__name__)


def latent_r2(
    representation: np.ndarray,
    latent: np.ndarray,
    train_fraction: float = 0.8,
    seed: int = 0,
    alpha: float = 1.0,
) -> float:
    """Fit a ridge regression from a representation to a latent and score it on held-out rows.

    The rows are permuted with ``numpy.random.default_rng(seed)``. The first
    ``round(n * train_fraction)`` rows fit ``sklearn.linear_model.Ridge(alpha)`` (with intercept,
    no feature scaling) and the remaining rows are scored.

    Args:
        representation: Features, shape ``(n, k)``.
        latent: Regression targets, shape ``(n, m)``. A 1-D array of shape ``(n,)`` is treated as
            ``m = 1``.
        train_fraction: Fraction of rows used for fitting, in (0, 1). Both parts need at least two
            rows.
        seed: Seed of the row permutation.
        alpha: L2 penalty of the ridge regression, >= 0.

    Returns:
        Held-out R^2 averaged uniformly over the ``m`` latent dimensions. It is 1 for a perfect
        linear fit, about 0 or below for a representation that carries no information about the
        latent, and can be negative.
    """
    representation = np.asarray(representation, dtype=np.float64)
    latent = np.asarray(latent, dtype=np.float64)
    if latent.ndim == 1:
        latent = latent[:, np.newaxis]
    _validate_arguments(representation, latent, train_fraction, alpha)

    n_rows = representation.shape[0]
    n_train = int(round(n_rows * train_fraction))
    permutation = np.random.default_rng(seed).permutation(n_rows)
    train_rows, test_rows = permutation[:n_train], permutation[n_train:]

    model = Ridge(alpha=alpha)
    model.fit(representation[train_rows], latent[train_rows])
    prediction = model.predict(representation[test_rows])
    score = float(r2_score(latent[test_rows], prediction, multioutput="uniform_average"))

    _logger.debug("Latent R^2 = %.4f from %d training rows and %d test rows.", score, n_train, test_rows.size)
    return score


def _validate_arguments(representation: np.ndarray, latent: np.ndarray, train_fraction: float, alpha: float) -> None:
    if representation.ndim != 2:
        raise ValueError(f"representation must have shape (n, k), got {representation.shape}.")
    if latent.ndim != 2 or latent.shape[0] != representation.shape[0]:
        raise ValueError(
            f"latent must have shape ({representation.shape[0]}, m) to match representation, got {latent.shape}."
        )
    if not np.isfinite(representation).all():
        raise ValueError("representation contains non-finite values (NaN or inf).")
    if not np.isfinite(latent).all():
        raise ValueError("latent contains non-finite values (NaN or inf).")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}.")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}.")

    n_rows = representation.shape[0]
    n_train = int(round(n_rows * train_fraction))
    if n_train < 2 or n_rows - n_train < 2:
        raise ValueError(
            f"{n_rows} rows with train_fraction={train_fraction} give {n_train} fitting rows and "
            f"{n_rows - n_train} scoring rows, but both need at least 2."
        )
