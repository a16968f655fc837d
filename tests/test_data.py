"""Tests of the dataset container, the synthetic and digits datasets, and the augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dssl.data.augment import augment
from dssl.data.dataset import PairedDataset, load_dataset
from dssl.data.digits import make_digits_two_view
from dssl.data.synthetic import make_synthetic
from dssl.eval.probes import linear_probe_accuracy


@pytest.fixture(scope="module")
def synthetic() -> PairedDataset:
    return make_synthetic()


@pytest.fixture(scope="module")
def digits() -> PairedDataset:
    return make_digits_two_view()


def _small_dataset(n_rows: int = 10, train_rows: int = 8) -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "x1": rng.standard_normal((n_rows, 3)).astype(np.float32),
        "x2": rng.standard_normal((n_rows, 4)).astype(np.float32),
        "labels": {"y": (np.arange(n_rows) % 2).astype(np.int64)},
        "latents": {},
        "train_index": np.arange(train_rows, dtype=np.int64),
        "test_index": np.arange(train_rows, n_rows, dtype=np.int64),
        "name": "small",
    }


# Synthetic benchmark.


def test_synthetic_shapes_and_dtypes(synthetic: PairedDataset) -> None:
    assert synthetic.name == "synthetic"
    assert synthetic.x1.shape == (90000, 100)
    assert synthetic.x2.shape == (90000, 100)
    assert synthetic.x1.dtype == np.float32
    assert synthetic.x2.dtype == np.float32
    assert sorted(synthetic.labels) == ["y_1", "y_2", "y_c"]
    assert sorted(synthetic.latents) == ["z_1", "z_2", "z_s"]
    for label in synthetic.labels.values():
        assert label.shape == (90000,)
        assert label.dtype == np.int64
        assert set(np.unique(label).tolist()) == {0, 1}
    for latent in synthetic.latents.values():
        assert latent.shape == (90000, 50)
        assert latent.dtype == np.float32


def test_synthetic_latent_variance(synthetic: PairedDataset) -> None:
    for name, latent in synthetic.latents.items():
        assert abs(float(latent.mean())) < 0.01, name
        assert abs(float(latent.var()) - 0.5) < 0.01, name


def test_synthetic_same_seed_identical() -> None:
    first = make_synthetic(n_samples=2000, seed=3)
    second = make_synthetic(n_samples=2000, seed=3)
    np.testing.assert_array_equal(first.x1, second.x1)
    np.testing.assert_array_equal(first.x2, second.x2)
    np.testing.assert_array_equal(first.train_index, second.train_index)
    for name in first.labels:
        np.testing.assert_array_equal(first.labels[name], second.labels[name])
    for name in first.latents:
        np.testing.assert_array_equal(first.latents[name], second.latents[name])


def test_synthetic_different_seed_differs() -> None:
    first = make_synthetic(n_samples=2000, seed=3)
    second = make_synthetic(n_samples=2000, seed=4)
    assert not np.array_equal(first.x1, second.x1)
    assert not np.array_equal(first.x2, second.x2)
    assert not np.array_equal(first.labels["y_c"], second.labels["y_c"])
    assert not np.array_equal(first.train_index, second.train_index)


def test_synthetic_mixing_independent_of_size() -> None:
    # The same seed gives the same mixing matrix T1 for any number of rows.
    estimates = []
    for n_samples in (400, 800):
        dataset = make_synthetic(n_samples=n_samples, latent_dim=5, x_dim=8, seed=2)
        generators = np.concatenate([dataset.latents["z_1"], dataset.latents["z_s"]], axis=1)
        mixing, *_ = np.linalg.lstsq(generators.astype(np.float64), dataset.x1.astype(np.float64), rcond=None)
        estimates.append(mixing)
    np.testing.assert_allclose(estimates[0], estimates[1], atol=1e-4)


def test_synthetic_labels_balanced(synthetic: PairedDataset) -> None:
    _, _, train_labels = synthetic.split("train")
    _, _, test_labels = synthetic.split("test")
    for name, label in synthetic.labels.items():
        assert float(label.mean()) == 0.5, name
        assert abs(float(train_labels[name].mean()) - 0.5) <= 0.01, name
        assert abs(float(test_labels[name].mean()) - 0.5) <= 0.01, name


def test_synthetic_labels_differ(synthetic: PairedDataset) -> None:
    # Labels of independent latents agree on about half of the rows.
    agreement = float(np.mean(synthetic.labels["y_c"] == synthetic.labels["y_1"]))
    assert abs(agreement - 0.5) < 0.02


def test_synthetic_split_sizes_disjoint(synthetic: PairedDataset) -> None:
    assert synthetic.train_index.size == 72000
    assert synthetic.test_index.size == 18000
    assert synthetic.train_index.dtype == np.int64
    assert np.intersect1d(synthetic.train_index, synthetic.test_index).size == 0
    union = np.union1d(synthetic.train_index, synthetic.test_index)
    np.testing.assert_array_equal(union, np.arange(90000))


def test_synthetic_x1_spanned_by_z1_zs(synthetic: PairedDataset) -> None:
    rows = slice(0, 5000)
    x1 = synthetic.x1[rows].astype(np.float64)
    generators = np.concatenate([synthetic.latents["z_1"][rows], synthetic.latents["z_s"][rows]], axis=1)
    generators = generators.astype(np.float64)

    mixing, *_ = np.linalg.lstsq(generators, x1, rcond=None)
    relative_residual = np.linalg.norm(generators @ mixing - x1) / np.linalg.norm(x1)
    assert relative_residual < 1e-5
    assert mixing.shape == (100, 100)
    assert float(np.abs(mixing).max()) <= 1.0 + 1e-4


def test_synthetic_x1_not_explained_by_z2(synthetic: PairedDataset) -> None:
    rows = slice(0, 5000)
    x1 = synthetic.x1[rows].astype(np.float64)
    z_2 = synthetic.latents["z_2"][rows].astype(np.float64)

    coefficients, *_ = np.linalg.lstsq(z_2, x1, rcond=None)
    explained = 1.0 - np.linalg.norm(z_2 @ coefficients - x1) ** 2 / np.linalg.norm(x1) ** 2
    # With 50 unrelated regressors and 5000 rows, chance alone explains about 50 / 5000 = 1%.
    assert explained < 0.03


def test_synthetic_x2_spanned_by_z2_zs(synthetic: PairedDataset) -> None:
    rows = slice(0, 5000)
    x2 = synthetic.x2[rows].astype(np.float64)
    generators = np.concatenate([synthetic.latents["z_2"][rows], synthetic.latents["z_s"][rows]], axis=1)
    generators = generators.astype(np.float64)

    mixing, *_ = np.linalg.lstsq(generators, x2, rcond=None)
    relative_residual = np.linalg.norm(generators @ mixing - x2) / np.linalg.norm(x2)
    assert relative_residual < 1e-5


def test_synthetic_probe_on_true_shared_latent(synthetic: PairedDataset) -> None:
    z_s = synthetic.latents["z_s"]
    train, test = synthetic.train_index, synthetic.test_index

    accuracy_shared = linear_probe_accuracy(
        z_s[train], synthetic.labels["y_c"][train], z_s[test], synthetic.labels["y_c"][test], max_train_samples=10000
    )
    accuracy_specific = linear_probe_accuracy(
        z_s[train], synthetic.labels["y_1"][train], z_s[test], synthetic.labels["y_1"][test], max_train_samples=10000
    )
    assert accuracy_shared > 0.75
    assert abs(accuracy_specific - 0.5) < 0.02


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"latent_variance": 0.0}, "latent_variance"),
        ({"label_noise_std": -0.1}, "label_noise_std"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"n_samples": 3, "test_fraction": 0.1}, "both splits"),
    ],
)
def test_synthetic_invalid_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic(**options)


# PairedDataset and load_dataset.


def test_dataset_split_returns_rows(synthetic: PairedDataset) -> None:
    x1, x2, labels = synthetic.split("test")
    assert x1.shape == (18000, 100)
    assert x2.shape == (18000, 100)
    np.testing.assert_array_equal(x1, synthetic.x1[synthetic.test_index])
    np.testing.assert_array_equal(x2, synthetic.x2[synthetic.test_index])
    np.testing.assert_array_equal(labels["y_2"], synthetic.labels["y_2"][synthetic.test_index])


def test_dataset_split_invalid_name(synthetic: PairedDataset) -> None:
    with pytest.raises(ValueError, match="'validation'"):
        synthetic.split("validation")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x2": np.zeros((9, 4), dtype=np.float32)}, "x2 has 9 rows"),
        ({"x1": np.zeros((10, 3), dtype=np.float64)}, "x1 must have dtype float32"),
        ({"x1": np.full((10, 3), np.nan, dtype=np.float32)}, "x1 contains 30 non-finite"),
        ({"labels": {"y": np.zeros(10, dtype=np.int32)}}, r"labels\['y'\] must have dtype int64"),
        ({"labels": {"y": np.zeros(7, dtype=np.int64)}}, r"labels\['y'\] must have shape \(10,\)"),
        ({"latents": {"z": np.zeros((9, 2), dtype=np.float32)}}, r"latents\['z'\]"),
        ({"test_index": np.array([7, 8, 9], dtype=np.int64)}, "share 1 rows"),
        ({"train_index": np.array([0, 10], dtype=np.int64)}, "outside the valid range"),
        ({"train_index": np.array([0, 0, 1], dtype=np.int64)}, "duplicate"),
        ({"train_index": np.zeros(0, dtype=np.int64)}, "train_index is empty"),
        ({"name": ""}, "name must be"),
    ],
)
def test_dataset_validation_rejects(change: dict[str, object], message: str) -> None:
    fields = _small_dataset()
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        PairedDataset(**fields)


def test_dataset_valid_small() -> None:
    dataset = PairedDataset(**_small_dataset())
    assert dataset.n_samples == 10
    x1, x2, labels = dataset.split("train")
    assert x1.shape == (8, 3)
    assert x2.shape == (8, 4)
    assert labels["y"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_load_dataset_dispatches() -> None:
    dataset = load_dataset("synthetic", n_samples=500, latent_dim=4, x_dim=6, seed=1)
    assert dataset.name == "synthetic"
    assert dataset.x1.shape == (500, 6)
    assert load_dataset("digits").name == "digits"


def test_load_dataset_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"'mnist'.*\['synthetic', 'digits', 'parquet'\]"):
        load_dataset("mnist")


# Data-parallel shards.


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_shards_disjoint_equal_covering(world_size: int) -> None:
    dataset = make_synthetic(n_samples=1004, latent_dim=2, x_dim=3, seed=0)
    n_train = dataset.train_index.size
    shards = [dataset.shard_indices(rank, world_size, seed=5) for rank in range(world_size)]

    for shard in shards:
        assert shard.size == n_train // world_size
        assert shard.dtype == np.int64
        assert np.isin(shard, dataset.train_index).all()
    union = np.concatenate(shards)
    assert np.unique(union).size == union.size
    assert n_train - union.size == n_train % world_size
    assert n_train - union.size < world_size


def test_shards_depend_on_seed() -> None:
    dataset = make_synthetic(n_samples=1000, latent_dim=2, x_dim=3, seed=0)
    np.testing.assert_array_equal(dataset.shard_indices(1, 4, seed=2), dataset.shard_indices(1, 4, seed=2))
    assert not np.array_equal(dataset.shard_indices(1, 4, seed=2), dataset.shard_indices(1, 4, seed=3))


@pytest.mark.parametrize(
    ("rank", "world_size", "message"),
    [
        (0, 0, "world_size must be"),
        (4, 4, r"rank must be an integer in \[0, 4\)"),
        (-1, 2, "rank must be"),
        (0, 10**6, "fewer than world_size"),
    ],
)
def test_shards_invalid_arguments(rank: int, world_size: int, message: str) -> None:
    dataset = make_synthetic(n_samples=100, latent_dim=2, x_dim=3, seed=0)
    with pytest.raises(ValueError, match=message):
        dataset.shard_indices(rank, world_size, seed=0)


# Two-view digits.


def test_digits_shapes_and_classes(digits: PairedDataset) -> None:
    assert digits.x1.shape == (1797, 32)
    assert digits.x2.shape == (1797, 32)
    assert digits.x1.dtype == np.float32
    assert digits.labels["digit"].dtype == np.int64
    assert np.unique(digits.labels["digit"]).tolist() == list(range(10))
    assert digits.latents == {}
    assert digits.train_index.size + digits.test_index.size == 1797
    assert np.intersect1d(digits.train_index, digits.test_index).size == 0


def test_digits_views_are_image_halves() -> None:
    raw = make_digits_two_view(standardize=False)
    images = load_digits().images
    np.testing.assert_array_equal(raw.x1, images[:, :, :4].reshape(1797, 32).astype(np.float32))
    np.testing.assert_array_equal(raw.x2, images[:, :, 4:].reshape(1797, 32).astype(np.float32))


def test_digits_split_stratified(digits: PairedDataset) -> None:
    digit = digits.labels["digit"]
    for value in range(10):
        n_class = int(np.sum(digit == value))
        n_test = int(np.sum(digit[digits.test_index] == value))
        assert abs(n_test - 0.2 * n_class) <= 1.0, value


def test_digits_standardized_with_train_only(digits: PairedDataset) -> None:
    raw = make_digits_two_view(standardize=False)
    train_raw = raw.x1[digits.train_index].astype(np.float64)
    mean = train_raw.mean(axis=0)
    std = train_raw.std(axis=0)
    expected = (raw.x1 - mean) / np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(digits.x1, expected, atol=1e-5)

    # Statistics of all rows differ from those of the training rows, so this comparison would fail
    # if the test rows leaked into the standardisation.
    all_mean = raw.x1.astype(np.float64).mean(axis=0)
    assert float(np.abs(all_mean - mean).max()) > 1e-3

    train_x1 = digits.x1[digits.train_index].astype(np.float64)
    varying = std > 0
    np.testing.assert_allclose(train_x1.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_x1.std(axis=0)[varying], 1.0, atol=1e-4)
    assert not np.allclose(digits.x1[digits.test_index].mean(axis=0), 0.0, atol=1e-3)


def test_digits_probe_predicts_digit(digits: PairedDataset) -> None:
    x1_train, _, labels_train = digits.split("train")
    x1_test, _, labels_test = digits.split("test")
    accuracy = linear_probe_accuracy(x1_train, labels_train["digit"], x1_test, labels_test["digit"])
    assert accuracy > 0.8


def test_digits_invalid_test_fraction() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        make_digits_two_view(test_fraction=0.0)


# Augmentation.


def _classify_augmented_rows(original: torch.Tensor, augmented: torch.Tensor, n_dropped: int) -> dict[str, torch.Tensor]:
    """Split rows into identity, drop and noise by how they changed. ``original`` has no zeros."""
    changed = augmented != original
    n_changed = changed.sum(dim=1)
    n_zeros = (augmented == 0).sum(dim=1)
    changed_are_zeros = (changed & (augmented == 0)).sum(dim=1) == n_changed

    identity = n_changed == 0
    drop = (n_changed == n_dropped) & (n_zeros == n_dropped) & changed_are_zeros
    noise = (n_changed > original.shape[1] // 2) & (n_zeros == 0)
    return {"identity": identity, "drop": drop, "noise": noise}


def test_augment_transform_rates() -> None:
    generator = torch.Generator().manual_seed(0)
    original = torch.randn(30000, 100, generator=generator)
    augmented = augment(original, generator=generator)

    rows = _classify_augmented_rows(original, augmented, n_dropped=10)
    assigned = rows["identity"].int() + rows["drop"].int() + rows["noise"].int()
    assert bool((assigned == 1).all()), "every row must match exactly one transform"

    # The standard error of each rate is sqrt(1/3 * 2/3 / 30000) = 0.0027, so 0.015 is 5.5 of them.
    for name, mask in rows.items():
        rate = mask.float().mean().item()
        assert abs(rate - 1 / 3) < 0.015, f"{name} rate {rate:.4f}"


def test_augment_drop_exact_and_uniform() -> None:
    generator = torch.Generator().manual_seed(1)
    original = torch.randn(30000, 100, generator=generator)
    augmented = augment(original, drop_fraction=0.1, generator=generator)

    drop_rows = _classify_augmented_rows(original, augmented, n_dropped=10)["drop"]
    zeros = augmented[drop_rows] == 0
    assert bool((zeros.sum(dim=1) == 10).all())

    # Each coordinate is dropped with probability 10/100, so in about 1000 of the 10000 drop rows.
    per_coordinate_rate = zeros.float().mean(dim=0)
    assert float((per_coordinate_rate - 0.1).abs().max()) < 0.02


def test_augment_noise_std() -> None:
    generator = torch.Generator().manual_seed(2)
    original = torch.randn(30000, 100, generator=generator, dtype=torch.float64)
    augmented = augment(original, noise_std=0.01, generator=generator)

    noise_rows = _classify_augmented_rows(original, augmented, n_dropped=10)["noise"]
    difference = (augmented - original)[noise_rows]
    assert abs(difference.mean().item()) < 2e-4
    assert abs(difference.std().item() - 0.01) < 2e-4


def test_augment_input_unchanged() -> None:
    generator = torch.Generator().manual_seed(3)
    original = torch.randn(256, 100, generator=generator)
    copy = original.clone()
    augmented = augment(original, generator=generator)
    assert torch.equal(original, copy)
    assert augmented.data_ptr() != original.data_ptr()
    assert augmented.dtype == original.dtype
    assert augmented.shape == original.shape


def test_augment_seeded_reproducible() -> None:
    x = torch.randn(256, 100)
    first = augment(x, generator=torch.Generator().manual_seed(7))
    second = augment(x, generator=torch.Generator().manual_seed(7))
    third = augment(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_augment_rounds_drop_count_down() -> None:
    generator = torch.Generator().manual_seed(4)
    original = torch.randn(3000, 25, generator=generator)
    augmented = augment(original, drop_fraction=0.1, generator=generator)
    drop_rows = _classify_augmented_rows(original, augmented, n_dropped=2)["drop"]
    assert int(drop_rows.sum()) > 800
    assert bool(((augmented[drop_rows] == 0).sum(dim=1) == 2).all())


def test_augment_non_contiguous_input() -> None:
    original = torch.randn(100, 64).t()
    augmented = augment(original, generator=torch.Generator().manual_seed(5))
    assert augmented.shape == (64, 100)
    unchanged_rows = (augmented == original).all(dim=1)
    assert 0 < int(unchanged_rows.sum()) < 64


@pytest.mark.parametrize(
    ("x", "options", "message"),
    [
        (torch.randn(10), {}, r"shape \(B, d\)"),
        (torch.ones(4, 3, dtype=torch.int64), {}, "floating-point"),
        (torch.randn(4, 3), {"noise_std": -0.1}, "noise_std"),
        (torch.randn(4, 3), {"noise_std": math.nan}, "noise_std"),
        (torch.randn(4, 3), {"drop_fraction": 1.5}, "drop_fraction"),
    ],
)
def test_augment_invalid_arguments(x: torch.Tensor, options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        augment(x, **options)
