"""Metrics and the evaluation of any predictor (model or baseline) on a split.

Rating metrics follow the paper: the user's training vector is the input, predictions are made for
the held-out (user, item) pairs only and clipped to the rating range, RMSE and MAE over those pairs.

Ranking metrics:
- sampled: when the split has ``negatives.npz`` (leave-one-out), the held-out item is ranked among its
  sampled negatives; its rank is the number of negatives scoring >= it (a tie counts against it).
  HR@K = share of rank < K; NDCG@K = mean of 1/log2(rank + 2) where rank < K, else 0;
- full catalogue: Recall@K = |top-K ∩ held-out items| / |held-out items| per user, averaged, where the
  top K are taken among all items the user did not rate in training.

Per bucket (``recsys_core.buckets``): the same RMSE and sampled HR@K per bucket of the user's training-rating
count and for new items, under ``"buckets"`` beside ``"valid"``/``"test"``.

A predictor answers ``predict_pairs(rows, cols)`` and ``score_rows(rows)`` (see ``estimators``).
"""

from __future__ import annotations

import numpy as np

from recsys_core import buckets as bucketing
from recsys_core.buckets import Buckets
from recsys_core.interactions import csr_triplets, rating_range
from recsys_core.ranking import best_items, top_k  # noqa: F401 (top_k: part of this module's API)


def rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(prediction, np.float64) - truth) ** 2)))


def mae(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(prediction, np.float64) - truth)))


