"""Per-row random augmentation of vector data: Gaussian noise, coordinate dropout or identity."""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_TRANSFORMS = 3
"""Number of transforms :func:`augment` chooses from."""

NOISE, DROP, IDENTITY = 0, 1, 2
"""Codes of the transforms, as returned by :func:`sample_transforms`."""


def augment(
    x: Tensor,
    noise_std: float = 0.01,
    drop_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply one randomly chosen transform to each row of a batch.

    Each row independently gets one of three transforms with probability 1/3 each:

    - noise: add i.i.d. ``N(0, noise_std**2)`` to every coordinate;
    - drop: set exactly ``floor(drop_fraction * d)`` coordinates, chosen uniformly without
      replacement, to zero;
    - identity: leave the row unchanged.

    All rows are processed by batched tensor operations, without a Python loop over rows.
    Random numbers are drawn from ``generator`` in a fixed order (transform codes, noise, drop
    scores), so a seeded generator gives reproducible output.

    Args:
        x: Batch of shape ``(B, d)``, floating point, on any device.
        noise_std: Standard deviation of the additive noise, finite and >= 0.
        drop_fraction: Fraction of coordinates zeroed by the drop transform, in [0, 1].
        generator: Source of randomness on the device of ``x``. If None, the default generator of
            that device is used.

    Returns:
        A new tensor of shape ``(B, d)``, same dtype and device as ``x``. ``x`` is not modified.
    """
    _validate_arguments(x, noise_std, drop_fraction)
    n_rows, n_features = x.shape
    # The tolerance keeps products such as 0.29 * 100 = 28.999999999999996 at the intended 29.
    n_dropped = math.floor(drop_fraction * n_features + 1e-9)

    transform = sample_transforms(n_rows, device=x.device, generator=generator)
    output = x.clone(memory_format=torch.contiguous_format)

    # Random numbers are drawn only for the rows that use them, because drawing them dominates the
    # cost on CPU. NOTE: nonzero() synchronises with the device, so on a GPU this costs one sync
    # per call.
    noise_rows = (transform == NOISE).nonzero().squeeze(1)
    noise = torch.randn((noise_rows.numel(), n_features), dtype=x.dtype, device=x.device, generator=generator)
    output.index_add_(0, noise_rows, noise, alpha=noise_std)

    if n_dropped > 0:
        drop_rows = (transform == DROP).nonzero().squeeze(1)
        columns = _sample_columns_without_replacement(drop_rows.numel(), n_features, n_dropped, x.device, generator)
        flat_positions = (drop_rows * n_features).unsqueeze(1) + columns
        output.view(-1).index_fill_(0, flat_positions.view(-1), 0.0)

    return output


def sample_transforms(
    n_rows: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one transform code per row, uniformly from ``NOISE``, ``DROP`` and ``IDENTITY``.

    Returns:
        Codes of shape ``(n_rows,)``, int64.
    """
    return torch.randint(0, NUM_TRANSFORMS, (n_rows,), device=device, generator=generator)


def _sample_columns_without_replacement(
    n_rows: int,
    n_features: int,
    n_chosen: int,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """Choose ``n_chosen`` distinct columns of ``range(n_features)`` uniformly, independently per row.

    The positions of the ``n_chosen`` largest of ``n_features`` i.i.d. uniform scores form a
    uniformly random subset, and ``topk`` returns distinct positions even when scores tie.

    Returns:
        Column indices of shape ``(n_rows, n_chosen)``, int64.
    """
    scores = torch.rand((n_rows, n_features), device=device, generator=generator)
    return scores.topk(n_chosen, dim=1, sorted=False).indices


def _validate_arguments(x: Tensor, noise_std: float, drop_fraction: float) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, d), got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating-point dtype, got {x.dtype}.")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}.")
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}.")
