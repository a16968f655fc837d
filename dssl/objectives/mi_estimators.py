"""Fit a mutual-information estimator on training embeddings and evaluate it on held-out ones.

These functions are diagnostics: they detach their inputs, train a small estimator network
from a fixed seed, and return a ``MIEstimate`` in nats.

- ``fit_club``: CLUB (``dssl.objectives.club``), an upper bound in expectation when its Gaussian
  q(y | x) is well fitted. A negative value is logged as a warning and flagged, never clipped.
- ``fit_infonce_critic``: a separable critic trained with the symmetric InfoNCE loss
  (``dssl.objectives.infonce``). log(N) - loss is a lower bound that cannot exceed log(N), with
  N the rows per evaluation chunk.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dssl.objectives.club import ClubEstimator
from dssl.objectives.infonce import symmetric_infonce

logger = logging.getLogger(__name__)

SIMILARITIES = ("dot", "cosine")

BatchLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MIEstimate:
    """Mutual-information estimate of one fitted estimator on held-out rows.

    Attributes:
        estimator: ``"club"`` or ``"infonce"``.
        value: The estimate in nats on the held-out rows, unclipped.
        train_loss: Mean training loss of the estimator over its last ``max(1, steps // 10)``
            steps, in nats: the Gaussian negative log-likelihood of q for CLUB, the symmetric
            InfoNCE loss for the critic.
        n_eval_rows: Number of held-out rows the value was computed on.
        below_zero: Whether ``value < 0``. For CLUB this means q scores mismatched pairs higher
            than matched ones on the held-out rows, so q is badly fitted or the held-out
            distribution differs from the training one, and ``fit_club`` logs a warning. For
            InfoNCE it means the critic scores held-out pairs worse than chance, which also
            happens from sampling noise when the true value is near 0; no warning is logged.
        ceiling: log(N) for the InfoNCE lower bound, with N the rows per evaluation chunk, or
            None for CLUB, which has no such ceiling.
    """

    estimator: str
    value: float
    train_loss: float
    n_eval_rows: int
    below_zero: bool
    ceiling: float | None = None


class SeparableCritic(nn.Module):
    """Separable critic f(x, y) = <g(x), h(y)> / temperature, or the cosine over the temperature.

    g and h are MLPs Linear -> ReLU -> Linear that map x and y to ``embedding_dim`` features.

    Args:
        x_dim: Dimension of x.
        y_dim: Dimension of y.
        hidden_dim: Width of the hidden layer of g and h.
        embedding_dim: Output dimension of g and h.
        similarity: ``"dot"`` for the dot product or ``"cosine"`` for the cosine similarity.

    Raises:
        ValueError: If a dimension is not a positive integer or ``similarity`` is unknown.
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden_dim: int = 64,
        embedding_dim: int = 32,
        similarity: str = "dot",
    ) -> None:
        super().__init__()
        for name, value in (
            ("x_dim", x_dim),
            ("y_dim", y_dim),
            ("hidden_dim", hidden_dim),
            ("embedding_dim", embedding_dim),
        ):
            _check_positive_int(name, value)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
        self.similarity = similarity
        self.x_network = _two_layer_mlp(x_dim, hidden_dim, embedding_dim)
        self.y_network = _two_layer_mlp(y_dim, hidden_dim, embedding_dim)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Embed x and y. The scores are the pairwise dot products of the embeddings over the temperature.

        Args:
            x: Inputs, shape (B, x_dim).
            y: Inputs paired with x by row, shape (B, y_dim).

        Returns:
            ``(g(x), h(y))``, each of shape (B, embedding_dim), L2-normalised rows for the
            cosine similarity.
        """
        x_embedding = self.x_network(x)
        y_embedding = self.y_network(y)
        if self.similarity == "cosine":
            x_embedding = F.normalize(x_embedding, dim=1)
            y_embedding = F.normalize(y_embedding, dim=1)
        return x_embedding, y_embedding


def _two_layer_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_positive_float(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def _as_float_rows(name: str, value: Tensor | np.ndarray) -> Tensor:
    """Return value as a detached float32 tensor of shape (n, d), checking that it is finite."""
    if not isinstance(value, (Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}.")
    rows = torch.as_tensor(value).detach().to(torch.float32)
    if rows.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(rows.shape)}.")
    if not bool(torch.isfinite(rows).all()):
        raise ValueError(f"{name} contains NaN or infinite values. Remove or fix those rows before fitting.")
    return rows


def _check_split(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    x_eval: Tensor | np.ndarray,
    y_eval: Tensor | np.ndarray,
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Convert and validate the four inputs, and move the evaluation rows to the training device."""
    tensors = [
        _as_float_rows(name, value)
        for name, value in (("x_train", x_train), ("y_train", y_train), ("x_eval", x_eval), ("y_eval", y_eval))
    ]
    x_train_t, y_train_t, x_eval_t, y_eval_t = tensors
    if x_train_t.shape[0] != y_train_t.shape[0]:
        raise ValueError(
            f"x_train and y_train must have the same number of rows, got {x_train_t.shape[0]} and {y_train_t.shape[0]}."
        )
    if x_eval_t.shape[0] != y_eval_t.shape[0]:
        raise ValueError(
            f"x_eval and y_eval must have the same number of rows, got {x_eval_t.shape[0]} and {y_eval_t.shape[0]}."
        )
    if x_eval_t.shape[1] != x_train_t.shape[1] or y_eval_t.shape[1] != y_train_t.shape[1]:
        raise ValueError(
            f"Evaluation rows must have the training dimensions (x {x_train_t.shape[1]}, y {y_train_t.shape[1]}), "
            f"got x {x_eval_t.shape[1]} and y {y_eval_t.shape[1]}."
        )
    if x_eval_t.shape[0] < 2:
        raise ValueError(f"At least 2 evaluation rows are required, got {x_eval_t.shape[0]}.")
    _check_positive_int("batch_size", batch_size)
    if batch_size > x_train_t.shape[0]:
        raise ValueError(f"batch_size must be at most the {x_train_t.shape[0]} training rows, got {batch_size}.")

    device = x_train_t.device
    return x_train_t, y_train_t.to(device), x_eval_t.to(device), y_eval_t.to(device)


