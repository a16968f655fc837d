"""Tests of the logistic-regression probes and the latent R^2 score."""

from __future__ import annotations

import numpy as np
import pytest

from dssl.eval.latent_r2 import latent_r2
from dssl.eval.probes import linear_probe_accuracy, probe_representations


def _separable_blobs(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n_rows)
    centers = np.where(labels[:, np.newaxis] == 1, 3.0, -3.0)
    features = centers + rng.standard_normal((n_rows, 5))
    return features, labels


def test_probe_separable_data() -> None:
    train_x, train_y = _separable_blobs(2000, seed=0)
    test_x, test_y = _separable_blobs(2000, seed=1)
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    assert accuracy > 0.95
    assert accuracy <= 1.0


def test_probe_random_labels() -> None:
    rng = np.random.default_rng(2)
    train_x = rng.standard_normal((2000, 10))
    test_x = rng.standard_normal((4000, 10))
    train_y = rng.integers(0, 2, size=2000)
    test_y = rng.integers(0, 2, size=4000)
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    # The standard error of a chance accuracy on 4000 rows is 0.008.
    assert abs(accuracy - 0.5) < 0.04


def test_probe_multiclass() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=3000)
    centers = np.eye(4)[labels] * 6.0
    features = centers + rng.standard_normal((3000, 4))
    accuracy = linear_probe_accuracy(features[:2000], labels[:2000], features[2000:], labels[2000:])
    assert accuracy > 0.95


def test_probe_single_class_raises() -> None:
    features = np.random.default_rng(4).standard_normal((50, 3))
    with pytest.raises(ValueError, match=r"single class \(7\)"):
        linear_probe_accuracy(features, np.full(50, 7), features, np.full(50, 7))


def test_probe_subsample_uses_max_rows() -> None:
    train_x, train_y = _separable_blobs(5000, seed=5)
    test_x, test_y = _separable_blobs(1000, seed=6)
    # Label noise on the rows outside a 40-row subsample cannot hurt a probe fitted on 40 rows.
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, max_train_samples=40, seed=0)
    assert accuracy > 0.95

    same = linear_probe_accuracy(train_x, train_y, test_x, test_y, max_train_samples=40, seed=0)
    assert same == accuracy


def test_probe_subsample_changes_fit() -> None:
    rng = np.random.default_rng(7)
    train_x = rng.standard_normal((3000, 20))
    train_y = rng.integers(0, 2, size=3000)
    test_x = rng.standard_normal((3000, 20))
    test_y = rng.integers(0, 2, size=3000)
    accuracies = {
        linear_probe_accuracy(train_x, train_y, test_x, test_y, max_train_samples=100, seed=seed) for seed in range(4)
    }
    assert len(accuracies) > 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"test_x": np.zeros((10, 4))}, "test_x has 4"),
        ({"train_y": np.zeros(9, dtype=np.int64)}, r"train_y must have shape \(10,\)"),
        ({"train_x": np.full((10, 3), np.inf)}, "train_x contains non-finite"),
    ],
)
def test_probe_invalid_arguments(options: dict[str, object], message: str) -> None:
    arguments = {
        "train_x": np.zeros((10, 3)),
        "train_y": np.arange(10) % 2,
        "test_x": np.zeros((10, 3)),
        "test_y": np.arange(10) % 2,
    }
    arguments.update(options)
    with pytest.raises(ValueError, match=message):
        linear_probe_accuracy(**arguments)


def test_probe_representations_keys_and_values() -> None:
    rng = np.random.default_rng(8)
    signal_train, y_train = _separable_blobs(1500, seed=9)
    signal_test, y_test = _separable_blobs(1500, seed=10)
    noise_train = rng.standard_normal((1500, 5))
    noise_test = rng.standard_normal((1500, 5))
    random_train = rng.integers(0, 2, size=1500)
    random_test = rng.integers(0, 2, size=1500)

    metrics = probe_representations(
        {"signal": (signal_train, signal_test), "noise": (noise_train, noise_test)},
        {"y_a": y_train, "y_r": random_train},
        {"y_a": y_test, "y_r": random_test},
    )
    assert list(metrics) == ["probe/signal/y_a", "probe/signal/y_r", "probe/noise/y_a", "probe/noise/y_r"]
    assert metrics["probe/signal/y_a"] > 0.95
    assert abs(metrics["probe/noise/y_a"] - 0.5) < 0.05
    assert abs(metrics["probe/signal/y_r"] - 0.5) < 0.05
    assert all(isinstance(value, float) for value in metrics.values())


def test_probe_representations_single_class_names_label() -> None:
    features = np.random.default_rng(11).standard_normal((30, 2))
    with pytest.raises(ValueError, match="'y_const'"):
        probe_representations(
            {"shared": (features, features)},
            {"y_ok": np.arange(30) % 2, "y_const": np.zeros(30, dtype=np.int64)},
            {"y_ok": np.arange(30) % 2, "y_const": np.zeros(30, dtype=np.int64)},
        )


def test_probe_representations_mismatched_labels() -> None:
    features = np.zeros((4, 2))
    with pytest.raises(ValueError, match="must match"):
        probe_representations({"shared": (features, features)}, {"y_c": np.arange(4) % 2}, {"y_1": np.arange(4) % 2})


def test_probe_representations_names_failed_probe() -> None:
    features = np.zeros((4, 2))
    with pytest.raises(ValueError, match="'probe/shared/y_c'"):
        probe_representations(
            {"shared": (features, np.zeros((4, 3)))},
            {"y_c": np.arange(4) % 2},
            {"y_c": np.arange(4) % 2},
        )


# Latent R^2.


def test_latent_r2_linear_representation() -> None:
    rng = np.random.default_rng(12)
    latent = rng.standard_normal((2000, 5))
    representation = latent @ rng.standard_normal((5, 20)) + 0.01 * rng.standard_normal((2000, 20))
    assert latent_r2(representation, latent) > 0.99


def test_latent_r2_unrelated_representation() -> None:
    rng = np.random.default_rng(13)
    latent = rng.standard_normal((2000, 5))
    representation = rng.standard_normal((2000, 20))
    score = latent_r2(representation, latent)
    assert score < 0.03
    assert score > -0.1


def test_latent_r2_partial_information() -> None:
    # The representation contains 2 of 4 independent latent dimensions, so the uniform average is 0.5.
    rng = np.random.default_rng(14)
    latent = rng.standard_normal((4000, 4))
    score = latent_r2(latent[:, :2], latent)
    assert abs(score - 0.5) < 0.02


def test_latent_r2_one_dimensional_latent() -> None:
    rng = np.random.default_rng(15)
    representation = rng.standard_normal((500, 3))
    latent = representation @ np.array([1.0, -2.0, 0.5])
    assert latent_r2(representation, latent, alpha=1e-6) > 0.999


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"alpha": -1.0}, "alpha"),
        ({"latent": np.zeros((9, 2))}, r"latent must have shape \(10, m\)"),
        ({"train_fraction": 0.05}, "at least 2"),
    ],
)
def test_latent_r2_invalid_arguments(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"representation": np.zeros((10, 3)), "latent": np.zeros((10, 2))}
    arguments.update(options)
    with pytest.raises(ValueError, match=message):
        latent_r2(**arguments)
