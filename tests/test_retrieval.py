"""Cross-modal retrieval: exact ranks, the tie rule, chance level, chunking, validation, trials.

The trial test trains a small DisentangledSSL model with the real training loop (no Ray) and
evaluates it with ``evaluate_trial``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dssl.data.synthetic import make_synthetic
from dssl.eval.evaluate import evaluate_trial
from dssl.eval.retrieval import (
    cross_modal_retrieval,
    retrieval_metric_names,
    retrieval_metrics,
    retrieval_ranks,
)
from dssl.methods.registry import method_names
from dssl.study.metric_names import final_metric_names
from dssl.study.schema import MethodSpec, validate_study
from dssl.train.loop import train_trial

EXPECTED_NAMES = {
    f"retrieval/{direction}/{metric}"
    for direction in ("x1_to_x2", "x2_to_x1")
    for metric in ("top1", "top5", "top10", "mrr")
}


# --------------------------------------------------------------------------------------------
# Exact values on hand-made embeddings
# --------------------------------------------------------------------------------------------


def test_identity_pairs_rank_first() -> None:
    embeddings = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)

    same = cross_modal_retrieval(embeddings, embeddings)
    # Cosine similarity ignores the scale of a row.
    scaled = cross_modal_retrieval(embeddings, 3.0 * embeddings)

    assert same == {"top1": 1.0, "top5": 1.0, "top10": 1.0, "mrr": 1.0}
    assert scaled == same
    assert np.array_equal(retrieval_ranks(embeddings, embeddings), np.ones(20, dtype=np.int64))


def _latin_square_pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return queries, a gallery and the partner rank of each query row, known in closed form.

    The queries are the standard basis vectors, so query i scores gallery row j with that row's
    i-th coordinate divided by its norm. Gallery row j has the value ``n - ((i + j) mod n)`` at coordinate
    i. Every row is a permutation of 1..n, so all rows have the same norm and every column contains
    each of 1..n once. Query i's partner scores ``n - (2i mod n)``, and exactly ``2i mod n``
    gallery rows score higher, so its rank is ``1 + (2i mod n)``.
    """
    i = np.arange(n)
    query = np.eye(n, dtype=np.float32)
    gallery = (n - (i[np.newaxis, :] + i[:, np.newaxis]) % n).astype(np.float32)
    ranks = 1 + (2 * i) % n
    return query, gallery, ranks


def test_latin_square_ranks_and_metrics() -> None:
    query, gallery, expected_ranks = _latin_square_pairs(12)
    # Ranks 1, 3, 5, 7, 9, 11, each for two rows.
    assert sorted(expected_ranks.tolist()) == [1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11]

    ranks = retrieval_ranks(query, gallery)
    metrics = cross_modal_retrieval(query, gallery)

    assert ranks.dtype == np.int64
    assert np.array_equal(ranks, expected_ranks)
    assert metrics["top1"] == 2 / 12
    assert metrics["top5"] == 6 / 12
    assert metrics["top10"] == 10 / 12
    expected_mrr = 2 * (1 + 1 / 3 + 1 / 5 + 1 / 7 + 1 / 9 + 1 / 11) / 12
    assert math.isclose(metrics["mrr"], expected_mrr, rel_tol=1e-12)


def test_ties_count_against_partner() -> None:
    # Gallery rows 0 and 1 are the same direction, so queries 0 and 1 each tie with the other's
    # partner. Query 3's partner [1, 1] is beaten by both [1, 0] rows.
    query = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)

    ranks = retrieval_ranks(query, gallery)
    metrics = cross_modal_retrieval(query, gallery, ks=(1, 2, 3))

    assert ranks.tolist() == [2, 2, 1, 3]
    assert metrics["top1"] == 0.25
    assert metrics["top2"] == 0.75
    assert metrics["top3"] == 1.0
    assert math.isclose(metrics["mrr"], (1 / 2 + 1 / 2 + 1 + 1 / 3) / 4, rel_tol=1e-12)