def _check_training_settings(steps: int, lr: float, hidden_dim: int, seed: int) -> None:
    _check_positive_int("steps", steps)
    _check_positive_float("lr", lr)
    _check_positive_int("hidden_dim", hidden_dim)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}.")


def _minibatches(rows: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Yield ``steps`` index batches from successive random permutations, dropping partial batches."""
    produced = 0
    while produced < steps:
        permutation = torch.randperm(rows, generator=generator)
        for start in range(0, rows - batch_size + 1, batch_size):
            if produced == steps:
                return
            yield permutation[start : start + batch_size]
            produced += 1


def _train(
    model: nn.Module,
    batch_loss: BatchLoss,
    x_train: Tensor,
    y_train: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """Train ``model`` with Adam and return its mean loss over the last ``max(1, steps // 10)`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    tail_length = max(1, steps // 10)
    tail_losses: list[float] = []
    for step, indices in enumerate(_minibatches(x_train.shape[0], batch_size, steps, generator)):
        indices = indices.to(x_train.device)
        loss = batch_loss(x_train[indices], y_train[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - tail_length:
            tail_losses.append(float(loss.detach()))
    return sum(tail_losses) / len(tail_losses)


@contextlib.contextmanager
def _seeded_initialisation(seed: int) -> Iterator[None]:
    """Seed the CPU generator for module construction inside, then restore the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit_club(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    x_eval: Tensor | np.ndarray,
    y_eval: Tensor | np.ndarray,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden_dim: int = 64,
    seed: int = 0,
) -> MIEstimate:
    """Fit CLUB's q(y | x) on training pairs and compute the CLUB estimate on held-out pairs.

    q is trained for ``steps`` Adam steps on its negative log-likelihood. The estimate
    mean_i log q(y_i | x_i) - mean_{i,j} log q(y_j | x_i) is then computed once over all
    held-out rows, with every held-out y_j as a negative for every x_i, in O(n_eval) memory.
    A negative estimate is logged as a warning that names the value and is flagged in
    ``below_zero``, and the value is returned unclipped.

    Args:
        x_train: Training rows of X, shape (n_train, d_x), detached and cast to float32.
        y_train: Training rows of Y paired with x_train by row, shape (n_train, d_y).
        x_eval: Held-out rows of X, shape (n_eval, d_x), n_eval >= 2.
        y_eval: Held-out rows of Y, shape (n_eval, d_y).
        steps: Number of optimiser steps.
        batch_size: Rows per training batch, at most n_train.
        lr: Adam learning rate.
        hidden_dim: Width of q's hidden layer.
        seed: Seed of q's initial weights and the batch order. The same seed and inputs give
            the same estimate on the same device and torch build.

    Returns:
        ``MIEstimate`` with ``estimator="club"`` and ``ceiling=None``.

    Raises:
        ValueError: On inputs that are not 2-D, not finite, or whose row counts or dimensions
            disagree, and on a non-positive ``steps``, ``batch_size``, ``lr`` or ``hidden_dim``.

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> x = torch.randn(600, 2, generator=generator)
        >>> y = 0.8 * x + 0.6 * torch.randn(600, 2, generator=generator)
        >>> result = fit_club(x[:400], y[:400], x[400:], y[400:], steps=200, batch_size=100)
        >>> result.estimator, result.n_eval_rows, result.below_zero
        ('club', 200, False)
    """
    x_train_t, y_train_t, x_eval_t, y_eval_t = _check_split(x_train, y_train, x_eval, y_eval, batch_size)
    _check_training_settings(steps, lr, hidden_dim, seed)

    with _seeded_initialisation(seed):
        club = ClubEstimator(x_train_t.shape[1], y_train_t.shape[1], hidden_dim=hidden_dim)
    club = club.to(x_train_t.device)
    generator = torch.Generator().manual_seed(seed)
    train_loss = _train(club, club.learning_loss, x_train_t, y_train_t, steps, batch_size, lr, generator)

    with torch.no_grad():
        value = float(club(x_eval_t, y_eval_t))
    n_eval_rows = x_eval_t.shape[0]
    if value < 0.0:
        logger.warning(
            "CLUB estimate is below zero: %.6g nats on %d held-out rows (train NLL %.6g nats). "
            "q(y | x) is badly fitted or the held-out rows differ from the training rows. "
            "The value is kept unclipped.",
            value,
            n_eval_rows,
            train_loss,
        )
    else:
        logger.info(
            "CLUB estimate %.6g nats on %d held-out rows (train NLL %.6g nats).", value, n_eval_rows, train_loss
        )
    return MIEstimate(
        estimator="club",
        value=value,
        train_loss=train_loss,
        n_eval_rows=n_eval_rows,
        below_zero=value < 0.0,
        ceiling=None,
    )


def fit_infonce_critic(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    x_eval: Tensor | np.ndarray,
    y_eval: Tensor | np.ndarray,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden_dim: int = 64,
    embedding_dim: int = 32,
    similarity: str = "dot",
    temperature: float = 1.0,
    eval_batch_size: int | None = 1024,
    seed: int = 0,
) -> MIEstimate:
    """Train a separable critic with InfoNCE on training pairs and evaluate the bound on held-out pairs.

    The critic scores pairs by <g(x), h(y)> / temperature (or the cosine over the temperature)
    and minimises the symmetric InfoNCE loss with the other rows of each batch as negatives.
    The held-out rows are shuffled with ``seed`` and split into chunks of N rows, and the
    remainder of fewer than N rows is dropped. The estimate is the mean over chunks of
    log(N) - loss. It lower-bounds I(X; Y) in expectation for any critic and cannot exceed
    log(N), which is returned as ``ceiling``. When the true value is near or above log(N), the
    bound saturates below log(N), so raise ``eval_batch_size`` (memory O(N^2)) to measure
    larger values.

    Args:
        x_train: Training rows of X, shape (n_train, d_x), detached and cast to float32.
        y_train: Training rows of Y paired with x_train by row, shape (n_train, d_y).
        x_eval: Held-out rows of X, shape (n_eval, d_x), n_eval >= 2.
        y_eval: Held-out rows of Y, shape (n_eval, d_y).
        steps: Number of optimiser steps.
        batch_size: Rows per training batch (candidates per query), at most n_train.
        lr: Adam learning rate.
        hidden_dim: Width of the hidden layer of both critic networks.
        embedding_dim: Output dimension of both critic networks.
        similarity: ``"dot"`` or ``"cosine"``.
        temperature: Divides the similarity, > 0.
        eval_batch_size: N, rows per evaluation chunk, >= 2. None or a value above n_eval uses
            all held-out rows as one chunk.
        seed: Seed of the critic's initial weights, the batch order and the evaluation
            shuffle. The same seed and inputs give the same estimate on the same device and
            torch build.

    Returns:
        ``MIEstimate`` with ``estimator="infonce"`` and ``ceiling=log(N)``.

    Raises:
        ValueError: On inputs that are not 2-D, not finite, or whose row counts or dimensions
            disagree, on a non-positive ``steps``, ``batch_size``, ``lr``, ``hidden_dim``,
            ``embedding_dim`` or ``temperature``, an ``eval_batch_size`` below 2, or an
            unknown ``similarity``.

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> x = torch.randn(600, 2, generator=generator)
        >>> y = 0.8 * x + 0.6 * torch.randn(600, 2, generator=generator)
        >>> result = fit_infonce_critic(x[:400], y[:400], x[400:], y[400:], steps=200, batch_size=100)
        >>> result.estimator, result.n_eval_rows, round(result.ceiling, 4)
        ('infonce', 200, 5.2983)
    """
    x_train_t, y_train_t, x_eval_t, y_eval_t = _check_split(x_train, y_train, x_eval, y_eval, batch_size)
    _check_training_settings(steps, lr, hidden_dim, seed)
    _check_positive_float("temperature", temperature)
    chunk_rows = _resolve_eval_batch_size(eval_batch_size, x_eval_t.shape[0])

    with _seeded_initialisation(seed):
        critic = SeparableCritic(
            x_train_t.shape[1],
            y_train_t.shape[1],
            hidden_dim=hidden_dim,
            embedding_dim=embedding_dim,
            similarity=similarity,
        )
    critic = critic.to(x_train_t.device)

    def batch_loss(x: Tensor, y: Tensor) -> Tensor:
        x_embedding, y_embedding = critic(x, y)
        return symmetric_infonce(x_embedding, y_embedding, temperature=temperature)

    generator = torch.Generator().manual_seed(seed)
    train_loss = _train(critic, batch_loss, x_train_t, y_train_t, steps, batch_size, lr, generator)

    permutation = torch.randperm(x_eval_t.shape[0], generator=generator).to(x_eval_t.device)
    n_chunks = x_eval_t.shape[0] // chunk_rows
    ceiling = math.log(chunk_rows)
    chunk_bounds = []
    with torch.no_grad():
        for chunk in permutation[: n_chunks * chunk_rows].split(chunk_rows):
            chunk_bounds.append(ceiling - float(batch_loss(x_eval_t[chunk], y_eval_t[chunk])))
    value = sum(chunk_bounds) / len(chunk_bounds)
    n_eval_rows = n_chunks * chunk_rows

    logger.info(
        "InfoNCE lower bound %.6g nats (ceiling log(%d) = %.6g) on %d held-out rows (train loss %.6g nats).",
        value,
        chunk_rows,
        ceiling,
        n_eval_rows,
        train_loss,
    )
    return MIEstimate(
        estimator="infonce",
        value=value,
        train_loss=train_loss,
        n_eval_rows=n_eval_rows,
        below_zero=value < 0.0,
        ceiling=ceiling,
    )


def _resolve_eval_batch_size(eval_batch_size: int | None, n_eval: int) -> int:
    if eval_batch_size is None:
        return n_eval
    _check_positive_int("eval_batch_size", eval_batch_size)
    if eval_batch_size < 2:
        raise ValueError(f"eval_batch_size must be >= 2 or None, got {eval_batch_size}.")
    return min(eval_batch_size, n_eval)
