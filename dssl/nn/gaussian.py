"""Unit-variance Gaussian probabilistic head p(z | x) = N(e(x), I)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def kl_gaussian_unit_variance(mu1: Tensor, mu2: Tensor) -> Tensor:
    """Compute KL(N(mu1, I) || N(mu2, I)) = 0.5 * ||mu1 - mu2||^2 per row.

    The value is the same in both directions, so it also equals the mean of the two directions.
    The sum of the two directions is ||mu1 - mu2||^2, twice this value.

    Args:
        mu1: Means, shape (B, d).
        mu2: Means, shape (B, d).

    Returns:
        KL in nats, shape (B,).

    Raises:
        ValueError: If the shapes differ.
    """
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {tuple(mu1.shape)} and {tuple(mu2.shape)}.")
    difference = mu1 - mu2
    return 0.5 * (difference * difference).sum(dim=-1)


class GaussianHead:
    """Probabilistic head p(z | x) = N(e, I): the embedding is the mean, the variance is fixed.

    Example:
        >>> mu, z = GaussianHead().sample(torch.zeros(4, 10))
        >>> mu.shape, z.shape
        (torch.Size([4, 10]), torch.Size([4, 10]))
    """

    def sample(self, e: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw one reparameterised sample z = e + eps with eps ~ N(0, I) per row.

        Args:
            e: Deterministic embeddings, shape (B, d); they are the means.
            generator: Optional generator on ``e``'s device for reproducible draws.

        Returns:
            ``(mu, z)``: mu is ``e`` itself and z = mu + eps, both (B, d). Gradients of z
            reach ``e`` with identity Jacobian.
        """
        noise = torch.randn(e.shape, generator=generator, dtype=e.dtype, device=e.device)
        return e, e + noise

    def kl(self, mu1: Tensor, mu2: Tensor) -> Tensor:
        """Compute KL(N(mu1, I) || N(mu2, I)) per row, shape (B,), in nats."""
        return kl_gaussian_unit_variance(mu1, mu2)

    def __repr__(self) -> str:
        return "GaussianHead()"
