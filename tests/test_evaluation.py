"""Metrics against hand-computed values, baselines, sampling, and the recommendations written."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from train_fixtures import make_leave_one_out_split, make_rating_split

from recsys_core.baselines import GlobalMean, ItemMean, MostPopular, UserItemBias
from recsys_core.errors import RecsysError
from recsys_core.evaluation import (
    beaten_by,
    evaluate_predictor,
    full_catalogue_recall,
    hit_rate_at_k,
    mae,
    ndcg_at_k,
    rank_of_positive,
    recall_at_k,
    rmse,
    sampled_ranking,
    top_k,
)
from recsys_core.interactions import load_split_data, row_batch
from recsys_core.ranking import ScoredOnce, best_items
from recsys_core.sampling import sample_negatives
from recsys_core.settings import RunSettings
from recsys_core.train import load_run, recommend, recommend_for_ratings, train

torch.set_num_threads(2)
QUICK = RunSettings(recall_users=0)  # the trainings here read RMSE, the buckets and the top-K, not Recall@K


def test_rmse_and_mae_by_hand():
    assert rmse(np.array([1.0, 2.0, 4.0]), np.array([1.0, 4.0, 3.0])) == pytest.approx(math.sqrt(5 / 3))
    assert mae(np.array([1.0, 2.0, 4.0]), np.array([1.0, 4.0, 3.0])) == pytest.approx(1.0)


def test_rank_hit_rate_and_ndcg_count_ties_against_the_positive():
    positive = np.array([0.9, 0.5, 0.5, 0.1])
    negatives = np.array([[0.1, 0.2, 0.3],    # rank 0
                          [0.5, 0.1, 0.1],    # a tie: rank 1
                          [0.6, 0.7, 0.5],    # rank 3
                          [0.2, 0.3, 0.4]])   # rank 3
    ranks = rank_of_positive(positive, negatives)
    assert ranks.tolist() == [0, 1, 3, 3]
    assert hit_rate_at_k(ranks, 1) == 0.25
    assert hit_rate_at_k(ranks, 2) == 0.5
    assert hit_rate_at_k(ranks, 10) == 1.0
    assert ndcg_at_k(ranks, 2) == pytest.approx((1.0 + 1 / math.log2(3)) / 4)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1.0 + 1 / math.log2(3) + 2 / math.log2(5)) / 4)
    # every score equal: the positive is last
    assert rank_of_positive(np.zeros(1), np.zeros((1, 5))).tolist() == [5]


def test_top_k_and_recall_by_hand():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]  # ties: lower column first
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 1, 1]], np.float32))
    # row 0: 1 of 1 relevant in top 2; row 1: 0 of 2
    assert recall_at_k(top_k(scores, 2), np.array([0, 1]), relevant) == pytest.approx(0.5)


class _Table:
    """A predictor answering from a dense score table."""

    rating_model = True

    def __init__(self, table):
        self.table = np.asarray(table, np.float32)

    def predict_pairs(self, rows, cols):
        return self.table[rows, cols]

    def score_rows(self, rows):
        return self.table[rows]


def test_sampled_ranking_and_full_catalogue_recall_with_a_known_predictor():
    table = np.array([[0.0, 1.0, 0.2, 0.3], [0.9, 0.1, 0.8, 0.0]])
    test = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 1, 0, 0]], np.float32))
    negatives = (np.array([0, 1], np.int32), np.array([[2, 3], [2, 3]], np.int32))
    result = sampled_ranking(_Table(table), test, negatives, k=1)
    assert result["hr@1"] == 0.5 and result["ndcg@1"] == 0.5  # user 0 first, user 1 last
    train = sp.csr_matrix(np.array([[0, 0, 0, 0], [1, 0, 0, 0]], np.float32))
    # user 1's best item 0 is rated in training, so its top 1 is item 2 (not the held-out 1)
    recall = full_catalogue_recall(_Table(table), train, test, k=1, max_users=10)
    assert recall["recall@1"] == 0.5


def test_scores_kept_once_are_the_predictors_and_each_row_is_scored_once():
    table = np.random.default_rng(0).random((6, 5)).astype(np.float32)
    asked: list[list[int]] = []

    class Counting(_Table):
        def score_rows(self, rows):
            asked.append(list(rows))
            return self.table[rows]

    scored = ScoredOnce.wrap(Counting(table), 6, 5)
    assert isinstance(scored, ScoredOnce) and scored.rating_model  # the predictor's own attributes
    train = sp.csr_matrix(np.eye(6, 5, dtype=np.float32))
    first = best_items(scored, np.array([4, 1, 2]), 3, exclude=train, block=2)
    again = best_items(scored, np.arange(6), 3, exclude=train, block=4)
    plain = best_items(Counting(table), np.arange(6), 3, exclude=train)
    assert np.array_equal(again[0], plain[0]) and np.array_equal(again[1], plain[1])
    assert np.array_equal(first[0], plain[0][[4, 1, 2]])
    assert sorted(r for rows in asked[:-1] for r in rows) == list(range(6))  # the last call: the plain one
    assert ScoredOnce.wrap(table, 10 ** 6, 10 ** 5) is table  # would not fit: the predictor itself


def test_baselines_by_hand():
    train = sp.csr_matrix(np.array([[5, 3, 0], [4, 0, 0], [0, 1, 0]], np.float32))
    assert GlobalMean(train).predict_pairs([0], [2])[0] == pytest.approx(13 / 4)
    item_mean = ItemMean(train)
    assert item_mean.predict_pairs([0, 0, 0], [0, 1, 2]).tolist() == pytest.approx([4.5, 2.0, 13 / 4])
    assert MostPopular(train).score_rows([0]).tolist() == [[2.0, 2.0, 0.0]]
    # no regularization and a single item: the bias model reproduces the user's mean exactly
    one_item = sp.csr_matrix(np.array([[5], [3]], np.float32))
    bias = UserItemBias(one_item, reg_u=0.0, reg_i=0.0)
    assert bias.predict_pairs([0, 1], [0, 0]).tolist() == pytest.approx([5.0, 3.0])
    # strong regularization shrinks to the global mean
    shrunk = UserItemBias(train, reg_u=1e9, reg_i=1e9)
    assert shrunk.predict_pairs([0], [0])[0] == pytest.approx(13 / 4)


def _surprise_baseline_als(ratings, n_users, n_items, reg_u=15.0, reg_i=10.0, n_epochs=10):
    """Surprise's BaselineOnly ("als", its default) as its documentation states it, one rating at a time:
    each epoch, every item's bias from the current user biases, then every user's from the new item biases."""
    mean = sum(r for _, _, r in ratings) / len(ratings)
    by_item = {i: [(u, r) for u, j, r in ratings if j == i] for i in range(n_items)}
    by_user = {u: [(i, r) for v, i, r in ratings if v == u] for u in range(n_users)}
    bu, bi = [0.0] * n_users, [0.0] * n_items
    for _ in range(n_epochs):
        for i, rated in by_item.items():
            bi[i] = sum(r - mean - bu[u] for u, r in rated) / (reg_i + len(rated))
        for u, rated in by_user.items():
            bu[u] = sum(r - mean - bi[i] for i, r in rated) / (reg_u + len(rated))
    return mean, bu, bi


def test_user_item_bias_is_surprises_baseline_only_with_its_defaults():
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((30, 12)) < 0.3, rng.integers(1, 6, (30, 12)), 0).astype(np.float32)
    dense[:, 11] = 0  # an item nobody rated keeps bias 0 (the prediction is mu + b_u)
    train = sp.csr_matrix(dense)
    ratings = [(u, i, float(dense[u, i])) for u, i in zip(*np.nonzero(dense))]
    mean, bu, bi = _surprise_baseline_als(ratings, 30, 12)
    fitted = UserItemBias(train)
    assert fitted.mean == pytest.approx(mean, abs=1e-12)
    np.testing.assert_allclose(fitted.user_bias, bu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fitted.item_bias, bi, rtol=0, atol=1e-12)
    assert fitted.item_bias[11] == 0.0
    users, items = np.meshgrid(np.arange(30), np.arange(12), indexing="ij")
    expected = mean + np.array(bu)[users.ravel()] + np.array(bi)[items.ravel()]
    np.testing.assert_allclose(fitted.predict_pairs(users.ravel(), items.ravel()), expected, rtol=1e-6)
    # the old regularization (reg_u 10, reg_i 25) is a different model: the test can tell them apart
    assert not np.allclose(UserItemBias(train, reg_u=10.0, reg_i=25.0).item_bias, bi, atol=1e-3)


def test_beaten_by_uses_rmse_for_rating_models_and_hit_rate_for_interaction_models():
    model = {"test": {"rmse": 0.9, "hr@10": 0.3}}
    baselines = {"global_mean": {"test": {"rmse": 1.1, "hr@10": 0.0}},
                 "user_item_bias": {"test": {"rmse": 0.85, "hr@10": 0.1}},
                 "most_popular": {"test": {"hr@10": 0.4}}}
    assert beaten_by(model, baselines, rating_model=True) == ["user_item_bias"]
    assert beaten_by({"test": {"hr@10": 0.3}}, baselines, rating_model=False) == ["most_popular"]


def test_top_k_lists_of_rating_models_are_compared_too():
    baselines = {"user_item_bias": {"test": {"rmse": 0.95, "recall@10": 0.02}},
                 "most_popular": {"test": {"recall@10": 0.05}}}
    model = {"test": {"rmse": 0.9, "recall@10": 0.03}}
    assert beaten_by(model, baselines, rating_model=True) == []
    assert beaten_by(model, baselines, rating_model=False) == ["most_popular"]
    assert beaten_by({"test": {"rmse": 0.9}}, baselines, rating_model=False) == []


def test_the_global_mean_has_no_ranking_and_never_ranks_better():
    """All its scores tie: HR/NDCG/Recall would measure the tie-break on item column, not a ranking."""
    train = sp.csr_matrix(np.array([[5, 0, 0, 4], [0, 0, 3, 0], [1, 0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    data = SimpleNamespace(train=train, valid=sp.csr_matrix((3, 4), dtype=np.float32), test=test,
                           meta={}, negatives=(np.arange(3), np.array([[2], [1], [2]])))
    tied = GlobalMean(train)
    assert not tied.ranks and ItemMean(train).ranks and MostPopular(train).ranks
    # ranked anyway, the tie-break puts column 0 first: user 1's held-out item 0 is "hit" by a constant
    assert evaluate_predictor(tied, data, k=1, recall_users=10)["test"]["recall@1"] > 0
    metrics = evaluate_predictor(tied, data, k=1, recall_users=10, ranking=False)["test"]
    assert metrics["hr@1"] is None and metrics["ndcg@1"] is None and metrics["recall@1"] is None
    assert metrics["rmse"] > 0  # still a rating baseline
    model = {"test": {"rmse": 0.9, "hr@1": 0.0, "recall@1": 0.0}}
    baselines = {"global_mean": {"test": {"rmse": 0.8, **{k: v for k, v in metrics.items() if k != "rmse"}}}}
    assert beaten_by(model, baselines, rating_model=True) == ["global_mean"]  # on RMSE it counts
    assert beaten_by(model, baselines, rating_model=False) == []              # on ranking it has none


def test_row_batch_matches_scipy_slicing_and_negatives_avoid_seen_items():
    m = sp.random(50, 30, 0.2, format="csr", dtype=np.float32, random_state=3)
    m.sort_indices()
    rows = np.array([7, 0, 49, 7, 12])
    batch = row_batch(m, rows)
    assert np.array_equal(batch.dense(30).numpy(), m[rows].toarray())
    negatives = sample_negatives(m, np.arange(50), 20, np.random.default_rng(0))
    seen = m.toarray() != 0
    assert negatives.shape == (50, 20)
    assert not seen[np.repeat(np.arange(50), 20), negatives.reshape(-1)].any()


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    split = make_rating_split(root / "N3M", n_users=300, n_items=80, n_ratings=12_000)
    run = root / "run"
    train(split.path, run, "autoencoder", {"epochs": 5, "layers": [32, 16], "dropout": 0.2}, QUICK)
    return split, run


def test_recommendations_exclude_every_rated_item_and_come_with_titles(ae_run):
    split, run = ae_run
    path = recommend(run, k=5)
    table = pl.read_parquet(path)
    assert table.columns == ["user_id", "rank", "item_id", "title", "score"]
    data = load_split_data(split.path)
    known = (data.train + data.valid + data.test).tocsr()
    row_of = {int(u): r for r, u in enumerate(data.user_ids)}
    col_of = {int(i): c for c, i in enumerate(data.item_ids)}
    rated = {(row_of[u], col_of[i]) for u, i in zip(table["user_id"], table["item_id"])
             if known[row_of[u], col_of[i]] != 0}
    assert not rated
    unrated = {int(u): data.train.shape[1] - known[row_of[int(u)]].nnz for u in table["user_id"].unique()}
    counts = dict(table.group_by("user_id").len().iter_rows())
    assert counts == {u: min(5, n) for u, n in unrated.items()}  # heavy raters may have < 5 unrated items
    assert len(counts) == int((np.diff(data.train.indptr) > 0).sum())
    first = table.filter(pl.col("user_id") == table["user_id"][0])
    assert first["rank"].to_list() == [1, 2, 3, 4, 5]
    assert first["score"].is_sorted(descending=True)
    assert first["title"][0] == f"Movie {first['item_id'][0]}"


def test_new_user_is_scored_by_feeding_their_ratings_through_the_autoencoder(ae_run):
    split, run = ae_run
    _, data, estimator = load_run(run)
    row = 4
    start, end = data.train.indptr[row], data.train.indptr[row + 1]
    ratings = {int(data.item_ids[c]): float(v)
               for c, v in zip(data.train.indices[start:end], data.train.data[start:end])}
    table = recommend_for_ratings(run, ratings, k=5)
    assert len(table) == 5 and not set(table["item_id"].to_list()) & set(ratings)
    # the same ratings as a known user's training row give that user's scores
    expected = estimator.score_rows(np.array([row]))[0]
    expected[data.train.indices[start:end]] = -np.inf
    assert table["item_id"].to_list() == data.item_ids[top_k(expected[None, :], 5)[0]].tolist()
    np.testing.assert_allclose(table["score"].to_numpy(), np.sort(expected)[::-1][:5], rtol=1e-5)
    with pytest.raises(RecsysError, match="not in the catalogue"):
        recommend_for_ratings(run, {999_999: 4.0})


def test_new_user_needs_a_model_that_folds_in(ae_run, tmp_path):
    split, _ = ae_run
    train(split.path, tmp_path / "mlp", "mlp", {"epochs": 1}, QUICK)  # MF folds in since the loop's port
    with pytest.raises(RecsysError, match="cannot score a user absent from training"):
        recommend_for_ratings(tmp_path / "mlp", {1: 5.0})


# --------------------------------------------------------------------------- errors per bucket

def _bucket_of_count(count: int) -> str:
    """The user bucket of a training-rating count, written out as the issue states it."""
    if count == 0:
        return "0"
    if count <= 5:
        return "1-5"
    if count <= 20:
        return "6-20"
    if count <= 100:
        return "21-100"
    return ">100"


def _by_hand(train: np.ndarray, held: np.ndarray, table: np.ndarray, clip=(1.0, 5.0)) -> dict:
    """Per bucket: [ratings, set of users, sum of squared errors], one held-out rating at a time."""
    out = {label: [0, set(), 0.0] for label in ("0", "1-5", "6-20", "21-100", ">100", "new items")}
    for u, i in zip(*np.nonzero(held)):
        error = (min(max(float(table[u, i]), clip[0]), clip[1]) - float(held[u, i])) ** 2
        labels = [_bucket_of_count(int(np.count_nonzero(train[u])))]
        if not np.count_nonzero(train[:, i]):
            labels.append("new items")
        for label in labels:
            out[label][0] += 1
            out[label][1].add(int(u))
            out[label][2] += error
    return out


def _tiny_bucket_split():
    """9 users whose training rows hold 0, 1, 5, 6, 20, 21, 100, 101 and 130 ratings (every edge of every
    bucket), 140 items of which the last 5 have no training rating; held-out pairs on old and new items."""
    rng = np.random.default_rng(17)
    n_items, new = 140, 5
    counts = [0, 1, 5, 6, 20, 21, 100, 101, 130]
    train = np.zeros((len(counts), n_items), np.float32)
    for u, count in enumerate(counts):
        train[u, rng.choice(n_items - new, count, replace=False)] = rng.integers(1, 6, count)
    valid, test = np.zeros_like(train), np.zeros_like(train)
    for u in range(len(counts)):
        free = np.flatnonzero(train[u] == 0)
        picked = rng.choice(free, 6, replace=False)
        if u in (0, 3, 7):
            picked[0] = n_items - 1 - u % 5  # a new item for some users (user 0: new user and new item)
        valid[u, picked[:2]] = rng.integers(1, 6, 2)
        test[u, picked[2:]] = rng.integers(1, 6, 4)
    # scores beyond the rating range, to check they are clipped before the error
    table = rng.uniform(0.0, 6.5, train.shape).astype(np.float32)
    return train, valid, test, table


def test_errors_per_bucket_match_a_rating_by_rating_count():
    train, valid, test, table = _tiny_bucket_split()
    data = SimpleNamespace(train=sp.csr_matrix(train), valid=sp.csr_matrix(valid), test=sp.csr_matrix(test),
                           meta={"rating_min": 1.0, "rating_max": 5.0}, negatives=None)
    result = evaluate_predictor(_Table(table), data, k=10, recall_users=0)
    for part, held in (("valid", valid), ("test", test)):
        expected = _by_hand(train, held, table)
        rows = {row["bucket"]: row for row in result["buckets"][part]}
        assert list(rows) == ["0", "1-5", "6-20", "21-100", ">100", "new items"]
        for label, (n, users, squared) in expected.items():
            assert rows[label]["ratings"] == n, (part, label)
            assert rows[label]["users"] == len(users), (part, label)
            assert rows[label]["rmse"] == pytest.approx(math.sqrt(squared / n), rel=1e-12), (part, label)
            assert "absent" not in rows[label] and "hr@10" not in rows[label]
        # each held-out rating is in one user bucket; the overall RMSE is theirs pooled
        user_rows = [rows[label] for label in ("0", "1-5", "6-20", "21-100", ">100")]
        assert sum(r["ratings"] for r in user_rows) == int(np.count_nonzero(held))
        pooled = sum(r["ratings"] * r["rmse"] ** 2 for r in user_rows) / int(np.count_nonzero(held))
        assert math.sqrt(pooled) == pytest.approx(result[part]["rmse"], rel=1e-12)
    # the boundaries: 5 ratings is 1-5, 6 is 6-20, 100 is 21-100, 101 is >100 (two users each there)
    assert {r["bucket"]: r["users"] for r in result["buckets"]["test"]} == {
        "0": 1, "1-5": 2, "6-20": 2, "21-100": 2, ">100": 2, "new items": 4}
    assert {r["bucket"]: r["ratings"] for r in result["buckets"]["valid"]}["new items"] == 4


def test_an_empty_bucket_is_reported_absent_not_filled_in():
    train, valid, test, table = _tiny_bucket_split()
    test[:, -5:] = 0  # no held-out rating of a new item left in test, nor of the user without training
    test[0] = 0
    data = SimpleNamespace(train=sp.csr_matrix(train), valid=sp.csr_matrix((train.shape), dtype=np.float32),
                           test=sp.csr_matrix(test), meta={}, negatives=None)
    result = evaluate_predictor(ItemMean(data.train), data, k=10, recall_users=0)
    assert set(result["buckets"]) == {"test"}  # no valid part, no valid buckets
    rows = {row["bucket"]: row for row in result["buckets"]["test"]}
    for label in ("new items", "0"):
        assert rows[label]["ratings"] == 0 and rows[label]["users"] == 0 and rows[label]["rmse"] is None
        assert "drop" in rows[label]["absent"]
    assert all("absent" not in rows[label] for label in ("1-5", "6-20", "21-100", ">100"))


def test_hit_rate_per_bucket_with_sampled_negatives():
    train, _, _, table = _tiny_bucket_split()
    n_users, n_items = train.shape
    rng = np.random.default_rng(5)
    test = np.zeros_like(train)
    negatives = []
    for u in range(n_users):
        free = np.flatnonzero(train[u] == 0)
        if u in (2, 7):
            free = np.r_[n_items - 1, free[free < n_items - 5]]  # the held-out item is new for 2 and 7
        test[u, free[0]] = 4.0
        negatives.append(rng.choice(free[1:], 4, replace=False))
    rows = np.arange(n_users)
    data = SimpleNamespace(train=sp.csr_matrix(train), valid=sp.csr_matrix(train.shape, dtype=np.float32),
                           test=sp.csr_matrix(test), meta={}, negatives=(rows, np.array(negatives)))
    k = 2
    result = evaluate_predictor(_Table(table), data, k=k, recall_users=0, rating_model=False)
    expected: dict[str, list[int]] = {}
    for u in range(n_users):
        positive = int(np.flatnonzero(test[u])[0])
        hit = int(np.sum(table[u, negatives[u]] >= table[u, positive]) < k)
        labels = [_bucket_of_count(int(np.count_nonzero(train[u])))]
        labels += ["new items"] if not np.count_nonzero(train[:, positive]) else []
        for label in labels:
            expected.setdefault(label, []).append(hit)
    got = {row["bucket"]: row for row in result["buckets"]["test"]}
    for label, hits in expected.items():
        assert got[label]["ranked_users"] == len(hits)
        assert got[label][f"hr@{k}"] == pytest.approx(np.mean(hits))
        assert "rmse" not in got[label]  # a ranking model: no rating metrics measured
    assert got["new items"]["ranked_users"] == 2
    # a predictor without a ranking (all scores tie) gets the counts and no HR
    tied = evaluate_predictor(GlobalMean(data.train), data, k=k, recall_users=0, ranking=False)
    assert all(row[f"hr@{k}"] is None for row in tied["buckets"]["test"])
    assert [row["ranked_users"] for row in tied["buckets"]["test"]] == \
        [row["ranked_users"] for row in result["buckets"]["test"]]


def _pooled(rows: list[dict], count: str, metric: str, squared: bool) -> float:
    """The whole part's metric from its user buckets (each held-out pair is in exactly one)."""
    user_rows = [r for r in rows if r["bucket"] != "new items" and r[count]]
    total = sum(r[count] for r in user_rows)
    value = sum(r[count] * (r[metric] ** 2 if squared else r[metric]) for r in user_rows) / total
    return math.sqrt(value) if squared else value


