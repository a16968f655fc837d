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

    Several pairs of the same shape can be stacked along a leading dimension P. They are then
    handled by one batched matrix product, which costs less than P separate calls.

    Args:
        specific: Modality-specific embeddings S, shape (B, ds), or P stacked pairs (P, B, ds).
        shared: Shared embeddings C of the same modality, shape (B, dc), or (P, B, dc).
        eps: Lower bound on each row norm, so zero rows do not give NaN.

    Returns:
        The penalty: a scalar for 2-D inputs, shape (P,) for stacked inputs. Its gradient is
        zero (not NaN) where the penalty is exactly zero.

    Raises:
        ValueError: If the inputs are not both 2-D or both 3-D, or their batch sizes (or
            numbers of stacked pairs) differ.

    Example:
        >>> specific = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> shared = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
        >>> float(orthogonality_penalty(specific, shared))
        1.4142135381698608
        >>> orthogonality_penalty(torch.stack([specific, shared]), torch.stack([shared, shared])).shape
        torch.Size([2])
    """
    if specific.dim() not in (2, 3) or shared.dim() != specific.dim():
        raise ValueError(
            f"specific and shared must have shape (B, ds) and (B, dc), or (P, B, ds) and (P, B, dc), "
            f"got {tuple(specific.shape)} and {tuple(shared.shape)}."
        )
    if specific.shape[:-1] != shared.shape[:-1]:
        raise ValueError(
            f"specific and shared must have the same batch size (and number of stacked pairs), got "
            f"shapes {tuple(specific.shape)} and {tuple(shared.shape)}."
        )

    specific_unit = F.normalize(specific, dim=-1, eps=eps)
    shared_unit = F.normalize(shared, dim=-1, eps=eps)
    cross_correlation = specific_unit.transpose(-2, -1) @ shared_unit
    return torch.linalg.matrix_norm(cross_correlation, ord="fro")
