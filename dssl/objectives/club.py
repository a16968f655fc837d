"""CLUB: the contrastive log-ratio upper bound on mutual information.

Source: Cheng, Hao, Dai, Liu, Gan, Carin, "CLUB: A Contrastive Log-ratio Upper Bound of Mutual
Information", ICML 2020, arXiv 2006.12013.

With a variational conditional q(y | x), the CLUB estimate over a batch of B pairs is

    CLUB = mean_i log q(y_i | x_i) - mean_{i,j} log q(y_j | x_i)

in nats. Its expectation minus I(X; Y) equals KL(p(x) p(y) || q(x, y)) - KL(p(x, y) || q(x, y))
with q(x, y) = p(x) q(y | x), so it upper-bounds I(X; Y) in expectation when q fits the joint
at least as well as the product of the marginals, in particular when q = p(y | x). For the
true Gaussian conditional it is loose: with x, y standard normal coordinates of correlation rho,
CLUB = rho^2 / (1 - rho^2) per coordinate pair while I = -log(1 - rho^2) / 2.

Here q is a diagonal Gaussian whose mean and log-variance come from a one-hidden-layer MLP.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

LOG_VARIANCE_BOUND = 30.0
"""Bound on |log-variance| of q, so that exp(-log_variance) stays finite in float32."""

_LOG_2PI = math.log(2.0 * math.pi)


def _check_dimension(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class ClubEstimator(nn.Module):
    """CLUB estimator with a diagonal Gaussian q(y | x) = N(mu(x), diag(exp(log_variance(x)))).

    The network is Linear(x_dim, hidden_dim) -> ReLU -> Linear(hidden_dim, 2 * y_dim). Its
    output is split into the mean and the log-variance of y. Two losses use it:

    - ``learning_loss(x, y)`` trains q by maximum likelihood. It detaches x and y, so its
      gradient reaches only q's parameters.
    - ``forward(x, y)`` (also ``estimate``) returns the CLUB estimate. It uses q's parameters
      detached, so its gradient reaches only x and y.

    Because the two gradients do not mix, one optimiser over the encoders and q can minimise
    ``task_loss + weight * club(x, y) + club.learning_loss(x, y)`` in a single backward pass:
    the encoders minimise the estimate while q fits p(y | x). Alternating two optimisers, as
    in the original CLUB training, works the same way.

    Args:
        x_dim: Dimension of x, the conditioning input of q.
        y_dim: Dimension of y, the variable whose density q models.
        hidden_dim: Width of the hidden layer.

    Raises:
        ValueError: If a dimension is not a positive integer.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> club = ClubEstimator(x_dim=3, y_dim=2, hidden_dim=16)
        >>> x = torch.randn(32, 3, requires_grad=True)
        >>> y = torch.randn(32, 2)
        >>> club.learning_loss(x, y).shape
        torch.Size([])
        >>> estimate = club(x, y)
        >>> estimate.backward()
        >>> x.grad.shape, club.hidden.weight.grad is None
        (torch.Size([32, 3]), True)
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        _check_dimension("x_dim", x_dim)
        _check_dimension("y_dim", y_dim)
        _check_dimension("hidden_dim", hidden_dim)
        self.x_dim = x_dim
        self.y_dim = y_dim
        self.hidden_dim = hidden_dim
        self.hidden = nn.Linear(x_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, 2 * y_dim)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, y_dim={self.y_dim}, hidden_dim={self.hidden_dim}"

    def _check_pair(self, x: Tensor, y: Tensor, min_rows: int) -> None:
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (B, {self.x_dim}), got shape {tuple(x.shape)}.")
        if y.dim() != 2 or y.shape[1] != self.y_dim:
            raise ValueError(f"y must have shape (B, {self.y_dim}), got shape {tuple(y.shape)}.")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}.")
        if x.shape[0] < min_rows:
            raise ValueError(f"x and y must have at least {min_rows} rows, got {x.shape[0]}.")

    def gaussian_parameters(self, x: Tensor, detach_parameters: bool = False) -> tuple[Tensor, Tensor]:
        """Compute the mean and log-variance of q(y | x).

        Args:
            x: Inputs, shape (B, x_dim).
            detach_parameters: Use q's weights detached, so that no gradient reaches them.

        Returns:
            ``(mean, log_variance)``, each of shape (B, y_dim). The log-variance is clamped to
            [-LOG_VARIANCE_BOUND, LOG_VARIANCE_BOUND].
        """
        layers = (self.hidden, self.output)
        weights = [layer.weight.detach() if detach_parameters else layer.weight for layer in layers]
        biases = [layer.bias.detach() if detach_parameters else layer.bias for layer in layers]

        hidden = F.relu(F.linear(x, weights[0], biases[0]))
        output = F.linear(hidden, weights[1], biases[1])
        mean, log_variance = output.split(self.y_dim, dim=1)
        return mean, log_variance.clamp(-LOG_VARIANCE_BOUND, LOG_VARIANCE_BOUND)

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Compute log q(y_i | x_i) in nats for each row, with the Gaussian normalising constant.

        Args:
            x: Inputs, shape (B, x_dim).
            y: Targets, shape (B, y_dim).

        Returns:
            Log-likelihoods, shape (B,). Gradients reach x, y and q's parameters.

        Raises:
            ValueError: If the shapes do not match (B, x_dim) and (B, y_dim).
        """
        self._check_pair(x, y, min_rows=1)
        mean, log_variance = self.gaussian_parameters(x)
        squared_error = (y - mean).pow(2) * torch.exp(-log_variance)
        return -0.5 * (squared_error + log_variance + _LOG_2PI).sum(dim=1)

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Compute the negative log-likelihood -mean_i log q(y_i | x_i), q's training loss in nats.

        x and y are detached here, so minimising this loss fits q to p(y | x) without moving
        the encoders that produced x and y.

        Args:
            x: Inputs, shape (B, x_dim).
            y: Targets, shape (B, y_dim).

        Returns:
            Scalar loss in nats. Gradients reach only q's parameters.

        Raises:
            ValueError: If the shapes do not match (B, x_dim) and (B, y_dim).
        """
        return -self.log_likelihood(x.detach(), y.detach()).mean()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Compute the CLUB estimate mean_i log q(y_i | x_i) - mean_{i,j} log q(y_j | x_i) in nats.

        The mean over all B^2 pairs (i, j), the diagonal j = i included, is computed in closed
        form: for a diagonal Gaussian q,

            mean_j (y_j - mu_i)^2 = var_y + (mean_y - mu_i)^2   (per coordinate),

        with mean_y and var_y (the population variance) taken over the batch. So no B x B
        matrix is built, and time and memory are O(B * (x_dim + hidden_dim + y_dim)), not
        O(B^2). The log-variance and the normalising constant cancel between the two terms.

        Args:
            x: Inputs, shape (B, x_dim), B >= 2.
            y: Targets, shape (B, y_dim).

        Returns:
            Scalar estimate in nats. Gradients reach x and y but not q's parameters. The value
            can be negative when q is badly fitted, and it is returned unclipped.

        Raises:
            ValueError: If the shapes do not match (B, x_dim) and (B, y_dim), or B < 2.
        """
        self._check_pair(x, y, min_rows=2)
        mean, log_variance = self.gaussian_parameters(x, detach_parameters=True)
        precision = torch.exp(-log_variance)

        y_mean = y.mean(dim=0, keepdim=True)
        y_variance = (y - y_mean).pow(2).mean(dim=0, keepdim=True)
        all_pairs_squared_error = y_variance + (y_mean - mean).pow(2)
        matched_squared_error = (y - mean).pow(2)

        per_row = 0.5 * (precision * (all_pairs_squared_error - matched_squared_error)).sum(dim=1)
        return per_row.mean()

    def estimate(self, x: Tensor, y: Tensor) -> Tensor:
        """Compute the CLUB estimate by calling the module. See ``forward``."""
        return self(x, y)
