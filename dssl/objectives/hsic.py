"""HSIC, the Hilbert-Schmidt independence criterion, with Gaussian kernels.

Source: Gretton, Bousquet, Smola, Schoelkopf, "Measuring Statistical Dependence with
Hilbert-Schmidt Norms", ALT 2005. Its biased empirical estimator over n paired rows is

    HSIC(X, Y) = trace(K H L H) / (n - 1)^2,

with K_ij = exp(-||x_i - x_j||^2 / (2 sigma_x^2)), L the same kernel on y, and
H = I - 11^T / n the centring matrix. With characteristic kernels such as the Gaussian, the
population HSIC is zero exactly when X and Y are independent. The biased estimate on
independent samples is still positive, of order 1 / n. The normalised variant divides by
sqrt(HSIC(X, X) * HSIC(Y, Y)) and lies in [0, 1]. HSIC is a dependence measure, not a
mutual information, and has no unit.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_NORMALISER_EPS = 1e-12


def _check_rows(name: str, value: Tensor) -> None:
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(value.shape)}.")
    if value.shape[0] < 2:
        raise ValueError(f"{name} must have at least 2 rows, got {value.shape[0]}.")


def _check_sigma(name: str, sigma: float | None) -> None:
    if sigma is None:
        return
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"{name} must be a positive finite number or None, got {sigma!r}.")
    if not (0.0 < float(sigma) < math.inf):
        raise ValueError(f"{name} must be a positive finite number or None, got {sigma!r}.")


def _squared_distances(x: Tensor) -> Tensor:
    """Return the (n, n) matrix of squared Euclidean distances between the rows of x."""
    # Centring does not change distances and reduces cancellation in |a|^2 + |b|^2 - 2 a.b.
    centred = x - x.mean(dim=0, keepdim=True)
    squared_norms = centred.pow(2).sum(dim=1)
    gram = centred @ centred.T
    return (squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram).clamp_min(0.0)


def _median_of_distances(squared_distances: Tensor) -> float:
    rows = squared_distances.shape[0]
    upper = torch.triu_indices(rows, rows, offset=1, device=squared_distances.device)
    pair_distances = squared_distances.detach()[upper[0], upper[1]].sqrt()
    return float(pair_distances.median())


def median_heuristic_sigma(x: Tensor) -> float:
    """Compute the median heuristic bandwidth: the median Euclidean distance between distinct rows.

    The median runs over the n (n - 1) / 2 pairs i < j. For an even count it is the lower of the
    two middle values (``torch.median``). If that median is 0 (more than half the pairs are
    identical rows), 1.0 is returned and a warning is logged.

    Args:
        x: Samples, shape (n, d), n >= 2.

    Returns:
        sigma as a Python float, computed without gradient.

    Raises:
        ValueError: If x is not 2-D or has fewer than 2 rows.

    Example:
        >>> median_heuristic_sigma(torch.tensor([[0.0], [1.0], [3.0]]))
        2.0
    """
    _check_rows("x", x)
    return _sigma_from_distances(_squared_distances(x.detach()))


def _sigma_from_distances(squared_distances: Tensor) -> float:
    sigma = _median_of_distances(squared_distances)
    if sigma > 0.0:
        return sigma
    logger.warning(
        "The median distance between rows is 0 because more than half the pairs of rows are "
        "identical, so sigma = 1.0 is used. Pass a fixed sigma to choose another bandwidth."
    )
    return 1.0


def _centred_gaussian_kernel(x: Tensor, sigma: float | None) -> Tensor:
    """Return H K H for the Gaussian kernel K on the rows of x, shape (n, n)."""
    squared_distances = _squared_distances(x)
    if sigma is None:
        sigma = _sigma_from_distances(squared_distances)
    kernel = torch.exp(-squared_distances / (2.0 * float(sigma) ** 2))
    row_means = kernel.mean(dim=1, keepdim=True)
    column_means = kernel.mean(dim=0, keepdim=True)
    return kernel - row_means - column_means + kernel.mean()


def hsic(
    x: Tensor,
    y: Tensor,
    sigma_x: float | None = None,
    sigma_y: float | None = None,
    normalized: bool = False,
) -> Tensor:
    """Compute the biased Gaussian-kernel HSIC trace(K H L H) / (n - 1)^2 between paired rows.

    trace(K H L H) is computed as sum((H K H) * (H L H)), which is equal because H H = H, and
    H K H is formed by subtracting row, column and grand means. Time is O(n^2 (d_x + d_y)) and
    memory O(n^2).

    With ``normalized=True`` the result is HSIC(X, Y) / sqrt(HSIC(X, X) * HSIC(Y, Y)), in
    [0, 1] up to rounding. It is 1 for y = x with equal bandwidths, and 0 (not NaN) when x or
    y has all rows equal.

    Bandwidths chosen by the median heuristic (``median_heuristic_sigma``) are constants for
    autograd: gradients flow through the kernels only. The value is invariant to translating
    and rotating x or y, and with the median heuristic also to scaling them.

    Args:
        x: Samples of X, shape (n, d_x), n >= 2.
        y: Samples of Y paired with x by row, shape (n, d_y).
        sigma_x: Gaussian kernel bandwidth on x, > 0, or None for the median heuristic.
        sigma_y: Gaussian kernel bandwidth on y, > 0, or None for the median heuristic.
        normalized: Return the normalised HSIC instead of the raw one.

    Returns:
        Scalar tensor, differentiable with respect to x and y.

    Raises:
        ValueError: If x or y is not 2-D, has fewer than 2 rows, the row counts differ, or a
            sigma is not a positive finite number.

    Example:
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> y = torch.tensor([[0.0], [2.0]])
        >>> round(float(hsic(x, y)), 6)  # (1 - exp(-1/2))^2 for any two distinct rows
        0.154818
        >>> float(hsic(x, x, normalized=True))
        1.0
    """
    _check_rows("x", x)
    _check_rows("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}.")
    _check_sigma("sigma_x", sigma_x)
    _check_sigma("sigma_y", sigma_y)

    scale = float(x.shape[0] - 1) ** 2
    centred_x = _centred_gaussian_kernel(x, sigma_x)
    centred_y = _centred_gaussian_kernel(y, sigma_y)
    cross = (centred_x * centred_y).sum() / scale
    if not normalized:
        return cross

    self_x = centred_x.pow(2).sum() / scale
    self_y = centred_y.pow(2).sum() / scale
    # Clamping before the square root keeps the gradient finite when a kernel is constant.
    return cross / torch.sqrt((self_x * self_y).clamp_min(_NORMALISER_EPS**2))
