"""Mixed-precision context for the encoders' forward passes."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16-mixed")


def encoder_autocast(precision: str, device: torch.device, enabled: bool = True) -> ContextManager[None]:
    """Return the context in which encoders run their forward pass.

    With ``"bf16-mixed"`` the matrix products inside the context run in bfloat16 under
    ``torch.autocast``, while the float32 weights stay the master copy that the optimiser
    updates. Outputs are bfloat16, so callers convert them with ``.float()`` before heads,
    losses and penalties, which stay float32. With ``"fp32"``, or ``enabled=False``, the
    context does nothing.

    NOTE: only the CPU path is covered by the tests; on CUDA the same autocast call applies.

    Args:
        precision: ``"fp32"`` or ``"bf16-mixed"``.
        device: Device of the inputs; autocast is set for its type (``"cpu"`` or ``"cuda"``).
        enabled: Whether mixed precision applies to this pass. Models pass ``self.training``,
            so held-out diagnostics and evaluation embed in float32.

    Raises:
        ValueError: If ``precision`` is not one of :data:`PRECISIONS`.

    Example:
        >>> layer = torch.nn.Linear(4, 2)
        >>> with encoder_autocast("bf16-mixed", torch.device("cpu")):
        ...     out = layer(torch.ones(3, 4))
        >>> out.dtype
        torch.bfloat16
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