def test_collapsed_embeddings_rank_last() -> None:
    # Every score ties, so every partner gets the worst rank N instead of rank 1.
    collapsed = np.ones((8, 4), dtype=np.float32)

    metrics = cross_modal_retrieval(collapsed, collapsed, ks=(1, 7, 8, 10))

    assert retrieval_ranks(collapsed, collapsed).tolist() == [8] * 8
    assert metrics["top1"] == 0.0
    assert metrics["top7"] == 0.0
    assert metrics["top8"] == 1.0
    assert metrics["top10"] == 1.0
    assert metrics["mrr"] == 1 / 8


def test_zero_row_ties_with_zero_scores() -> None:
    # Query 0 is zero: it scores 0 with all 3 gallery rows, so its partner ranks last. Query 1's
    # partner scores 1, and only that row does.
    query = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)

    assert retrieval_ranks(query, gallery).tolist() == [3, 2, 1]


def test_k_above_gallery_size_is_one() -> None:
    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))

    metrics = retrieval_metrics(query, gallery)

    assert set(metrics) == EXPECTED_NAMES
    for direction in ("x1_to_x2", "x2_to_x1"):
        assert metrics[f"retrieval/{direction}/top5"] == 1.0
        assert metrics[f"retrieval/{direction}/top10"] == 1.0


# --------------------------------------------------------------------------------------------
# Random embeddings: chance level
# --------------------------------------------------------------------------------------------

CHANCE_ROWS = 50
CHANCE_TRIALS = 400
CHANCE_SIGMAS = 5.0


def test_random_embeddings_score_chance() -> None:
    """Independent embeddings rank each partner uniformly in 1..N.

    Given a query row, its N scores are i.i.d., so the partner's rank is uniform on 1..N:
    E[top-k] = k/N and E[MRR] = H_N/N exactly. The tolerance is 5 standard errors of the mean
    over all N x trials query rows, computed as if those ranks were independent. Rows of one trial
    share a gallery, so they are slightly dependent; 5 standard errors leaves room for that.
    A rank that is off by one moves MRR by about 0.02 and top-5 by 0.02, and both exceed the
    tolerances (0.0055 and 0.011).
    """
    rng = np.random.default_rng(2)
    n = CHANCE_ROWS
    results = [
        cross_modal_retrieval(rng.normal(size=(n, 8)), rng.normal(size=(n, 8))) for _ in range(CHANCE_TRIALS)
    ]
    draws = n * CHANCE_TRIALS

    for k in (1, 5, 10):
        p = k / n
        tolerance = CHANCE_SIGMAS * math.sqrt(p * (1 - p) / draws)
        mean = float(np.mean([result[f"top{k}"] for result in results]))
        assert abs(mean - p) < tolerance, (k, mean, p, tolerance)

    reciprocal = 1.0 / np.arange(1, n + 1)
    expected_mrr = float(reciprocal.mean())  # H_N / N
    mrr_std = float(np.sqrt((reciprocal**2).mean() - expected_mrr**2))
    tolerance = CHANCE_SIGMAS * mrr_std / math.sqrt(draws)
    mean_mrr = float(np.mean([result["mrr"] for result in results]))
    assert abs(mean_mrr - expected_mrr) < tolerance, (mean_mrr, expected_mrr, tolerance)


# --------------------------------------------------------------------------------------------
# Chunking and exact ties
# --------------------------------------------------------------------------------------------


_EXACT_SCALES = np.array([0.5, 1.0, 2.0, 4.0])


