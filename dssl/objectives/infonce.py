"""Symmetric cross-modal InfoNCE (the CLIP loss), with support for gathered negatives."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor
from torch.nn import functional as F

logger = logging.getLogger(__name__)


def _check_embeddings(name: str, value: Tensor) -> None:
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (rows, d), got shape {tuple(value.shape)}.")


def symmetric_infonce(
    z1: Tensor,
    z2: Tensor,
    temperature: float | Tensor = 0.07,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Compute the symmetric InfoNCE (CLIP) loss between two modalities.

    Notation: the B local rows are queries and the N gathered rows are keys. For local row i,
    its global index is g = offset + i, and

        loss_12(i) = -log softmax_j(<z1_i, z2_all_j> / tau)[g]   (query from modality 1)
        loss_21(i) = -log softmax_j(<z2_i, z1_all_j> / tau)[g]   (query from modality 2)

    so the positive key of query i is the other modality's row g, and the other N - 1 rows are
    negatives. The result is 0.5 * (mean_i loss_12(i) + mean_i loss_21(i)). Without gathered
    rows, z1_all = z1, z2_all = z2, offset = 0 and N = B, which is the usual CLIP loss.

    With data-parallel workers that all hold B rows, each worker passes its own rows and the
    all-gathered rows with offset = rank * B. The mean of the per-worker values, which is what
    DDP's gradient averaging applies, equals the single-process loss over the global batch.
    Its gradient matches the single-process gradient only if the gather is differentiable
    (for example ``torch.distributed.nn.functional.all_gather``), because the rows a worker
    gathers from other workers enter its loss as keys.

    The log-softmax is computed by ``F.cross_entropy`` (log-sum-exp), so rows whose
    exponentials underflow or overflow still give finite values. Half-precision logits are
    promoted to float32.

    Args:
        z1: Local modality-1 embeddings, shape (B, d), L2-normalised rows.
        z2: Local modality-2 embeddings, shape (B, d), L2-normalised rows.
        temperature: Softmax temperature tau > 0, a number or a scalar tensor (learnable).
        z1_all: Gathered modality-1 embeddings of all workers, shape (N, d) with N >= B, or None.
        z2_all: Gathered modality-2 embeddings of all workers, shape (N, d), or None.
        offset: Index of the first local row inside ``z1_all`` and ``z2_all``.

    Returns:
        Scalar loss in nats.

    Raises:
        ValueError: If shapes disagree, only one of ``z1_all`` and ``z2_all`` is given,
            ``offset`` puts the local rows outside the gathered rows, or a numeric
            temperature is not positive and finite.

    Example:
        >>> import torch.nn.functional as F
        >>> z1 = F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> loss = symmetric_infonce(z1, z1, temperature=0.07)
        >>> bool(loss < 0.01)  # identical views: each positive dominates its row
        True
        >>> half_1 = symmetric_infonce(z1[:4], z1[:4], 0.07, z1_all=z1, z2_all=z1, offset=0)
        >>> half_2 = symmetric_infonce(z1[4:], z1[4:], 0.07, z1_all=z1, z2_all=z1, offset=4)
        >>> bool(torch.isclose((half_1 + half_2) / 2, loss))
        True
    """
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}.")
    if not isinstance(temperature, Tensor) and not (0.0 < float(temperature) < math.inf):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}.")

    if (z1_all is None) != (z2_all is None):
        raise ValueError("Pass both z1_all and z2_all, or neither.")
    gathered = z1_all is not None
    if z1_all is None or z2_all is None:
        if offset != 0:
            raise ValueError(f"offset must be 0 when no gathered rows are given, got {offset}.")
        z1_all, z2_all = z1, z2
    else:
        _check_embeddings("z1_all", z1_all)
        _check_embeddings("z2_all", z2_all)
        if z1_all.shape != z2_all.shape:
            raise ValueError(
                f"z1_all and z2_all must have the same shape, got {tuple(z1_all.shape)} and {tuple(z2_all.shape)}."
            )
        if z1_all.shape[1] != z1.shape[1]:
            raise ValueError(
                f"Gathered rows have dimension {z1_all.shape[1]} but local rows have {z1.shape[1]}."
            )
        if z1_all.shape[0] < z1.shape[0]:
            raise ValueError(
                f"Gathered rows must include the local rows, got {z1_all.shape[0]} gathered and "
                f"{z1.shape[0]} local rows."
            )
        if not 0 <= offset <= z1_all.shape[0] - z1.shape[0]:
            raise ValueError(
                f"offset must be in [0, {z1_all.shape[0] - z1.shape[0]}] so that the {z1.shape[0]} "
                f"local rows lie inside the {z1_all.shape[0]} gathered rows, got {offset}."
            )

    batch_size = z1.shape[0]
    targets = torch.arange(offset, offset + batch_size, device=z1.device)

    logits_12 = z1 @ z2_all.T / temperature
    if gathered:
        logits_21 = z2 @ z1_all.T / temperature
    else:
        # Without gathered rows, <z2_i, z1_j> is entry (j, i) of the first matrix, so the
        # transpose saves one matrix product and its backward pass.
        logits_21 = logits_12.T
    if logits_12.dtype in (torch.float16, torch.bfloat16):
        logits_12 = logits_12.float()
        logits_21 = logits_21.float()

    loss_12 = F.cross_entropy(logits_12, targets)
    loss_21 = F.cross_entropy(logits_21, targets)
    return 0.5 * (loss_12 + loss_21)


def infonce_lower_bound(loss: float, batch_size: int) -> float:
    """Convert an InfoNCE loss into the lower bound log(B) - loss on the mutual information.

    Args:
        loss: InfoNCE loss in nats.
        batch_size: Number of candidates per query (the global batch size when rows are gathered).

    Returns:
        The lower bound in nats. It cannot exceed log(batch_size).

    Raises:
        ValueError: If ``batch_size`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return math.log(batch_size) - float(loss)
