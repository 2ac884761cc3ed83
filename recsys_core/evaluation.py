"""Metrics and the evaluation of any predictor (model or baseline) on a split.

Rating metrics follow the paper: the user's training vector is the input, predictions are made for
the held-out (user, item) pairs only and clipped to the rating range, RMSE and MAE over those pairs.

Ranking metrics:
- sampled: when the split has ``negatives.npz`` (leave-one-out), the held-out item is ranked among its
  sampled negatives; its rank is the number of negatives scoring >= it (a tie counts against it).
  HR@K = share of rank < K; NDCG@K = mean of 1/log2(rank + 2) where rank < K, else 0;
- full catalogue: Recall@K = |top-K ∩ held-out items| / |held-out items| per user, averaged, where the
  top K are taken among all items the user did not rate in training.

A predictor answers ``predict_pairs(rows, cols)`` and ``score_rows(rows)`` (see ``estimators``).
"""

from __future__ import annotations

import numpy as np

from recsys_core.interactions import csr_triplets, rating_range


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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def exclude_seen(scores: np.ndarray, rows: np.ndarray, seen) -> np.ndarray:
    """Set the scores of items stored in CSR ``seen`` for each row to -inf (in place)."""
    for pos, row in enumerate(rows):
        scores[pos, seen.indices[seen.indptr[row]:seen.indptr[row + 1]]] = -np.inf
    return scores


def recall_at_k(top: np.ndarray, relevant_rows: np.ndarray, relevant) -> float:
    """Mean over rows of |top ∩ relevant| / |relevant| (``relevant`` a CSR matrix, rows given)."""
    recalls = []
    for pos, row in enumerate(relevant_rows):
        items = relevant.indices[relevant.indptr[row]:relevant.indptr[row + 1]]
        recalls.append(np.isin(items, top[pos]).sum() / len(items))
    return float(np.mean(recalls)) if recalls else float("nan")


def rating_metrics(predictor, part, clip: tuple[float, float]) -> dict:
    rows, cols, truth = csr_triplets(part)
    prediction = np.clip(predictor.predict_pairs(rows, cols), *clip)
    return {"rmse": rmse(prediction, truth), "mae": mae(prediction, truth), "n": int(len(truth))}


def sampled_ranking(predictor, test, negatives, k: int) -> dict:
    """HR@K / NDCG@K of each row's (first) held-out test item among its sampled negatives."""
    rows, neg_items = negatives
    rows = rows.astype(np.int64)
    has_test = np.diff(test.indptr)[rows] > 0
    rows, neg_items = rows[has_test], neg_items[has_test].astype(np.int64)
    positive_items = test.indices[test.indptr[rows]].astype(np.int64)
    positive = predictor.predict_pairs(rows, positive_items)
    negative = predictor.predict_pairs(np.repeat(rows, neg_items.shape[1]), neg_items.reshape(-1))
    ranks = rank_of_positive(positive, negative.reshape(neg_items.shape))
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "n_ranked": int(len(rows))}


def full_catalogue_recall(predictor, train, test, k: int, max_users: int, seed: int = 0,
                          chunk: int = 1024) -> dict:
    """Recall@K over all items not rated in training; at most ``max_users`` test users (seeded sample)."""
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(rows) > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    hits = []
    for lo in range(0, len(rows), chunk):
        part = rows[lo:lo + chunk]
        scores = exclude_seen(np.array(predictor.score_rows(part), np.float32, copy=True), part, train)
        hits.append(recall_at_k(top_k(scores, k), part, test) * len(part))
    return {f"recall@{k}": float(np.sum(hits) / len(rows)) if len(rows) else float("nan"),
            "n_recall_users": int(len(rows))}


def evaluate_predictor(predictor, data, *, rating_model: bool = True, k: int = 10,
                       recall_users: int = 5000, ranking: bool = True) -> dict:
    """All metrics of one predictor on the valid and test parts: {"valid": {...}, "test": {...}}.

    ``ranking=False`` (a predictor whose scores all tie, the global mean): its ranking metrics are None, not
    numbers. Its HR/Recall would only measure the tie-break (lower item column first), not a ranking."""
    clip = rating_range(data.meta)
    result: dict = {}
    for name in ("valid", "test"):
        part = getattr(data, name)
        if part.nnz == 0:
            continue
        metrics = rating_metrics(predictor, part, clip) if rating_model else {}
        if name == "test":
            if data.negatives is not None:
                metrics.update(sampled_ranking(predictor, part, data.negatives, k) if ranking
                               else {f"hr@{k}": None, f"ndcg@{k}": None})
            if recall_users > 0:
                metrics.update(full_catalogue_recall(predictor, data.train, part, k, recall_users) if ranking
                               else {f"recall@{k}": None})
        result[name] = metrics
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
