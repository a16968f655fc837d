"""Tests for the von Mises-Fisher sampler, Bessel ratio and KL, and the probabilistic heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special
from scipy.stats import vonmises_fisher
from torch.nn import functional as F

from dssl.nn import vmf as vmf_module
from dssl.nn.vmf import (
    VonMisesFisherHead,
    kl_vmf_equal_kappa,
    mean_resultant_length,
    sample_vmf,
)

NUM_SAMPLES = 20_000
# Statistical checks allow 5 standard errors: a correct sampler fails one of them with
# probability below 1e-6, and the seeds are fixed.
NUM_STANDARD_ERRORS = 5.0


def _random_unit_vector(dim: int, seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim)
    return vector / np.linalg.norm(vector)


def _basis_rows(dim: int, index: int, count: int, sign: float = 1.0) -> torch.Tensor:
    rows = torch.zeros(count, dim)
    rows[:, index] = sign
    return rows


# ---------------------------------------------------------------------------------------------
# Mean resultant length A_d(kappa)
# ---------------------------------------------------------------------------------------------


def test_mean_resultant_length_reference_value() -> None:
    assert mean_resultant_length(1000.0, 100) == pytest.approx(0.9517, abs=1e-4)
    assert mean_resultant_length(1000.0, 100) == pytest.approx(0.951700854707637, rel=1e-12)


@pytest.mark.parametrize("dim", [2, 3, 10, 100, 1000])
def test_mean_resultant_length_matches_iv_ratio(dim: int) -> None:
    checked = 0
    for kappa in np.logspace(-6, 6, 241):
        with np.errstate(all="ignore"):
            numerator = special.iv(dim / 2, kappa)
            denominator = special.iv(dim / 2 - 1, kappa)
        # Unscaled Bessel functions overflow for large kappa and underflow for large order.
        if not (np.isfinite(numerator) and np.isfinite(denominator)):
            continue
        if numerator < 1e-290 or denominator < 1e-290:
            continue
        expected = numerator / denominator
        assert mean_resultant_length(float(kappa), dim) == pytest.approx(expected, rel=1e-10), kappa
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("dim", [2, 3, 100, 1000, 10000])
def test_mean_resultant_length_small_kappa_limit(dim: int) -> None:
    for kappa in [1e-6, 1e-4]:
        # A_d(kappa) = kappa / d - kappa^3 / (d^2 (d + 2)) + ..., so the relative error of
        # kappa / d is below kappa^2 / d^2.
        assert mean_resultant_length(kappa, dim) == pytest.approx(kappa / dim, rel=max(kappa**2, 1e-12))


@pytest.mark.parametrize("dim", [2, 3, 100, 1000, 10000])
def test_mean_resultant_length_large_kappa_limit(dim: int) -> None:
    for kappa in [1e5, 1e6]:
        # The next term of the expansion is -(d - 1)(d - 3) / (8 kappa^2).
        expected = 1.0 - (dim - 1) / (2.0 * kappa)
        assert abs(mean_resultant_length(kappa, dim) - expected) <= dim**2 / kappa**2


def test_mean_resultant_length_matches_mpmath_extremes() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    cases = [(10000, 1e-6), (10000, 1.0), (10000, 3e4), (10000, 1e6), (100, 1e-6), (2, 1e6), (3, 1e-6)]
    for dim, kappa in cases:
        expected = mpmath.besseli(dim / 2, kappa, maxterms=10**7) / mpmath.besseli(dim / 2 - 1, kappa, maxterms=10**7)
        assert mean_resultant_length(kappa, dim) == pytest.approx(float(expected), rel=1e-11), (dim, kappa)


def test_mean_resultant_length_is_increasing_and_bounded() -> None:
    kappas = np.logspace(-6, 6, 61)
    for dim in [2, 100, 10000]:
        values = np.array([mean_resultant_length(float(kappa), dim) for kappa in kappas])
        assert np.all(np.isfinite(values))
        assert np.all(values > 0.0)
        assert np.all(values < 1.0)
        assert np.all(np.diff(values) > 0.0)
    assert mean_resultant_length(0.0, 10) == 0.0


def test_mean_resultant_length_tensor_matches_float_and_gradient() -> None:
    kappa = torch.tensor([1e-6, 0.5, 10.0, 1000.0, 1e5], dtype=torch.float64, requires_grad=True)
    values = mean_resultant_length(kappa, 100)
    expected = [mean_resultant_length(float(k), 100) for k in kappa.detach()]
    assert isinstance(values, torch.Tensor)
    assert values.shape == kappa.shape
    assert torch.allclose(values.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0.0)
    assert torch.autograd.gradcheck(lambda k: mean_resultant_length(k, 100), (kappa,))


def test_mean_resultant_length_rejects_invalid_input() -> None:
    with pytest.raises(ValueError, match="kappa"):
        mean_resultant_length(-1.0, 10)
    with pytest.raises(ValueError, match="kappa"):
        mean_resultant_length(float("nan"), 10)
    with pytest.raises(ValueError, match="dim"):
        mean_resultant_length(1.0, 1)
    with pytest.raises(ValueError, match="kappa"):
        mean_resultant_length(torch.tensor([1.0, -2.0]), 10)


# ---------------------------------------------------------------------------------------------
# Sampler statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [3, 100])
@pytest.mark.parametrize("kappa", [1.0, 100.0, 1000.0, 1e5])
def test_sample_mean_cosine_matches_scipy_and_theory(dim: int, kappa: float) -> None:
    mu_np = _random_unit_vector(dim, seed=dim)
    mu = torch.tensor(mu_np).expand(NUM_SAMPLES, dim).contiguous()
    samples = sample_vmf(mu, kappa, generator=torch.Generator().manual_seed(1))
    reference = vonmises_fisher(mu_np, kappa).rvs(NUM_SAMPLES, random_state=np.random.default_rng(2))

    # 1 - <z, mu> keeps its relative precision at kappa = 1e5, where <z, mu> ~ 1 - 1e-5.
    gap = (1.0 - samples @ torch.tensor(mu_np)).numpy()
    reference_gap = 1.0 - reference @ mu_np
    expected_gap = 1.0 - mean_resultant_length(kappa, dim)

    standard_error = gap.std() / math.sqrt(NUM_SAMPLES)
    reference_standard_error = reference_gap.std() / math.sqrt(NUM_SAMPLES)
    assert abs(gap.mean() - expected_gap) <= NUM_STANDARD_ERRORS * standard_error
    assert abs(reference_gap.mean() - expected_gap) <= NUM_STANDARD_ERRORS * reference_standard_error
    combined = math.hypot(standard_error, reference_standard_error)
    assert abs(gap.mean() - reference_gap.mean()) <= NUM_STANDARD_ERRORS * combined

    # The spread of <z, mu> must match too, not only its mean.
    assert gap.std() == pytest.approx(reference_gap.std(), rel=0.05)


@pytest.mark.parametrize("dim", [3, 100])
def test_sample_mean_direction_is_mu(dim: int) -> None:
    mu_np = _random_unit_vector(dim, seed=7)
    mu = torch.tensor(mu_np).expand(NUM_SAMPLES, dim).contiguous()
    kappa = 100.0
    samples = sample_vmf(mu, kappa, generator=torch.Generator().manual_seed(3))
    sample_mean = samples.mean(dim=0).numpy()

    # The component of the sample mean orthogonal to mu is noise of size sqrt((1 - E<z,mu>^2) / n).
    along = sample_mean @ mu_np
    orthogonal = np.linalg.norm(sample_mean - along * mu_np)
    assert along == pytest.approx(mean_resultant_length(kappa, dim), abs=0.01)
    assert orthogonal <= NUM_STANDARD_ERRORS * math.sqrt(1.0 / NUM_SAMPLES)


def test_sample_tangent_direction_is_isotropic() -> None:
    dim = 4
    mu_np = _random_unit_vector(dim, seed=11)
    mu = torch.tensor(mu_np).expand(NUM_SAMPLES, dim).contiguous()
    samples = sample_vmf(mu, 10.0, generator=torch.Generator().manual_seed(4)).numpy()

    # The tangent parts of vMF samples have covariance c * (I - mu mu^T) for some c > 0.
    tangent = samples - np.outer(samples @ mu_np, mu_np)
    covariance = tangent.T @ tangent / NUM_SAMPLES
    projector = np.eye(dim) - np.outer(mu_np, mu_np)
    scale = np.trace(covariance) / (dim - 1)
    assert np.abs(covariance - scale * projector).max() <= 0.01


def test_sample_many_rejection_rounds_keeps_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    # Proposing exactly as many candidates as rows are missing forces many rejection rounds.
    monkeypatch.setattr(vmf_module, "_POOLED_ACCEPTANCE_RATE", 1.0)
    monkeypatch.setattr(vmf_module, "_POOLED_EXTRA_PROPOSALS", 0)
    dim, kappa = 100, 1000.0
    mu = torch.tensor(_random_unit_vector(dim, seed=12)).expand(NUM_SAMPLES, dim).contiguous()
    samples = sample_vmf(mu, kappa, generator=torch.Generator().manual_seed(13))
    gap = (1.0 - (samples * mu).sum(dim=1)).numpy()
    standard_error = gap.std() / math.sqrt(NUM_SAMPLES)
    assert bool(torch.isfinite(samples).all())
    assert abs(gap.mean() - (1.0 - mean_resultant_length(kappa, dim))) <= NUM_STANDARD_ERRORS * standard_error


def test_per_row_kappa_matches_theory() -> None:
    dim = 10
    kappas = torch.tensor([1.0, 50.0, 5000.0], dtype=torch.float64).repeat_interleave(NUM_SAMPLES // 2)
    mu = torch.tensor(_random_unit_vector(dim, seed=5)).expand(kappas.shape[0], dim).contiguous()
    samples = sample_vmf(mu, kappas, generator=torch.Generator().manual_seed(6))
    gap = 1.0 - (samples * mu).sum(dim=1)
    for index, kappa in enumerate([1.0, 50.0, 5000.0]):
        block = gap[index * (NUM_SAMPLES // 2) : (index + 1) * (NUM_SAMPLES // 2)].numpy()
        expected = 1.0 - mean_resultant_length(kappa, dim)
        standard_error = block.std() / math.sqrt(block.shape[0])
        assert abs(block.mean() - expected) <= NUM_STANDARD_ERRORS * standard_error, kappa


# ---------------------------------------------------------------------------------------------
# Sampler edge cases, gradients and interface
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [2, 3, 100])
@pytest.mark.parametrize("kappa", [0.0, 1.0, 1000.0, 1e5])
def test_sample_basis_vectors_finite_and_unit(dtype: torch.dtype, dim: int, kappa: float) -> None:
    mu = torch.cat(
        [
            _basis_rows(dim, 0, 64),
            _basis_rows(dim, 0, 64, sign=-1.0),
            _basis_rows(dim, dim - 1, 64),
            _basis_rows(dim, dim - 1, 64, sign=-1.0),
        ]
    ).to(dtype)
    samples = sample_vmf(mu, kappa, generator=torch.Generator().manual_seed(0))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12

    assert samples.dtype == dtype
    assert samples.shape == mu.shape
    assert bool(torch.isfinite(samples).all())
    assert (samples.norm(dim=1) - 1.0).abs().max().item() <= tolerance
    if kappa >= 1000.0:
        # With kappa >= 1000 every sample lies within a few degrees of its mean direction.
        assert (samples * mu).sum(dim=1).min().item() > 0.9


def test_sample_kappa_1e5_stays_close_to_mu() -> None:
    dim = 100
    mu = F.normalize(torch.randn(512, dim, generator=torch.Generator().manual_seed(8)), dim=1)
    samples = sample_vmf(mu, 1e5, generator=torch.Generator().manual_seed(9))
    gap = 1.0 - (samples * mu).sum(dim=1)
    assert bool(torch.isfinite(samples).all())
    assert (samples.norm(dim=1) - 1.0).abs().max().item() <= 1e-5
    # E[1 - <z, mu>] = 1 - A_100(1e5) ~ 4.95e-4, and float32 rounding is ~1e-7.
    assert gap.mean().item() == pytest.approx(1.0 - mean_resultant_length(1e5, dim), rel=0.05)


@pytest.mark.parametrize("dim", [3, 20])
def test_sample_gradient_reaches_mu(dim: int) -> None:
    rows = torch.cat(
        [
            F.normalize(torch.randn(4, dim, generator=torch.Generator().manual_seed(10)), dim=1),
            _basis_rows(dim, 0, 1),
            _basis_rows(dim, 0, 1, sign=-1.0),
            _basis_rows(dim, 1, 1),
        ]
    ).double()
    mu = rows.clone().requires_grad_(True)
    samples = sample_vmf(mu, 1000.0, generator=torch.Generator().manual_seed(11))
    weights = torch.randn(samples.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    (samples * weights).sum().backward()

    assert mu.grad is not None
    assert bool(torch.isfinite(mu.grad).all())
    assert bool((mu.grad.abs().sum(dim=1) > 0).all())


def test_sample_gradient_matches_finite_differences() -> None:
    dim = 5
    mu = torch.cat(
        [
            F.normalize(torch.randn(3, dim, generator=torch.Generator().manual_seed(13), dtype=torch.float64), dim=1),
            _basis_rows(dim, 0, 1).double(),
            _basis_rows(dim, 0, 1, sign=-1.0).double(),
        ]
    ).requires_grad_(True)

    # Reseeding makes the random parts identical on every call, so the sample is a
    # deterministic function of mu whose Jacobian gradcheck compares with finite differences.
    def draw(mean: torch.Tensor) -> torch.Tensor:
        return sample_vmf(mean, 50.0, generator=torch.Generator().manual_seed(14))

    assert torch.autograd.gradcheck(draw, (mu,))


def test_sample_is_reproducible_with_generator() -> None:
    mu = F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(15)), dim=1)
    first = sample_vmf(mu, 1000.0, generator=torch.Generator().manual_seed(16))
    second = sample_vmf(mu, 1000.0, generator=torch.Generator().manual_seed(16))
    third = sample_vmf(mu, 1000.0, generator=torch.Generator().manual_seed(17))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_sample_rejects_invalid_input() -> None:
    mu = F.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mu, -1.0)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mu, float("inf"))
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mu, torch.ones(3))
    with pytest.raises(ValueError, match="d >= 2"):
        sample_vmf(torch.ones(4, 1), 1.0)
    with pytest.raises(ValueError, match="shape"):
        sample_vmf(torch.ones(3), 1.0)


def test_vmf_head_normalises_and_samples() -> None:
    head = VonMisesFisherHead(kappa=1000.0)
    embeddings = torch.randn(16, 8, generator=torch.Generator().manual_seed(18)) * 5.0
    embeddings[0] = 0.0
    mu, z = head.sample(embeddings, generator=torch.Generator().manual_seed(19))

    assert torch.allclose(mu[1:].norm(dim=1), torch.ones(15), atol=1e-6)
    assert torch.allclose(mu[1:], embeddings[1:] / embeddings[1:].norm(dim=1, keepdim=True), atol=1e-6)
    assert bool(torch.isfinite(mu).all())
    assert bool(torch.isfinite(z).all())
    assert torch.allclose(z.norm(dim=1), torch.ones(16), atol=1e-5)
    with pytest.raises(ValueError, match="kappa"):
        VonMisesFisherHead(kappa=-1.0)


# ---------------------------------------------------------------------------------------------
# KL divergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [3, 10])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 100.0])
def test_kl_closed_form_matches_monte_carlo(dim: int, kappa: float) -> None:
    mu1 = _random_unit_vector(dim, seed=20)
    # A second direction at a fixed angle keeps the KL away from zero for every kappa.
    other = _random_unit_vector(dim, seed=21)
    other = other - (other @ mu1) * mu1
    other /= np.linalg.norm(other)
    mu2 = math.cos(0.3) * mu1 + math.sin(0.3) * other

    mu1_rows = torch.tensor(mu1).expand(NUM_SAMPLES, dim).contiguous()
    samples = sample_vmf(mu1_rows, kappa, generator=torch.Generator().manual_seed(22)).numpy()
    log_ratio = vonmises_fisher(mu1, kappa).logpdf(samples) - vonmises_fisher(mu2, kappa).logpdf(samples)

    closed_form = kl_vmf_equal_kappa(torch.tensor(mu1)[None], torch.tensor(mu2)[None], kappa).item()
    standard_error = log_ratio.std() / math.sqrt(NUM_SAMPLES)
    assert closed_form > 0.0
    assert abs(log_ratio.mean() - closed_form) <= NUM_STANDARD_ERRORS * standard_error


def test_kl_is_symmetric_and_zero_on_equal_means() -> None:
    mu1 = F.normalize(torch.randn(6, 100, generator=torch.Generator().manual_seed(23)), dim=1)
    mu2 = F.normalize(torch.randn(6, 100, generator=torch.Generator().manual_seed(24)), dim=1)
    forward = kl_vmf_equal_kappa(mu1, mu2, 1000.0)
    backward = kl_vmf_equal_kappa(mu2, mu1, 1000.0)
    assert forward.shape == (6,)
    assert torch.allclose(forward, backward)
    assert torch.allclose(kl_vmf_equal_kappa(mu1, mu1, 1000.0), torch.zeros(6), atol=1e-3)
    expected = 1000.0 * 0.951700854707637 * (1.0 - (mu1 * mu2).sum(dim=1))
    assert torch.allclose(forward, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="dim"):
        kl_vmf_equal_kappa(mu1, mu2, 1000.0, dim=50)