def test_a_trained_runs_metrics_json_has_errors_per_bucket_for_the_model_and_every_baseline(ae_run):
    split, run = ae_run
    on_disk = json.loads((run / "metrics.json").read_text())
    data = load_split_data(split.path)
    counts = np.diff(data.train.indptr)
    for who, metrics in [("autoencoder", on_disk)] + list(on_disk["baselines"].items()):
        if who == "most_popular":  # no rating metrics, and the split has no sampled negatives
            assert metrics["buckets"] == {}
            continue
        assert set(metrics["buckets"]) == {"valid", "test"}, who
        for part in ("valid", "test"):
            rows = metrics["buckets"][part]
            assert [r["bucket"] for r in rows] == ["0", "1-5", "6-20", "21-100", ">100", "new items"]
            assert sum(r["ratings"] for r in rows[:5]) == getattr(data, part).nnz
            assert _pooled(rows, "ratings", "rmse", squared=True) == pytest.approx(metrics[part]["rmse"], rel=1e-9)
            held_rows = np.repeat(np.arange(len(counts)), np.diff(getattr(data, part).indptr))
            assert rows[4]["ratings"] == int(np.sum(counts[held_rows] > 100)), (who, part)
            # the generated split keeps no held-out rating of an item unseen in train: absent, not invented
            assert rows[5]["ratings"] == 0 and rows[5]["rmse"] is None and "absent" in rows[5]
    # the other fields of metrics.json are as they were
    assert set(on_disk["test"]) == {"rmse", "mae", "n"}
    assert set(on_disk["baselines"]["user_item_bias"]) == {"valid", "test", "buckets"}


