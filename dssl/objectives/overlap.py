"""Step-2 overlap penalty between modality-specific and shared embeddings."""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.nn import functional as F

logger = logging.getLogger(__name__)


def orthogonality_penalty(specific: Tensor, shared: Tensor, eps: float = 1e-12) -> Tensor:
    """Compute ||rownorm(S)^T rownorm(C)||_F, the Frobenius norm (not squared) of the cross-correlation.

    Each row is L2-normalised first, so the (ds, dc) matrix sums, over the batch, the outer
    products of unit-length specific and shared embeddings. The penalty is zero exactly when
    every column of rownorm(S) is orthogonal, over the batch, to every column of rownorm(C).
    It removes linear correlation only and is not a mutual-information bound.

    Args:
        specific: Modality-specific embeddings S, shape (B, ds).
        shared: Shared embeddings C of the same modality, shape (B, dc).
        eps: Lower bound on each row norm, so zero rows do not give NaN.

    Returns:
        Scalar penalty. Its gradient is zero (not NaN) where the penalty is exactly zero.

    Raises:
        ValueError: If either input is not 2-D or the batch sizes differ.

    Example:
        >>> specific = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> shared = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
        >>> float(orthogonality_penalty(specific, shared))
        1.4142135381698608
    """
    if specific.dim() != 2 or shared.dim() != 2:
        raise ValueError(
            f"specific and shared must have shape (B, ds) and (B, dc), got {tuple(specific.shape)} "
            f"and {tuple(shared.shape)}."
        )
    if specific.shape[0] != shared.shape[0]:
        raise ValueError(
            f"specific and shared must have the same batch size, got {specific.shape[0]} and {shared.shape[0]}."
        )

    specific_unit = F.normalize(specific, dim=1, eps=eps)
    shared_unit = F.normalize(shared, dim=1, eps=eps)
    cross_correlation = specific_unit.T @ shared_unit
    return torch.linalg.matrix_norm(cross_correlation, ord="fro")
