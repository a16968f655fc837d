"""Tests for the InfoNCE loss, the conditional-MI penalty, the overlap penalty and the Gaussian head."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dssl.nn.gaussian import GaussianHead, kl_gaussian_unit_variance
from dssl.nn.vmf import kl_vmf_equal_kappa, mean_resultant_length
from dssl.objectives.conditional_mi import (
    beta_cosine_to_kl,
    beta_kl_to_cosine,
    conditional_mi_penalty,
    conditional_mi_upper_bound_nats,
)
from dssl.objectives.infonce import infonce_lower_bound, symmetric_infonce
from dssl.objectives.overlap import orthogonality_penalty


def _unit_rows(rows: int, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator, dtype=dtype), dim=1)


def _direct_infonce(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """Symmetric InfoNCE written out with explicit loops over queries and keys."""
    batch_size = z1.shape[0]
    directions = [(z1, z2), (z2, z1)]
    direction_means = []
    for queries, keys in directions:
        total = 0.0
        for i in range(batch_size):
            logits = [float(queries[i] @ keys[j]) / temperature for j in range(batch_size)]
            largest = max(logits)
            log_normaliser = largest + math.log(sum(math.exp(value - largest) for value in logits))
            total += log_normaliser - logits[i]
        direction_means.append(total / batch_size)
    return 0.5 * (direction_means[0] + direction_means[1])


@pytest.mark.parametrize(
    "module_name",
    [
        "dssl.objectives.infonce",
        "dssl.objectives.conditional_mi",
        "dssl.objectives.overlap",
        "dssl.nn.vmf",
        "dssl.nn.gaussian",
        "dssl.nn.encoders",
    ],
)
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_infonce_matches_direct_formula(temperature: float) -> None:
    z1 = _unit_rows(6, 5, seed=0)
    z2 = _unit_rows(6, 5, seed=1)
    expected = _direct_infonce(z1.numpy(), z2.numpy(), temperature)
    assert symmetric_infonce(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-12)


def test_infonce_is_symmetric_in_modalities() -> None:
    z1 = _unit_rows(8, 4, seed=2)
    z2 = _unit_rows(8, 4, seed=3)
    assert symmetric_infonce(z1, z2).item() == pytest.approx(symmetric_infonce(z2, z1).item(), rel=1e-12)


def test_infonce_gathered_halves_match_full_batch() -> None:
    z1_all = _unit_rows(8, 6, seed=4).requires_grad_(True)
    z2_all = _unit_rows(8, 6, seed=5).requires_grad_(True)
    temperature = 0.07

    full = symmetric_infonce(z1_all, z2_all, temperature)
    full_grads = torch.autograd.grad(full, (z1_all, z2_all))

    first = symmetric_infonce(z1_all[:4], z2_all[:4], temperature, z1_all=z1_all, z2_all=z2_all, offset=0)
    second = symmetric_infonce(z1_all[4:], z2_all[4:], temperature, z1_all=z1_all, z2_all=z2_all, offset=4)
    averaged = 0.5 * (first + second)
    averaged_grads = torch.autograd.grad(averaged, (z1_all, z2_all))

    assert abs(averaged.item() - full.item()) <= 1e-6
    assert torch.allclose(averaged_grads[0], full_grads[0], rtol=0.0, atol=1e-10)
    assert torch.allclose(averaged_grads[1], full_grads[1], rtol=0.0, atol=1e-10)
    # Each half alone differs from the full loss, so the check above is not trivially true.
    assert abs(first.item() - full.item()) > 1e-3


def test_infonce_gathered_four_workers_match_full_batch() -> None:
    z1_all = _unit_rows(12, 3, seed=6)
    z2_all = _unit_rows(12, 3, seed=7)
    full = symmetric_infonce(z1_all, z2_all, 0.2).item()
    per_worker = [
        symmetric_infonce(z1_all[k : k + 3], z2_all[k : k + 3], 0.2, z1_all=z1_all, z2_all=z2_all, offset=k).item()
        for k in range(0, 12, 3)
    ]
    assert np.mean(per_worker) == pytest.approx(full, abs=1e-12)


def test_infonce_extreme_logits_stay_finite() -> None:
    basis = torch.eye(2, dtype=torch.float32)
    z1 = torch.stack([basis[0], basis[1]])
    z2 = torch.stack([-basis[0], basis[0]])
    temperature = 1e-4

    # exp(-1e4) underflows to 0, so a softmax-then-log formula would give inf; the exact value
    # is 0.5 * ((2e4 + log 2) / 2 + (1e4 + 1e4) / 2) = 1e4 + log(2) / 4.
    loss = symmetric_infonce(z1.clone().requires_grad_(True), z2, temperature)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(1e4 + math.log(2.0) / 4.0, rel=1e-6)

    z1_leaf = z1.clone().requires_grad_(True)
    symmetric_infonce(z1_leaf, z2, temperature).backward()
    assert bool(torch.isfinite(z1_leaf.grad).all())


def test_infonce_half_precision_is_promoted() -> None:
    z1 = _unit_rows(8, 4, seed=8, dtype=torch.float32)
    z2 = _unit_rows(8, 4, seed=9, dtype=torch.float32)
    reference = symmetric_infonce(z1, z2, 0.07)
    half = symmetric_infonce(z1.to(torch.bfloat16), z2.to(torch.bfloat16), 0.07)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(reference.item(), rel=0.05)


def test_infonce_learnable_temperature_gets_gradient() -> None:
    z1 = _unit_rows(8, 4, seed=10)
    z2 = _unit_rows(8, 4, seed=11)
    temperature = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    symmetric_infonce(z1, z2, temperature).backward()
    assert temperature.grad is not None
    assert math.isfinite(temperature.grad.item())
    assert temperature.grad.item() != 0.0


def test_infonce_rejects_invalid_arguments() -> None:
    z = _unit_rows(4, 3, seed=12)
    with pytest.raises(ValueError, match="temperature"):
        symmetric_infonce(z, z, 0.0)
    with pytest.raises(ValueError, match="both z1_all and z2_all"):
        symmetric_infonce(z, z, z1_all=z)
    with pytest.raises(ValueError, match="offset"):
        symmetric_infonce(z, z, z1_all=z, z2_all=z, offset=1)
    with pytest.raises(ValueError, match="offset"):
        symmetric_infonce(z, z, offset=2)
    with pytest.raises(ValueError, match="local rows"):
        symmetric_infonce(z, z, z1_all=z[:2], z2_all=z[:2])
    with pytest.raises(ValueError, match="same shape"):
        symmetric_infonce(z, z[:3])


def test_infonce_lower_bound_value() -> None:
    assert infonce_lower_bound(math.log(256), 256) == pytest.approx(0.0, abs=1e-12)
    assert infonce_lower_bound(1.0, 256) == pytest.approx(math.log(256) - 1.0)
    with pytest.raises(ValueError, match="batch_size"):
        infonce_lower_bound(1.0, 0)


# ---------------------------------------------------------------------------------------------
# Conditional-MI penalty
# ---------------------------------------------------------------------------------------------


def test_cosine_penalty_is_negative_mean_cosine() -> None:
    mu1 = torch.randn(16, 10, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    mu2 = torch.randn(16, 10, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    a, b = mu1.numpy(), mu2.numpy()
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    penalty = conditional_mi_penalty(mu1, mu2, scale="cosine")
    assert penalty.item() == pytest.approx(-cosines.mean(), rel=1e-12)


def test_kl_penalty_is_scaled_cosine_penalty_plus_constant() -> None:
    dim, kappa = 100, 1000.0
    mu1 = _unit_rows(32, dim, seed=15)
    mu2 = _unit_rows(32, dim, seed=16)
    factor = kappa * mean_resultant_length(kappa, dim)

    kl_penalty = conditional_mi_penalty(mu1, mu2, scale="kl", kappa=kappa)
    cosine_penalty = conditional_mi_penalty(mu1, mu2, scale="cosine")
    assert kl_penalty.item() == pytest.approx(factor * cosine_penalty.item() + factor, rel=1e-12)
    expected = (factor * (1.0 - (mu1 * mu2).sum(dim=1))).mean()
    assert kl_penalty.item() == pytest.approx(expected.item(), rel=1e-12)
    assert kl_penalty.item() == pytest.approx(kl_vmf_equal_kappa(mu1, mu2, kappa).mean().item(), rel=1e-12)


def test_penalty_scales_give_equal_gradients_after_conversion() -> None:
    dim, kappa, beta_kl = 100, 1000.0, 0.01
    beta_cos = beta_kl_to_cosine(beta_kl, kappa, dim)
    mu1 = _unit_rows(8, dim, seed=17).requires_grad_(True)
    mu2 = _unit_rows(8, dim, seed=18)

    (grad_kl,) = torch.autograd.grad(beta_kl * conditional_mi_penalty(mu1, mu2, "kl", kappa=kappa), mu1)
    (grad_cos,) = torch.autograd.grad(beta_cos * conditional_mi_penalty(mu1, mu2, "cosine"), mu1)
    assert torch.allclose(grad_kl, grad_cos, rtol=1e-10, atol=0.0)


def test_beta_conversion_reference_value() -> None:
    assert beta_kl_to_cosine(1.0, kappa=1000.0, dim=100) == pytest.approx(951.7, abs=0.01)
    assert beta_cosine_to_kl(951.7, kappa=1000.0, dim=100) == pytest.approx(1.0, abs=1e-4)
    for beta in [0.0, 1e-3, 0.1, 50.0, 1000.0]:
        round_trip = beta_kl_to_cosine(beta_cosine_to_kl(beta, 1000.0, 100), 1000.0, 100)
        assert round_trip == pytest.approx(beta, rel=1e-12, abs=0.0)
    with pytest.raises(ValueError, match="kappa"):
        beta_cosine_to_kl(1.0, kappa=0.0, dim=100)


def test_gaussian_penalty_is_half_squared_distance() -> None:
    mu1 = torch.randn(16, 10, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    mu2 = torch.randn(16, 10, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    expected = 0.5 * ((mu1.numpy() - mu2.numpy()) ** 2).sum(axis=1).mean()
    penalty = conditional_mi_penalty(mu1, mu2, scale="kl", head="gaussian")
    assert penalty.item() == pytest.approx(expected, rel=1e-12)
    assert conditional_mi_upper_bound_nats(mu1, mu2, kappa=None, head="gaussian").item() == pytest.approx(
        expected, rel=1e-12
    )


def test_penalty_rejects_invalid_arguments() -> None:
    mu = _unit_rows(4, 3, seed=21)
    with pytest.raises(ValueError, match="'angle'"):
        conditional_mi_penalty(mu, mu, scale="angle")
    with pytest.raises(ValueError, match="'laplace'"):
        conditional_mi_penalty(mu, mu, scale="kl", kappa=1.0, head="laplace")
    with pytest.raises(ValueError, match="gaussian"):
        conditional_mi_penalty(mu, mu, scale="cosine", head="gaussian")
    with pytest.raises(ValueError, match="kappa"):
        conditional_mi_penalty(mu, mu, scale="kl")
    with pytest.raises(ValueError, match="shape"):
        conditional_mi_penalty(mu, mu[:2], scale="cosine")


def test_upper_bound_is_symmetrised_kl_in_nats() -> None:
    dim, kappa = 10, 50.0
    mu1 = _unit_rows(32, dim, seed=22)
    mu2 = _unit_rows(32, dim, seed=23)
    bound = conditional_mi_upper_bound_nats(mu1, mu2, kappa)
    swapped = conditional_mi_upper_bound_nats(mu2, mu1, kappa)
    forward = kl_vmf_equal_kappa(mu1, mu2, kappa).mean()
    backward = kl_vmf_equal_kappa(mu2, mu1, kappa).mean()
    assert bound.item() == pytest.approx(0.5 * (forward + backward).item(), rel=1e-12)
    assert bound.item() == pytest.approx(swapped.item(), rel=1e-12)
    assert conditional_mi_upper_bound_nats(mu1, mu1, kappa).item() == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Gaussian head
# ---------------------------------------------------------------------------------------------


def test_gaussian_head_adds_unit_noise() -> None:
    embeddings = torch.randn(4000, 8, generator=torch.Generator().manual_seed(24)).requires_grad_(True)
    mu, z = GaussianHead().sample(embeddings, generator=torch.Generator().manual_seed(25))
    noise = (z - mu).detach()

    assert mu is embeddings
    # 32000 standard normal draws: the mean has standard error ~0.0056, the variance ~0.008.
    assert abs(noise.mean().item()) <= 0.03
    assert noise.var().item() == pytest.approx(1.0, abs=0.04)

    z.sum().backward()
    assert torch.equal(embeddings.grad, torch.ones_like(embeddings))


def test_gaussian_kl_is_symmetric() -> None:
    mu1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(26))
    mu2 = torch.randn(5, 3, generator=torch.Generator().manual_seed(27))
    forward = kl_gaussian_unit_variance(mu1, mu2)
    assert forward.shape == (5,)
    assert torch.allclose(forward, kl_gaussian_unit_variance(mu2, mu1))
    assert torch.allclose(forward, 0.5 * ((mu1 - mu2) ** 2).sum(dim=1))


# ---------------------------------------------------------------------------------------------
# Orthogonality penalty
# ---------------------------------------------------------------------------------------------


def test_orthogonality_zero_for_orthogonal_batches() -> None:
    # Rows come in pairs (s, c) and (-s, c), so sum_i s_i c_i^T cancels for every column pair.
    specific_half = torch.randn(5, 6, generator=torch.Generator().manual_seed(28), dtype=torch.float64)
    shared_half = torch.randn(5, 4, generator=torch.Generator().manual_seed(29), dtype=torch.float64)
    specific = torch.cat([specific_half, -3.0 * specific_half]).requires_grad_(True)
    shared = torch.cat([shared_half, 2.0 * shared_half])

    penalty = orthogonality_penalty(specific, shared)
    assert penalty.item() == pytest.approx(0.0, abs=1e-12)

    penalty.backward()
    assert bool(torch.isfinite(specific.grad).all())


def test_orthogonality_zero_for_disjoint_feature_supports() -> None:
    # Specific rows use samples 0..3 and shared rows use samples 4..7 (zero rows elsewhere).
    specific = torch.zeros(8, 3)
    shared = torch.zeros(8, 2)
    specific[:4] = torch.randn(4, 3, generator=torch.Generator().manual_seed(30))
    shared[4:] = torch.randn(4, 2, generator=torch.Generator().manual_seed(31))
    assert orthogonality_penalty(specific, shared).item() == 0.0


def test_orthogonality_matches_numpy() -> None:
    specific = torch.randn(64, 7, generator=torch.Generator().manual_seed(32), dtype=torch.float64) * 4.0
    shared = torch.randn(64, 5, generator=torch.Generator().manual_seed(33), dtype=torch.float64) + 1.0
    s = specific.numpy() / np.linalg.norm(specific.numpy(), axis=1, keepdims=True)
    c = shared.numpy() / np.linalg.norm(shared.numpy(), axis=1, keepdims=True)
    expected = math.sqrt(((s.T @ c) ** 2).sum())
    assert orthogonality_penalty(specific, shared).item() == pytest.approx(expected, rel=1e-12)


def test_orthogonality_rejects_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="batch size"):
        orthogonality_penalty(torch.ones(4, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="shape"):
        orthogonality_penalty(torch.ones(4), torch.ones(4, 2))
