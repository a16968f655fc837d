"""Deterministic encoders that map one modality's features to an embedding."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class MLPEncoder(nn.Module):
    """Multi-layer perceptron: ``num_hidden_layers`` Linear-ReLU blocks, then a Linear layer.

    Every weight is drawn from N(0, ``init_std``^2) and every bias starts at zero, which keeps
    the initial embeddings small and near the origin.

    Args:
        in_dim: Input feature dimension.
        out_dim: Embedding dimension.
        hidden_dim: Width of every hidden layer.
        num_hidden_layers: Number of Linear-ReLU blocks before the output layer. With 0 the
            encoder is a single Linear layer.
        init_std: Standard deviation of the normal weight initialisation.

    Raises:
        ValueError: If a dimension is not a positive integer, ``num_hidden_layers`` is negative
            or ``init_std`` is not a positive finite number.

    Example:
        >>> encoder = MLPEncoder(in_dim=100, out_dim=16)
        >>> encoder(torch.zeros(8, 100)).shape
        torch.Size([8, 16])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 512,
        num_hidden_layers: int = 1,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        _check_positive_int("in_dim", in_dim)
        _check_positive_int("out_dim", out_dim)
        _check_positive_int("hidden_dim", hidden_dim)
        if isinstance(num_hidden_layers, bool) or not isinstance(num_hidden_layers, int):
            raise ValueError(f"num_hidden_layers must be an integer >= 0, got {num_hidden_layers!r}.")
        if num_hidden_layers < 0:
            raise ValueError(f"num_hidden_layers must be an integer >= 0, got {num_hidden_layers}.")
        if not (isinstance(init_std, (int, float)) and 0.0 < float(init_std) < float("inf")):
            raise ValueError(f"init_std must be a positive finite number, got {init_std!r}.")

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden_dim = hidden_dim
        self.num_hidden_layers = num_hidden_layers
        self.init_std = float(init_std)

        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_hidden_layers):
            layers.append(nn.Linear(width, hidden_dim))
            layers.append(nn.ReLU())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw weights from N(0, ``init_std``^2) and set biases to zero."""
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=self.init_std)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch.

        Args:
            x: Input features, shape (B, in_dim).

        Returns:
            Embeddings, shape (B, out_dim).

        Raises:
            ValueError: If the last dimension of ``x`` is not ``in_dim``.
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"Expected input with last dimension in_dim={self.in_dim}, got shape {tuple(x.shape)}."
            )
        return self.net(x)

    def extra_repr(self) -> str:
        return f"init_std={self.init_std}"
