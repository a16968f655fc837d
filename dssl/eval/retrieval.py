"""Cross-modal retrieval: find each sample's partner in the other modality by cosine similarity.

Row ``i`` of the query embeddings and row ``i`` of the gallery embeddings come from the same
sample (a cell profile and the molecule that perturbed it, a video clip and its transcript). Each
query row is scored against every gallery row, and the metrics measure where its own partner
ranks: top-k accuracy (the partner is among the ``k`` best-scoring gallery rows) and the mean
reciprocal rank (MRR) of the partner.

Tie rule (pessimistic): the rank of the partner is the number of gallery rows whose score is
greater than **or equal to** the partner's score, the partner included. So rank = 1 + (rows with
a strictly higher score) + (all other rows with the same score). A collapsed representation, in
which every row has the same embedding, therefore ranks every partner last instead of first.

Exact scores: the L2-normalised embeddings are rounded to multiples of 2**-26 before the dot
products. Every product is then a multiple of 2**-52. The rounded rows have norm at most
``1 + sqrt(k) * 2**-27``, so by the Cauchy-Schwarz inequality every partial sum is smaller than 2
in absolute value for any practical width ``k``. All of these are exact float64 numbers, so each
score is computed without rounding error in any summation order. Ranks therefore do not depend on
the BLAS kernel, the chunk size or the row order, and duplicated rows tie exactly. The rounding
moves a cosine by at most about ``sqrt(k) * 2**-26`` (1.5e-7 for ``k = 100``), which is below the
resolution of float32 embeddings.

NOTE: rows that repeat one sample of a modality (the same molecule paired with several cell
profiles) are separate gallery rows with equal scores, so under the tie rule each copy counts
against the true partner. Deduplicate the gallery first when such copies should count as hits.

Example:
    >>> import numpy as np
    >>> x = np.eye(3, dtype=np.float32)
    >>> cross_modal_retrieval(x, x, ks=(1,))
    {'top1': 1.0, 'mrr': 1.0}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

RETRIEVAL_KS = (1, 5, 10)
"""The ``k`` values of the top-k accuracies that :func:`retrieval_metrics` reports."""

RETRIEVAL_DIRECTIONS = ("x1_to_x2", "x2_to_x1")
"""Query modality ``_to_`` gallery modality, as in the metric names."""

_GRID_BITS = 26
"""Normalised embeddings are rounded to multiples of ``2**-_GRID_BITS`` (see the module docstring)."""

_MAX_SCORE_ELEMENTS = 2**24
"""Score-matrix elements per chunk in :func:`retrieval_metrics`: 128 MiB of float64 scores."""


def retrieval_metric_names() -> tuple[str, ...]:
    """Return the names that :func:`retrieval_metrics` returns, in a fixed order.

    Returns:
        ``retrieval/{direction}/top{k}`` for ``k`` in :data:`RETRIEVAL_KS` and
        ``retrieval/{direction}/mrr``, for both directions.
    """
    return tuple(
        f"retrieval/{direction}/{metric}"
        for direction in RETRIEVAL_DIRECTIONS
        for metric in (*(f"top{k}" for k in RETRIEVAL_KS), "mrr")
    )


def retrieval_ranks(query: np.ndarray, gallery: np.ndarray, *, chunk_rows: int = 4096) -> np.ndarray:
    """Rank each query row's partner among all gallery rows by cosine similarity.

    Args:
        query: Query embeddings, shape ``(N, k)``. Row ``i`` is paired with ``gallery[i]``.
            Any real dtype is accepted, and all values must be finite.
        gallery: Gallery embeddings, shape ``(N, k)``.
        chunk_rows: Query rows scored at once. Peak memory is about ``chunk_rows * N`` float64
            scores plus as many booleans, and the ranks do not depend on it.

    Returns:
        int64 ranks, shape ``(N,)``, each in ``[1, N]``. Rank 1 means no other gallery row scores
        as high as the partner. Ties count against the partner (see the module docstring). A
        zero row has cosine similarity 0 with every row, so it ties with every row that scores 0.

    Raises:
        ValueError: If an array is not 2-D, the shapes differ, there are fewer than 2 rows or no
            columns, a value is NaN or infinite, or ``chunk_rows`` is not a positive integer.
    """
    _validate_pair(query, gallery, ("query", "gallery"))
    forward, _ = _partner_ranks(query, gallery, _checked_chunk_rows(chunk_rows))
    return forward


def cross_modal_retrieval(
    query: np.ndarray,
    gallery: np.ndarray,
    *,
    ks: Sequence[int] = RETRIEVAL_KS,
    chunk_rows: int = 4096,
) -> dict[str, float]:
    """Score retrieval of each query row's partner from the whole gallery by cosine similarity.

    Args:
        query: Query embeddings, shape ``(N, k)``. Row ``i`` is paired with ``gallery[i]``.
        gallery: Gallery embeddings, shape ``(N, k)``. All ``N`` rows are candidates for every query.
        ks: The ``k`` of each top-k accuracy, positive integers. A ``k >= N`` gives 1.0, because
            every rank is at most ``N``.
        chunk_rows: Query rows scored at once, so memory is ``O(chunk_rows * N)``. The result does
            not depend on it.

    Returns:
        ``top{k}`` for each ``k`` in ``ks``, the fraction of query rows whose partner has rank
        ``<= k``, and ``mrr``, the mean of ``1 / rank``, in ``[1/N, 1]``. Ranks count ties
        pessimistically (see :func:`retrieval_ranks`). Independent random embeddings give
        ``top{k} = k / N`` and ``mrr = H_N / N`` in expectation, where ``H_N`` is the N-th
        harmonic number.

    Raises:
        ValueError: If the inputs are invalid (see :func:`retrieval_ranks`) or a ``k`` is not a
            positive integer.
    """
    _validate_ks(ks)
    return _rank_metrics(retrieval_ranks(query, gallery, chunk_rows=chunk_rows), ks)


def retrieval_metrics(shared1: np.ndarray, shared2: np.ndarray) -> dict[str, float]:
    """Score retrieval in both directions between the per-modality shared embeddings.

    Both directions come from one pass over the score matrix. The scores are exact, so the
    score of (x2 row j, x1 row i) equals that of (x1 row i, x2 row j), and the result equals two
    :func:`cross_modal_retrieval` calls.

    Args:
        shared1: Shared embeddings of modality 1, shape ``(N, k)``, one row per held-out sample.
        shared2: Shared embeddings of modality 2 of the same samples in the same order, ``(N, k)``.

    Returns:
        The names of :func:`retrieval_metric_names`. ``retrieval/x1_to_x2/*`` queries with
        ``shared1`` and searches ``shared2``, and ``retrieval/x2_to_x1/*`` does the reverse. Each
        ``top{k}`` with ``k >= N`` is 1.0.

    Raises:
        ValueError: If the inputs are invalid (see :func:`retrieval_ranks`).
    """
    _validate_pair(shared1, shared2, ("shared1", "shared2"))
    n_rows = shared1.shape[0]
    chunk_rows = max(1, min(4096, _MAX_SCORE_ELEMENTS // n_rows))
    ranks = _partner_ranks(shared1, shared2, chunk_rows)

    metrics: dict[str, float] = {}
    for direction, direction_ranks in zip(RETRIEVAL_DIRECTIONS, ranks):
        result = _rank_metrics(direction_ranks, RETRIEVAL_KS)
        metrics.update({f"retrieval/{direction}/{name}": value for name, value in result.items()})
    logger.debug("retrieval over %d held-out rows: %s", n_rows, metrics)
    return metrics


def _partner_ranks(first: np.ndarray, second: np.ndarray, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the partner ranks of ``first`` querying ``second`` and of the reverse, int64 (N,) each."""
    first_grid = _normalised_on_grid(first)
    second_grid = _normalised_on_grid(second)
    # The partner scores, computed row by row. They are exact, so they equal the diagonal of the
    # score matrix bit for bit.
    partner_scores = np.einsum("ij,ij->i", first_grid, second_grid)

    n_rows = first_grid.shape[0]
    forward = np.empty(n_rows, dtype=np.int64)
    backward = np.zeros(n_rows, dtype=np.int64)
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        scores = first_grid[start:stop] @ second_grid.T  # (chunk, N), rows of first by rows of second
        forward[start:stop] = np.count_nonzero(scores >= partner_scores[start:stop, np.newaxis], axis=1)
        # Column j contains the scores of second's row j against these rows of first.
        backward += np.count_nonzero(scores.T >= partner_scores[:, np.newaxis], axis=1)
    return forward, backward


def _rank_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    metrics = {f"top{int(k)}": float(np.mean(ranks <= k)) for k in ks}
    metrics["mrr"] = float(np.mean(1.0 / ranks))
    return metrics


def _validate_ks(ks: Sequence[int]) -> None:
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must contain positive integers, got {k!r} in {tuple(ks)!r}")


def _checked_chunk_rows(chunk_rows: int) -> int:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    return int(chunk_rows)


def _validate_pair(first: np.ndarray, second: np.ndarray, names: tuple[str, str]) -> None:
    first_name, second_name = names
    for name, array in ((first_name, first), (second_name, second)):
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{name} must be a NumPy array of shape (N, k), got {type(array).__name__}")
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array of shape (N, k), got shape {array.shape}")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name} must have a real numeric dtype, got {array.dtype}")
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"{first_name} has {first.shape[0]} rows but {second_name} has {second.shape[0]}. Row i "
            f"of {first_name} is paired with row i of {second_name}, so both need the same number of rows"
        )
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{first_name} has width {first.shape[1]} but {second_name} has width {second.shape[1]}. "
            "Cosine similarity needs embeddings of the same width"
        )
    if first.shape[0] < 2:
        raise ValueError(f"retrieval needs at least 2 rows, got {first.shape[0]}")
    if first.shape[1] < 1:
        raise ValueError(f"retrieval needs embeddings of width at least 1, got {first.shape[1]}")
    for name, array in ((first_name, first), (second_name, second)):
        finite = np.isfinite(array)
        if not finite.all():
            row, column = np.argwhere(~finite)[0]
            raise ValueError(
                f"{name} contains NaN or infinite values. The first is {float(array[row, column])} at "
                f"row {row}, column {column}"
            )


def _normalised_on_grid(embeddings: np.ndarray) -> np.ndarray:
    """Return the L2-normalised rows, float64 (N, k), rounded to multiples of ``2**-_GRID_BITS``.

    Zero rows stay zero. Each row is first divided by its largest absolute value, so that the
    squared norm cannot overflow for large finite inputs.
    """
    values = embeddings.astype(np.float64, copy=True)
    scale = np.max(np.abs(values), axis=1, keepdims=True)
    nonzero = scale[:, 0] > 0
    values[nonzero] /= scale[nonzero]
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    values[nonzero] /= norms[nonzero]
    # Multiplying and dividing by a power of two is exact, so only np.rint rounds.
    grid = float(2**_GRID_BITS)
    return np.rint(values * grid) / grid
