"""Synthetic two-modality benchmark with known shared and modality-specific latents.

The generative model follows the synthetic experiment of Wang et al., "An Information Criterion for
Controlled Disentanglement of Multimodal Data" (ICLR 2025):

- latents ``Zs`` (shared), ``Z1`` and ``Z2`` (specific), each i.i.d. ``N(0, latent_variance * I)``;
- ``X1 = [Z1, Zs] @ T1`` and ``X2 = [Z2, Zs] @ T2`` with mixing entries i.i.d. ``U(-1, 1)``;
- three balanced binary labels, each a frozen random ReLU MLP (Xavier-uniform weights) of one
  latent block plus Gaussian logit noise, thresholded at its median: ``y_1`` from ``Z1``, ``y_c`` from ``Zs``, ``y_2`` from ``Z2``.

The ``regime`` option changes only how ``X1`` and ``X2`` are made from the latents. The latents,
labels and split are the same in every regime for the same seed and sizes.

- ``"reference"``: the construction above, unchanged.
- ``"attainable"``: the mixing matrices are replaced by the nearest matrices with orthonormal rows,
  scaled to the same Frobenius norm. ``Zs`` is then an exact linear function of ``X1`` alone (and of
  ``X2`` alone), so a minimal necessary information (MNI) representation exists for every seed.
- ``"unattainable"``: the reference mixing plus independent Gaussian observation noise, and/or
  fewer observed dimensions than ``2 * latent_dim``. The pair ``(X1, X2)`` is then jointly Gaussian
  with at least one canonical correlation strictly between 0 and 1 (and, with noise, none equal
  to 1), so no function of one modality carries all the shared information without also carrying
  modality-specific information.

``docs/method.md`` (section "Synthetic regimes") gives the arguments.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from dssl.data.dataset import PairedDataset

_logger = logging.getLogger(__name__)

SYNTHETIC_REGIMES: tuple[str, ...] = ("reference", "attainable", "unattainable")
"""Values accepted by the ``regime`` argument of :func:`make_synthetic`."""

DEFAULT_RELATIVE_NOISE_STD: float = 0.5
"""Observation-noise level of the ``"unattainable"`` regime when none is given.