def _pooled_pairs(n: int, pool_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return queries and a gallery drawn from a small pool of vectors, and reference ranks.

    Rows copied from one pool vector score identically, so the data contains many exact ties. The
    reference comes from the pool's own float64 cosine matrix, in which a tie between copies of
    one vector is exact by construction. It returns the pessimistic rank of each partner and the
    number of gallery rows that score strictly higher.
    """
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(pool_size, 5))
    query_index = rng.integers(pool_size, size=n)
    gallery_index = rng.integers(pool_size, size=n)
    # Each copy gets its own power-of-two scale: float32 keeps such copies exactly parallel, and
    # cosine similarity ignores the scale.
    query = (pool[query_index] * rng.choice(_EXACT_SCALES, size=(n, 1))).astype(np.float32)
    gallery = (pool[gallery_index] * rng.choice(_EXACT_SCALES, size=(n, 1))).astype(np.float32)

    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    cosine = unit @ unit.T
    partner = cosine[query_index, gallery_index]
    scores = cosine[query_index][:, gallery_index]
    expected = (scores >= partner[:, np.newaxis]).sum(axis=1)
    strictly_higher = (scores > partner[:, np.newaxis]).sum(axis=1)
    return query, gallery, expected, strictly_higher


def test_pooled_ties_match_reference_ranks() -> None:
    query, gallery, expected, strictly_higher = _pooled_pairs(257, 40, seed=3)

    ranks = retrieval_ranks(query, gallery)

    assert np.array_equal(ranks, expected)
    # The data is meant to tie: most partners share their score with other gallery rows.
    assert (expected > strictly_higher + 1).sum() > 100


@pytest.mark.parametrize("chunk_rows", [1, 2, 7, 64, 256, 257])
def test_chunked_result_equals_single_chunk(chunk_rows: int) -> None:
    query, gallery, _, _ = _pooled_pairs(257, 40, seed=4)
    noisy = query + np.random.default_rng(5).normal(scale=0.3, size=query.shape).astype(np.float32)

    for first, second in ((query, gallery), (noisy, gallery)):
        whole = cross_modal_retrieval(first, second, chunk_rows=4096)
        chunked = cross_modal_retrieval(first, second, chunk_rows=chunk_rows)
        assert chunked == whole
        assert np.array_equal(
            retrieval_ranks(first, second, chunk_rows=chunk_rows), retrieval_ranks(first, second, chunk_rows=4096)
        )


def test_both_directions_equal_separate_calls() -> None:
    query, gallery, _, _ = _pooled_pairs(300, 25, seed=6)
    noisy = query + np.random.default_rng(7).normal(scale=0.5, size=query.shape).astype(np.float32)

    for first, second in ((query, gallery), (noisy, gallery)):
        metrics = retrieval_metrics(first, second)
        forward = cross_modal_retrieval(first, second)
        backward = cross_modal_retrieval(second, first)
        assert {name: metrics[f"retrieval/x1_to_x2/{name}"] for name in forward} == forward
        assert {name: metrics[f"retrieval/x2_to_x1/{name}"] for name in backward} == backward


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------

_GOOD = np.zeros((5, 3), dtype=np.float32)


def _with_value(row: int, column: int, value: float) -> np.ndarray:
    array = np.ones((5, 3), dtype=np.float32)
    array[row, column] = value
    return array


@pytest.mark.parametrize(
    ("query", "gallery", "message"),
    [
        (np.zeros(5), _GOOD, r"query must be a 2-D array of shape \(N, k\), got shape \(5,\)"),
        (_GOOD, np.zeros((5, 3, 1)), r"gallery must be a 2-D array of shape \(N, k\), got shape \(5, 3, 1\)"),
        ([[0.0, 1.0], [1.0, 0.0]], _GOOD, "query must be a NumPy array of shape \\(N, k\\), got list"),
        (_GOOD, np.zeros((5, 3), dtype=bool), "gallery must have a real numeric dtype, got bool"),
        (_GOOD, np.zeros((4, 3)), "query has 5 rows but gallery has 4"),
        (_GOOD, np.zeros((5, 4)), "query has width 3 but gallery has width 4"),
        (np.zeros((1, 3)), np.zeros((1, 3)), "at least 2 rows, got 1"),
        (np.zeros((4, 0)), np.zeros((4, 0)), "width at least 1, got 0"),
        (
            _with_value(2, 1, np.nan),
            _GOOD,
            "query contains NaN or infinite values. The first is nan at row 2, column 1",
        ),
        (
            _GOOD,
            _with_value(4, 0, -np.inf),
            "gallery contains NaN or infinite values. The first is -inf at row 4, column 0",
        ),
    ],
)
def test_invalid_inputs_name_the_value(query: object, gallery: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cross_modal_retrieval(query, gallery)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ks": (1, 0)}, r"ks must contain positive integers, got 0 in \(1, 0\)"),
        ({"ks": (2.5,)}, r"ks must contain positive integers, got 2.5"),
        ({"ks": (True,)}, r"ks must contain positive integers, got True"),
        ({"chunk_rows": 0}, "chunk_rows must be a positive integer, got 0"),
        ({"chunk_rows": 1.5}, "chunk_rows must be a positive integer, got 1.5"),
    ],
)
def test_invalid_options_name_the_value(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cross_modal_retrieval(_GOOD, _GOOD, **options)  # type: ignore[arg-type]


def test_retrieval_metrics_names_its_arguments() -> None:
    with pytest.raises(ValueError, match="shared1 has 5 rows but shared2 has 3"):
        retrieval_metrics(_GOOD, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="shared2 contains NaN"):
        retrieval_metrics(_GOOD, _with_value(0, 0, np.nan))


# --------------------------------------------------------------------------------------------
# A trained trial and the study's metric names
# --------------------------------------------------------------------------------------------

TRIAL_ROWS = 1000  # 200 held-out rows, so chance top-1 is 1/200


@pytest.fixture(scope="module")
def trained_trial() -> dict[str, object]:
    torch.set_num_threads(1)
    dataset = make_synthetic(n_samples=TRIAL_ROWS, latent_dim=8, x_dim=16, seed=0)
    method = MethodSpec.model_validate(
        {
            "name": "disentangled_ssl",
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "init_std": 0.1,
            # 8 epochs of 12 steps at 3e-3; measured top-1 at seed 0: 0.14 (x1 to x2), 0.15 (x2 to x1).
            "step1": {"epochs": 8, "lr": 3.0e-3},
            "step2": {"epochs": 1, "lr": 1.0e-3},
        }
    )
    models = train_trial(dataset, method, seed=0, diagnostics_samples=128)
    metrics = evaluate_trial(models, dataset, probe_max_train_samples=400, seed=0)
    return {"dataset": dataset, "models": models, "metrics": metrics}


def test_evaluate_trial_reports_retrieval(trained_trial: dict[str, object]) -> None:
    metrics = trained_trial["metrics"]
    n_test = trained_trial["dataset"].test_index.size
    assert n_test == TRIAL_ROWS // 5

    retrieval = {name: value for name, value in metrics.items() if name.startswith("retrieval/")}
    assert set(retrieval) == EXPECTED_NAMES
    assert all(0.0 <= value <= 1.0 for value in retrieval.values())
    for direction in ("x1_to_x2", "x2_to_x1"):
        top1, top5, top10, mrr = (metrics[f"retrieval/{direction}/{m}"] for m in ("top1", "top5", "top10", "mrr"))
        assert top1 <= top5 <= top10
        assert top1 <= mrr <= 1.0
        # Chance is 1/200. The measured 0.14-0.15 leaves a wide margin above 10x chance.
        assert top1 > 10 / n_test, (direction, top1)


def test_evaluate_trial_retrieves_from_all_held_out_rows(trained_trial: dict[str, object]) -> None:
    dataset, models, metrics = trained_trial["dataset"], trained_trial["models"], trained_trial["metrics"]
    test_x1, test_x2, _ = dataset.split("test")
    with torch.no_grad():
        embeddings = models.representations(torch.as_tensor(test_x1), torch.as_tensor(test_x2))

    expected = retrieval_metrics(embeddings["shared1"].numpy(), embeddings["shared2"].numpy())

    assert {name: metrics[name] for name in expected} == expected


def _study(**overrides: object) -> dict[str, object]:
    search = {"algorithm": "random", "num_trials": 2, "metric": "probe/shared/y_c", **overrides.pop("search", {})}
    return {"name": "retrieval-names", "search": search, **overrides}


def test_final_metric_names_include_retrieval() -> None:
    default = validate_study(_study())
    every_method = validate_study(
        _study(search={"space": {"name": {"type": "categorical", "choices": list(method_names())}}})
    )
    clip = validate_study(_study(method={"name": "clip"}))

    for spec in (default, every_method, clip):
        assert EXPECTED_NAMES <= final_metric_names(spec)
    assert set(retrieval_metric_names()) == EXPECTED_NAMES


def test_study_can_search_on_retrieval_mrr() -> None:
    spec = validate_study(
        _study(
            search={
                "metric": "retrieval/x1_to_x2/mrr",
                "mode": "max",
                "space": {"name": {"type": "categorical", "choices": ["disentangled_ssl", "dmvae"]}},
            }
        )
    )

    assert spec.search.metric == "retrieval/x1_to_x2/mrr"