def rank_of_positive(positive: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """0-based rank of each positive among its negatives; ties count against the positive."""
    return (np.asarray(negatives) >= np.asarray(positive)[:, None]).sum(axis=1)


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    gains = np.where(ranks < k, 1.0 / np.log2(np.asarray(ranks, np.float64) + 2.0), 0.0)
    return float(np.mean(gains))


def recall_at_k(top: np.ndarray, relevant_rows: np.ndarray, relevant) -> float:
    """Mean over rows of |top ∩ relevant| / |relevant| (``relevant`` a CSR matrix, rows given)."""
    rows = np.asarray(relevant_rows, np.int64)
    if len(rows) == 0:
        return float("nan")
    starts = relevant.indptr[rows].astype(np.int64)
    lengths = relevant.indptr[rows + 1].astype(np.int64) - starts
    positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    width = int(relevant.shape[1])
    found = np.isin(owner * width + relevant.indices[positions],
                    (np.arange(len(rows), dtype=np.int64)[:, None] * width + top).ravel())
    return float(np.mean(np.bincount(owner, found, len(rows)) / lengths))


def rating_metrics(predictor, part, clip: tuple[float, float], prediction: np.ndarray | None = None,
                   buckets: Buckets | None = None) -> dict:
    """RMSE/MAE of the clipped predictions of every stored pair of ``part`` (``prediction``: already made,
    in ``csr_triplets`` order). With ``buckets``, also ``"buckets"``: the per-bucket rows (``BucketRow``)."""
    rows, cols, truth = csr_triplets(part)
    prediction = np.clip(predictor.predict_pairs(rows, cols) if prediction is None else prediction, *clip)
    metrics = {"rmse": rmse(prediction, truth), "mae": mae(prediction, truth), "n": int(len(truth))}
    if buckets is not None:
        metrics["buckets"] = buckets.rating_rows(rows, cols, prediction, truth)
    return metrics


def _ranked_pairs(test, negatives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, their first held-out test item, their negatives) of the rows of ``negatives`` with a test item."""
    rows, neg_items = negatives
    rows = rows.astype(np.int64)
    has_test = np.diff(test.indptr)[rows] > 0
    rows, neg_items = rows[has_test], neg_items[has_test].astype(np.int64)
    return rows, test.indices[test.indptr[rows]].astype(np.int64), neg_items


def sampled_ranking(predictor, test, negatives, k: int, buckets: Buckets | None = None) -> dict:
    """HR@K / NDCG@K of each row's (first) held-out test item among its sampled negatives. With ``buckets``,
    also ``"buckets"``: HR@K per bucket (``BucketRow``)."""
    rows, positive_items, neg_items = _ranked_pairs(test, negatives)
    positive = predictor.predict_pairs(rows, positive_items)
    negative = predictor.predict_pairs(np.repeat(rows, neg_items.shape[1]), neg_items.reshape(-1))
    ranks = rank_of_positive(positive, negative.reshape(neg_items.shape))
    metrics = {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "n_ranked": int(len(rows))}
    if buckets is not None:
        metrics["buckets"] = buckets.ranking_rows(rows, positive_items, ranks, k)
    return metrics


def full_catalogue_recall(predictor, train, test, k: int, max_users: int, seed: int = 0,
                          chunk: int = 1024) -> dict:
    """Recall@K over all items not rated in training; at most ``max_users`` test users (seeded sample): only
    those users are scored, ``chunk`` at a time."""
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(rows) > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    top, _ = best_items(predictor, rows, k, exclude=train, block=chunk)
    return {f"recall@{k}": recall_at_k(top, rows, test), "n_recall_users": int(len(rows))}


def evaluate_predictor(predictor, data, *, rating_model: bool = True, k: int = 10,
                       recall_users: int = 5000, ranking: bool = True,
                       test_prediction: np.ndarray | None = None, buckets: Buckets | None = None) -> dict:
    """All metrics of one predictor on the valid and test parts: {"valid": {...}, "test": {...}, "buckets":
    {"valid": [...], "test": [...]}}, the last the RMSE / HR@K per bucket (``recsys_core.buckets``, rows as
    JSON) of the parts measured. ``test_prediction``: its predictions of the test pairs (``csr_triplets``
    order), when already made. ``buckets``: ``Buckets.of(data.train)``, made once for several predictors.

    ``ranking=False`` (a predictor whose scores all tie, the global mean): its ranking metrics are None, not
    numbers. Its HR/Recall would only measure the tie-break (lower item column first), not a ranking."""
    clip = rating_range(data.meta)
    buckets = Buckets.of(data.train) if buckets is None else buckets
    result: dict = {}
    by_bucket: dict[str, list] = {}
    for name in ("valid", "test"):
        part = getattr(data, name)
        if part.nnz == 0:
            continue
        metrics = rating_metrics(predictor, part, clip, test_prediction if name == "test" else None, buckets) \
            if rating_model else {}
        rating_rows, ranking_rows = metrics.pop("buckets", None), None
        if name == "test" and data.negatives is not None:
            if ranking:
                metrics.update(sampled_ranking(predictor, part, data.negatives, k, buckets))
                ranking_rows = metrics.pop("buckets")
            else:
                metrics.update({f"hr@{k}": None, f"ndcg@{k}": None})
                rows, positive_items, _ = _ranked_pairs(part, data.negatives)
                ranking_rows = buckets.ranking_rows(rows, positive_items, None, k)
        if rating_rows is not None or ranking_rows is not None:
            by_bucket[name] = bucketing.merge(rating_rows, ranking_rows)
        # Recall@K on valid too for ranking models: what a sweep selects them on (never on test).
        if recall_users > 0 and (name == "test" or not rating_model):
            metrics.update(full_catalogue_recall(predictor, data.train, part, k, recall_users) if ranking
                           else {f"recall@{k}": None})
        result[name] = metrics
    result["buckets"] = bucketing.to_json(by_bucket, k)
    return result


def primary_metric(metrics: dict, rating_model: bool, k: int = 10) -> tuple[str, bool] | None:
    """The metric that decides "beaten by a baseline": RMSE for rating models, HR@K (else Recall@K)
    for interaction models. Returns (name, higher_is_better)."""
    test = metrics.get("test", {})
    if rating_model and "rmse" in test:
        return "rmse", False
    for name in (f"hr@{k}", f"recall@{k}"):
        if name in test:
            return name, True
    return None


def beaten_by(model_metrics: dict, baseline_metrics: dict[str, dict], rating_model: bool, k: int = 10) -> list[str]:
    """Names of the baselines that do strictly better than the model on its primary test metric.

    ``rating_model=False`` asks it of the top-K lists (HR@K, else Recall@K) whatever the model is: a model
    fit to RMSE can rank worse than most-popular, and its top-K list is still what a user receives. A
    baseline without that metric (None: the global mean has no ranking) is never said to beat the model.
    """
    primary = primary_metric(model_metrics, rating_model, k)
    if primary is None:
        return []
    name, higher = primary
    mine = model_metrics["test"][name]
    beaten = []
    for baseline, metrics in baseline_metrics.items():
        theirs = metrics.get("test", {}).get(name)
        if theirs is not None and (theirs > mine if higher else theirs < mine):
            beaten.append(baseline)
    return beaten