At this level and the default sizes, the best linear estimate of ``Zs`` from ``X1`` has a
population R^2 of 0.61 and explains 0.11 of ``Z1``'s variance. The largest canonical correlation
between ``X1`` and ``X2`` is 0.82-0.84. These values were computed from the mixing matrices of
seeds 0, 1 and 2 in closed form.
"""


def make_synthetic(
    n_samples: int = 90000,
    latent_dim: int = 50,
    x_dim: int = 100,
    latent_variance: float = 0.5,
    label_noise_std: float = 0.1,
    label_hidden_dim: int = 100,
    test_fraction: float = 0.2,
    seed: int = 0,
    regime: str = "reference",
    relative_noise_std: float | None = None,
) -> PairedDataset:
    """Generate the synthetic two-modality benchmark.

    All randomness comes from ``numpy.random.default_rng(seed)``, split into independent child
    streams for latents, mixing matrices, label-network weights, logit noise, the train/test
    permutation and observation noise. So the mixing matrices and label networks depend only on
    ``seed`` and the dimensions, not on ``n_samples``. The first five streams are the ones the
    generator used before regimes existed, so ``regime="reference"`` reproduces its arrays.

    Every regime draws the same uniform matrices ``U(-1, 1)`` of shape ``(2 * latent_dim, x_dim)``
    from the mixing stream and differs only in how it turns them into ``X1`` and ``X2``:

    - ``"reference"``: ``X = [Z, Zs] @ T``. The minimal necessary information (MNI) point is
      attainable almost surely when ``x_dim >= 2 * latent_dim`` (``T`` is then injective), but
      ``T`` is badly conditioned: condition numbers of 160-3100 at the default sizes (seeds 0-2,
      both modalities). With ``x_dim < 2 * latent_dim`` it is not attainable.
    - ``"attainable"``: ``X = [Z, Zs] @ Q`` with ``Q = c * U @ Vt`` from the SVD ``T = U S Vt``.
      ``U @ Vt`` is the matrix with orthonormal rows nearest to ``T`` in Frobenius norm, and
      ``c = ||T||_F / sqrt(2 * latent_dim)`` keeps the reference's total signal power. ``Q @ Q.T
      = c^2 I``, so ``Zs = X1 @ Q1[latent_dim:].T / c1^2`` exactly: a function of ``X1`` alone that
      carries all the information ``X1`` shares with ``X2`` and nothing of ``Z1``.
    - ``"unattainable"``: ``X = [Z, Zs] @ T + s * E`` with ``E`` standard normal, independent per
      row, coordinate and modality, and ``s = relative_noise_std * sqrt(latent_variance *
      ||T||_F^2 / x_dim)``, i.e. ``relative_noise_std`` times the root-mean-square standard
      deviation of the noise-free coordinates.

    Args:
        n_samples: Number of paired rows ``N``, at least 2.
        latent_dim: Dimension of each latent block ``Zs``, ``Z1``, ``Z2``.
        x_dim: Dimension of each modality ``X1``, ``X2``.
        latent_variance: Variance of every latent coordinate, > 0.
        label_noise_std: Standard deviation of the Gaussian noise added to each label logit, >= 0.
        label_hidden_dim: Hidden width of the random label MLPs (``latent_dim -> hidden -> 1``).
        test_fraction: Fraction of rows in the test split, in (0, 1). The test split has
            ``round(N * test_fraction)`` rows.
        seed: Seed of the generator. The same seed gives identical arrays.
        regime: ``"reference"``, ``"attainable"`` or ``"unattainable"``, see above.
        relative_noise_std: Observation-noise standard deviation of the ``"unattainable"``
            regime, relative to the noise-free coordinates' root-mean-square standard deviation,
            >= 0. ``None`` selects :data:`DEFAULT_RELATIVE_NOISE_STD`. It must be ``None`` for
            the other regimes, and it may be 0 only when ``x_dim < 2 * latent_dim``.

    Returns:
        A :class:`PairedDataset` named ``"synthetic"`` with ``x1`` and ``x2`` of shape
        ``(N, x_dim)`` (float32), labels ``"y_c"``, ``"y_1"``, ``"y_2"`` of shape ``(N,)`` (int64,
        values 0/1, ``N // 2`` ones each), and latents ``"z_s"``, ``"z_1"``, ``"z_2"`` of shape
        ``(N, latent_dim)`` (float32). The latents, labels and split do not depend on ``regime``.

    Raises:
        ValueError: If an option is out of range, ``regime`` is unknown, ``regime="attainable"``
            is combined with ``x_dim < 2 * latent_dim``, ``relative_noise_std`` is given for a
            regime other than ``"unattainable"``, or ``regime="unattainable"`` would be noise-free
            with ``x_dim >= 2 * latent_dim`` (which is attainable).

    Example:
        >>> data = make_synthetic(n_samples=1000, latent_dim=4, x_dim=8, regime="attainable")
        >>> data.x1.shape, data.latents["z_s"].shape
        ((1000, 8), (1000, 4))
    """
    _validate_options(n_samples, latent_dim, x_dim, latent_variance, label_noise_std, label_hidden_dim, test_fraction)
    noise_level = _resolve_noise_level(regime, relative_noise_std, latent_dim, x_dim)
    started = time.perf_counter()

    # spawn(6) returns the same first five streams as spawn(5), so adding the observation-noise
    # stream left the reference arrays unchanged.
    streams = np.random.default_rng(seed).spawn(6)
    latent_rng, mixing_rng, network_rng, noise_rng, split_rng, observation_rng = streams

    # Latents are drawn in float32 and the modalities are computed from these stored values, so
    # X1 = [Z1, Zs] @ T1 holds up to float32 rounding of the product. With float32 throughout,
    # 90,000 rows took 0.5-0.7 s on one thread of a 2-core AMD EPYC virtual machine.
    scale = np.float32(math.sqrt(latent_variance))
    z_s = latent_rng.standard_normal((n_samples, latent_dim), dtype=np.float32) * scale
    z_1 = latent_rng.standard_normal((n_samples, latent_dim), dtype=np.float32) * scale
    z_2 = latent_rng.standard_normal((n_samples, latent_dim), dtype=np.float32) * scale

    draws_1 = mixing_rng.uniform(-1.0, 1.0, size=(2 * latent_dim, x_dim))
    draws_2 = mixing_rng.uniform(-1.0, 1.0, size=(2 * latent_dim, x_dim))
    if regime == "attainable":
        mixing_1, mixing_2 = _orthonormal_rows(draws_1), _orthonormal_rows(draws_2)
    else:
        mixing_1, mixing_2 = draws_1.astype(np.float32), draws_2.astype(np.float32)
    x1 = _mix(z_1, z_s, mixing_1)
    x2 = _mix(z_2, z_s, mixing_2)

    if regime == "unattainable" and noise_level > 0.0:
        x1 += _observation_noise(observation_rng, draws_1, latent_variance, noise_level, n_samples)
        x2 += _observation_noise(observation_rng, draws_2, latent_variance, noise_level, n_samples)

    labels = {
        "y_c": _random_mlp_label(z_s, label_hidden_dim, label_noise_std, network_rng, noise_rng),
        "y_1": _random_mlp_label(z_1, label_hidden_dim, label_noise_std, network_rng, noise_rng),
        "y_2": _random_mlp_label(z_2, label_hidden_dim, label_noise_std, network_rng, noise_rng),
    }

    n_test = int(round(n_samples * test_fraction))
    permutation = split_rng.permutation(n_samples)
    test_index = np.sort(permutation[:n_test]).astype(np.int64)
    train_index = np.sort(permutation[n_test:]).astype(np.int64)

    dataset = PairedDataset(
        x1=x1,
        x2=x2,
        labels=labels,
        latents={"z_s": z_s, "z_1": z_1, "z_2": z_2},
        train_index=train_index,
        test_index=test_index,
        name="synthetic",
    )
    _logger.debug(
        "Generated synthetic dataset: regime=%s, %d rows, latent_dim=%d, x_dim=%d, seed=%d in %.3f s.",
        regime,
        n_samples,
        latent_dim,
        x_dim,
        seed,
        time.perf_counter() - started,
    )
    return dataset


def _mix(specific: np.ndarray, shared: np.ndarray, mixing: np.ndarray) -> np.ndarray:
    """Compute ``[specific, shared] @ mixing`` in float32, shape ``(N, x_dim)``."""
    return np.concatenate([specific, shared], axis=1) @ mixing


def _orthonormal_rows(draws: np.ndarray) -> np.ndarray:
    """Replace ``draws`` by the nearest matrix with orthonormal rows, rescaled to its norm.

    Args:
        draws: Mixing draws of shape ``(k, x_dim)`` with ``k <= x_dim``, float64.

    Returns:
        ``c * U @ Vt`` in float32, shape ``(k, x_dim)``, where ``draws = U S Vt`` is the thin SVD
        and ``c = ||draws||_F / sqrt(k)``. ``U @ Vt`` is the orthogonal (polar) factor of
        ``draws``, unique when ``draws`` has full row rank, so SVD sign choices do not change it.
    """
    left, _, right_t = np.linalg.svd(draws, full_matrices=False)
    scale = np.linalg.norm(draws) / math.sqrt(draws.shape[0])
    return (scale * (left @ right_t)).astype(np.float32)


def _observation_noise(
    rng: np.random.Generator,
    draws: np.ndarray,
    latent_variance: float,
    relative_noise_std: float,
    n_samples: int,
) -> np.ndarray:
    """Draw Gaussian observation noise for one modality, shape ``(N, x_dim)``, float32.

    The standard deviation is ``relative_noise_std`` times the root-mean-square standard deviation
    of the noise-free coordinates, ``sqrt(latent_variance * ||draws||_F^2 / x_dim)``. It is computed
    from the mixing matrix, not from the sample, so it does not depend on ``n_samples``.
    """
    x_dim = draws.shape[1]
    signal_std = math.sqrt(latent_variance * float(np.sum(draws**2)) / x_dim)
    noise_std = np.float32(relative_noise_std * signal_std)
    return rng.standard_normal((n_samples, x_dim), dtype=np.float32) * noise_std


def _random_mlp_label(
    latent: np.ndarray,
    hidden_dim: int,
    noise_std: float,
    network_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> np.ndarray:
    """Threshold a frozen random ReLU MLP of ``latent`` (plus logit noise) at its median.

    The network is ``latent_dim -> hidden_dim -> 1``. Weights are drawn Xavier-uniform,
    ``U(-sqrt(6 / (fan_in + fan_out)), +sqrt(6 / (fan_in + fan_out)))``, and biases from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as the authors' released generator does with
    ``torch.nn.init.xavier_uniform_`` on a default ``torch.nn.Linear``. With these scales and the
    default sizes, the noise-free logits had a standard deviation of about 0.4-0.5 in three draws,
    several times the default noise standard deviation of 0.1.

    Returns:
        Labels of shape ``(N,)``, int64, with ``N // 2`` ones because the logits are continuous.
    """
    n_rows, latent_dim = latent.shape
    weight_in = _xavier_uniform(network_rng, latent_dim, hidden_dim).astype(np.float32)
    bias_in = _bias_uniform(network_rng, latent_dim, size=hidden_dim).astype(np.float32)
    weight_out = _xavier_uniform(network_rng, hidden_dim, 1).astype(np.float32)[:, 0]
    bias_out = np.float32(_bias_uniform(network_rng, hidden_dim, size=1)[0])

    hidden = np.maximum(latent @ weight_in + bias_in, np.float32(0.0))
    logits = hidden @ weight_out + bias_out
    logits = logits + np.float32(noise_std) * noise_rng.standard_normal(n_rows, dtype=np.float32)

    return (logits > np.median(logits)).astype(np.int64)


def _xavier_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=(fan_in, fan_out))


def _bias_uniform(rng: np.random.Generator, fan_in: int, size: int) -> np.ndarray:
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=size)


def _resolve_noise_level(regime: str, relative_noise_std: float | None, latent_dim: int, x_dim: int) -> float:
    """Check the regime options and return the relative observation-noise level (0 if none)."""
    if regime not in SYNTHETIC_REGIMES:
        raise ValueError(f"regime must be one of {list(SYNTHETIC_REGIMES)}, got {regime!r}.")

    invertible = x_dim >= 2 * latent_dim
    if regime == "attainable" and not invertible:
        raise ValueError(
            f"regime='attainable' needs x_dim >= 2 * latent_dim = {2 * latent_dim}, got x_dim={x_dim}. "
            "A linear map into fewer dimensions than the latents cannot be inverted, so Zs would not be "
            "a function of X1 alone. Increase x_dim or use regime='reference' or 'unattainable'."
        )

    if relative_noise_std is None:
        return DEFAULT_RELATIVE_NOISE_STD if regime == "unattainable" else 0.0
    if regime != "unattainable":
        raise ValueError(
            f"relative_noise_std applies only to regime='unattainable', got relative_noise_std="
            f"{relative_noise_std!r} with regime={regime!r}. Leave it None for this regime."
        )
    if (
        isinstance(relative_noise_std, bool)
        or not isinstance(relative_noise_std, (int, float, np.integer, np.floating))
        or not math.isfinite(relative_noise_std)
        or relative_noise_std < 0
    ):
        raise ValueError(f"relative_noise_std must be a finite number >= 0, got {relative_noise_std!r}.")
    if relative_noise_std == 0 and invertible:
        raise ValueError(
            f"regime='unattainable' with relative_noise_std=0 needs x_dim < 2 * latent_dim = {2 * latent_dim}, "
            f"got x_dim={x_dim}. Noise-free mixing into that many dimensions is invertible, which makes "
            "the MNI point attainable. Set relative_noise_std > 0 or lower x_dim."
        )
    return float(relative_noise_std)


def _validate_options(
    n_samples: int,
    latent_dim: int,
    x_dim: int,
    latent_variance: float,
    label_noise_std: float,
    label_hidden_dim: int,
    test_fraction: float,
) -> None:
    for option_name, value in (
        ("n_samples", n_samples),
        ("latent_dim", latent_dim),
        ("x_dim", x_dim),
        ("label_hidden_dim", label_hidden_dim),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{option_name} must be a positive integer, got {value!r}.")

    if not math.isfinite(latent_variance) or latent_variance <= 0:
        raise ValueError(f"latent_variance must be a finite number > 0, got {latent_variance!r}.")
    if not math.isfinite(label_noise_std) or label_noise_std < 0:
        raise ValueError(f"label_noise_std must be a finite number >= 0, got {label_noise_std!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")

    n_test = int(round(n_samples * test_fraction))
    if n_test < 1 or n_test >= n_samples:
        raise ValueError(
            f"n_samples={n_samples} with test_fraction={test_fraction} gives {n_test} test rows and "
            f"{n_samples - n_test} training rows, but both splits need at least one row."
        )