def test_a_ranking_runs_metrics_json_has_hit_rate_per_bucket(tmp_path):
    split = make_leave_one_out_split(tmp_path / "loo", n_users=200, n_items=250, mean_per_user=20)
    metrics = train(split.path, tmp_path / "run", "ease", None, QUICK)
    rows = {r["bucket"]: r for r in metrics["buckets"]["test"]}
    assert "valid" not in metrics["buckets"]  # the fixture has no valid part
    assert sum(r["ranked_users"] for b, r in rows.items() if b != "new items") == metrics["test"]["n_ranked"]
    assert _pooled(list(rows.values()), "ranked_users", "hr@10", squared=False) == \
        pytest.approx(metrics["test"]["hr@10"], rel=1e-9)
    assert all("rmse" not in r for r in rows.values())  # a ranking model
    popular = {r["bucket"]: r for r in metrics["baselines"]["most_popular"]["buckets"]["test"]}
    assert [r["ranked_users"] for r in popular.values()] == [r["ranked_users"] for r in rows.values()]
    assert all(r["hr@10"] is None for r in metrics["baselines"]["global_mean"]["buckets"]["test"])


def test_a_diverged_predictors_buckets_are_written_as_null_not_nan():
    train, valid, test, table = _tiny_bucket_split()
    table[:, :] = np.nan
    data = SimpleNamespace(train=sp.csr_matrix(train), valid=sp.csr_matrix(valid), test=sp.csr_matrix(test),
                           meta={}, negatives=None)
    rows = evaluate_predictor(_Table(table), data, k=10, recall_users=0)["buckets"]["test"]
    assert [r["rmse"] for r in rows] == [None] * 6 and rows[1]["ratings"] > 0
    json.dumps(rows, allow_nan=False)  # valid JSON
