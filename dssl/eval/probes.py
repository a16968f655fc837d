"""Linear probes: logistic-regression accuracy of labels predicted from frozen representations."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

_logger = logging.getLogger(__name__)

PROBE_MAX_ITER = 1000
"""Maximum number of L-BFGS iterations of each logistic regression."""


def linear_probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    max_train_samples: int | None = None,
    seed: int = 0,
) -> float:
    """Fit a standardised logistic regression on training features and score it on test features.

    The model is ``StandardScaler`` followed by ``LogisticRegression(solver="lbfgs",
    max_iter=1000)`` with the default L2 penalty ``C=1``. Binary and multi-class labels are both
    supported.

    Args:
        train_x: Training features, shape ``(n_train, k)``.
        train_y: Training labels, shape ``(n_train,)``, with at least two classes.
        test_x: Test features, shape ``(n_test, k)``.
        test_y: Test labels, shape ``(n_test,)``.
        max_train_samples: If set and smaller than ``n_train``, fit on this many training rows
            drawn uniformly without replacement (not stratified).
        seed: Seed of the row subsample.

    Returns:
        Accuracy on the test rows, in [0, 1].
    """
    train_x, train_y = _validate_features_and_labels("train", train_x, train_y)
    test_x, test_y = _validate_features_and_labels("test", test_x, test_y)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train_x has {train_x.shape[1]} features but test_x has {test_x.shape[1]}. "
            "Both must come from the same representation."
        )

    train_x, train_y = _subsample_rows(train_x, train_y, max_train_samples, seed)
    classes = np.unique(train_y)
    if classes.size < 2:
        raise ValueError(
            f"train_y contains a single class ({classes[0].item()!r}) in {train_y.size} rows, but "
            "a probe needs at least two classes."
        )

    model = _make_probe(seed)
    model.fit(train_x, train_y)
    return float(model.score(test_x, test_y))


def probe_representations(
    representations: dict[str, tuple[np.ndarray, np.ndarray]],
    labels_train: dict[str, np.ndarray],
    labels_test: dict[str, np.ndarray],
    max_train_samples: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Probe every representation for every label.

    Probes are fitted one after another in the calling process (no joblib workers).

    Args:
        representations: Representation name (for example ``"shared"``) to
            ``(train_features, test_features)`` of shapes ``(n_train, k)`` and ``(n_test, k)``.
        labels_train: Label name (for example ``"y_c"``) to training labels of shape ``(n_train,)``.
        labels_test: Label name to test labels of shape ``(n_test,)``. Must have the same keys as
            ``labels_train``.
        max_train_samples: Passed to :func:`linear_probe_accuracy`.
        seed: Passed to :func:`linear_probe_accuracy`, so every probe is fitted on the same row subsample.

    Returns:
        ``"probe/{representation}/{label}"`` to test accuracy, for example
        ``"probe/shared/y_c"``, ordered by representation, then label.
    """
    if set(labels_train) != set(labels_test):
        raise ValueError(
            f"labels_train has keys {sorted(labels_train)} but labels_test has keys {sorted(labels_test)}. "
            "They must match."
        )
    for label_name, label in labels_train.items():
        n_classes = np.unique(np.asarray(label)).size
        if n_classes < 2:
            raise ValueError(
                f"Training label {label_name!r} has {n_classes} class(es), but a probe needs at least two classes."
            )

    metrics: dict[str, float] = {}
    for representation_name, (train_features, test_features) in representations.items():
        for label_name, train_label in labels_train.items():
            key = f"probe/{representation_name}/{label_name}"
            try:
                metrics[key] = linear_probe_accuracy(
                    train_features,
                    train_label,
                    test_features,
                    labels_test[label_name],
                    max_train_samples=max_train_samples,
                    seed=seed,
                )
            except ValueError as error:
                raise ValueError(f"Probe {key!r} failed: {error}") from error
            _logger.debug("%s = %.4f", key, metrics[key])

    return metrics


def _make_probe(seed: int) -> Pipeline:
    # lbfgs is deterministic, so random_state only matters if the solver is changed.
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(solver="lbfgs", max_iter=PROBE_MAX_ITER, random_state=seed),
    )


def _validate_features_and_labels(split: str, features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{split}_x must have shape (n, k) with n >= 1, got {features.shape}.")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"{split}_y must have shape ({features.shape[0]},) to match {split}_x, got {labels.shape}.")
    if not np.isfinite(features).all():
        raise ValueError(f"{split}_x contains non-finite values (NaN or inf).")
    return features, labels


def _subsample_rows(
    features: np.ndarray,
    labels: np.ndarray,
    max_rows: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    if max_rows is None:
        return features, labels
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ValueError(f"max_train_samples must be a positive integer or None, got {max_rows!r}.")
    if max_rows >= features.shape[0]:
        return features, labels

    rows = np.random.default_rng(seed).choice(features.shape[0], size=max_rows, replace=False)
    return features[rows], labels[rows]
