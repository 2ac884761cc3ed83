"""Item-item kNN on baseline residuals: the predictor contract, and the similarities and a prediction against
Surprise's definitions computed pair by pair."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from predictor_contract import ModelContract

from recsys_core import models
from recsys_core.baselines import UserItemBias
from recsys_core.models.knn import pearson_baseline


class TestItemKNN(ModelContract):
    model, options = "knn-item", {"neighbours": 5}


def _ratings(seed=0, users=40, items=15, density=0.4):
    rng = np.random.default_rng(seed)
    mask = rng.random((users, items)) < density
    values = rng.integers(1, 6, (users, items)).astype(np.float32)
    return sp.csr_matrix(np.where(mask, values, 0).astype(np.float32))


def test_similarities_are_surprise_pearson_baseline_pair_by_pair():
    train = _ratings()
    baseline = UserItemBias(train)
    dense, mask = train.toarray(), train.toarray() > 0
    resid = np.where(mask, dense - baseline.mean - baseline.user_bias[:, None] - baseline.item_bias[None, :], 0)
    sim = pearson_baseline(train, baseline, shrinkage=7.0, min_support=3, block=4)  # several blocks
    for i in range(train.shape[1]):
        for j in range(train.shape[1]):
            both = mask[:, i] & mask[:, j]
            n = both.sum()
            num = (resid[both, i] * resid[both, j]).sum()
            den = np.sqrt((resid[both, i] ** 2).sum() * (resid[both, j] ** 2).sum())
            expected = 1.0 if i == j else (0.0 if n < 3 or den == 0 else num / den * (n - 1) / (n - 1 + 7.0))
            assert abs(sim[i, j] - expected) < 1e-5, (i, j, sim[i, j], expected)


def test_prediction_is_the_baseline_plus_the_k_nearest_rated_residuals():
    train = _ratings(seed=1)
    data = type("Data", (), {"train": train, "meta": {}})()
    estimator = models.create("knn-item", neighbours=3, shrinkage=0.0, damping=0.7)
    estimator.fit(data)
    sim, b = estimator.sim_array, estimator
    for user, item in [(0, 2), (5, 7), (11, 0), (30, 14)]:
        rated = train[user].indices
        resid = train[user].data - b.mean - b.user_bias[user] - b.item_bias[rated]
        best = sorted(zip(sim[item, rated], resid), key=lambda t: -t[0])[:3]
        positive = [(s, r) for s, r in best if s > 0]
        expected = b.mean + b.user_bias[user] + b.item_bias[item]
        if positive:
            expected += sum(s * r for s, r in positive) / (sum(s for s, _ in positive) + 0.7)
        got = estimator.predict_pairs(np.array([user]), np.array([item]))[0]
        assert abs(got - expected) < 1e-4, (user, item, got, expected)


def test_service_answers_similar_items_from_the_similarities(tmp_path):
    """The service's similar items of a knn-item run are its most similar items by its own similarities."""
    from train_fixtures import make_rating_split

    from recsys_core.records import ChampionPointer
    from recsys_core.serving.model_access import ServableModel
    from recsys_core.serving.service import Champion
    from recsys_core.settings import RunSettings
    from recsys_core.train import train

    split = make_rating_split(tmp_path / "split", n_users=150, n_items=40, n_ratings=3000)
    metrics = train(split.path, tmp_path / "run", "knn-item", None, RunSettings(recall_users=50))
    assert "recall@10" in metrics["test"]  # neighbours is its own option: k stays the lists' cut-off
    model = ServableModel(tmp_path / "run", "cpu")
    pointer = ChampionPointer.from_json({"name": "knn", "version": 1, "run_dir": str(tmp_path / "run")})
    champion = Champion("knn", pointer, model, "now", 0.0)
    answer = champion.similar_items(int(model.item_ids[3]), 5)
    row = model.estimator.sim_array[3].copy()
    row[3] = -np.inf
    expected = np.argsort(-row, kind="stable")[:5]
    assert [item["item_id"] for item in answer["items"]] == model.item_ids[expected].tolist()


def test_neighbours_tied_at_the_kth_place_share_it_whatever_the_order_of_the_ratings():
    estimator = models.create("knn-item", neighbours=2, damping=0.0)
    sim = np.eye(5, dtype=np.float32)
    sim[0, 1:] = sim[1:, 0] = [0.9, 0.5, 0.5, 0.5]  # item 0: one clear neighbour, then three tied for 2nd place
    estimator.sim, estimator.sim_array = torch.from_numpy(sim), sim
    resid = np.array([1.0, 0.3, -0.6, 1.2], np.float32)
    expected = (0.9 * 1.0 + 0.5 * (0.3 - 0.6 + 1.2) / 3) / (0.9 + 0.5)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        rated = np.array([1, 2, 3, 4])[order]
        got = estimator._adjustment(rated, resid[order], None).numpy()
        assert abs(got[0] - expected) < 1e-6, (order, got[0], expected)
        assert abs(estimator._adjustment(rated, resid[order], np.array([0]))[0] - expected) < 1e-6


def _reference_adjustment(sim, k, min_k, damping, rated, resid, targets=None):
    """The numpy scoring of one user before the compiled loops (commit e245528, ``ItemKNN._adjustment``): the
    exact KNNBaseline sums with the tie rule, kept here as what the compiled loops must reproduce."""
    block = np.maximum(sim[rated] if targets is None else sim[np.ix_(rated, targets)], 0.0)
    count = np.count_nonzero(block, axis=0)
    weighted, total = np.vstack([resid, np.ones_like(resid)]) @ block
    crowded = np.flatnonzero(count > k)
    if len(crowded):
        part = np.ascontiguousarray(block[:, crowded].T)
        kth = np.partition(part, len(rated) - k, axis=1)[:, len(rated) - k]
        above, tied = part > kth[:, None], part == kth[:, None]
        n_above = above.sum(1)
        kept = np.where(above, part, 0.0)
        total[crowded] = kept.sum(1) + (k - n_above) * kth
        weighted[crowded] = kept @ resid + (k - n_above) * kth * np.where(tied, resid, 0.0).sum(1) / tied.sum(1)
        count[crowded] = k
    enough = (count >= min_k) & (total > 0)
    return np.where(enough, weighted / np.where(enough, total + np.float32(damping), 1.0), 0.0).astype(np.float32)


def _tied_problem(neighbours, min_k=1, seed=4):
    """A fitted knn-item whose similarities are replaced by coarse random ones (steps of 0.1, not symmetric):
    many ties at the k-th place, users with far more than k positive neighbours and users with none."""
    dense = _ratings(seed=seed, users=60, items=90, density=0.5).toarray()
    dense[0] = 0  # a user without ratings
    dense[1] = 0
    dense[1, 0] = 3.0  # ... and one with a single rating
    train = sp.csr_matrix(dense)
    data = type("Data", (), {"train": train, "meta": {}})()
    estimator = models.create("knn-item", neighbours=neighbours, min_k=min_k, damping=0.3)
    estimator.fit(data)
    rng = np.random.default_rng(seed)
    sim = (np.round(rng.uniform(-0.4, 1.0, (90, 90)) * 10) / 10).astype(np.float32)
    estimator._bind(data, estimator.mean, estimator.user_bias, estimator.item_bias, torch.from_numpy(sim))
    return estimator, train, sim


def _reference_scores(estimator, train, sim, rows):
    c = estimator.options
    out = np.empty((len(rows), sim.shape[0]), np.float32)
    for p, row in enumerate(rows):
        rated, resid = estimator._user(int(row))
        base = (estimator.mean + estimator.user_bias[row] + estimator.item_bias).astype(np.float32)
        adjust = (np.zeros(sim.shape[0], np.float32) if len(rated) == 0 else
                  _reference_adjustment(sim, c.neighbours, c.min_k, c.damping, rated, resid))
        out[p] = base + adjust
    return out


def test_compiled_scores_are_the_numpy_reference_with_ties_and_crowded_columns():
    """Whole rows and pairs of the compiled loops against the numpy scoring they replaced, on a problem with
    ties across the k-th place and users with up to ~8x k positive neighbours (k 1, 3, 5; 40: none crowded)."""
    for neighbours, min_k in [(5, 1), (3, 2), (40, 1), (1, 1)]:
        estimator, train, sim = _tied_problem(neighbours, min_k)
        rows = np.arange(train.shape[0])
        if neighbours < 40:  # the problem has what it is for: ties across the k-th place of crowded columns
            ranked = -np.sort(-np.maximum(sim[estimator._user(5)[0]], 0), axis=0)  # user 5's, down each column
            crowded = ranked[neighbours] > 0
            assert crowded.mean() > 0.5 and (crowded & (ranked[neighbours - 1] == ranked[neighbours])).any()
        expected = _reference_scores(estimator, train, sim, rows)
        got = estimator.score_rows_tensor(rows).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
        # every (user, item) pair, one call: the pair loop gives the row loop's numbers
        users, items = np.repeat(rows, sim.shape[0]), np.tile(np.arange(sim.shape[0]), len(rows))
        np.testing.assert_allclose(estimator.predict_pairs(users, items), expected.ravel(), rtol=0, atol=2e-6)


def test_compiled_scores_keep_the_reference_top_k():
    from recsys_core.ranking import top_k

    estimator, train, sim = _tied_problem(5)
    rows = np.arange(train.shape[0])
    expected = _reference_scores(estimator, train, sim, rows)
    got = estimator.score_rows_tensor(rows).numpy()
    ranked_same = (top_k(got, 10) == top_k(expected, 10)).all(1)
    # scores that differ by float rounding can only swap items whose scores are that close
    for p in np.flatnonzero(~ranked_same):
        a, b = np.sort(got[p])[::-1][:11], np.sort(expected[p])[::-1][:11]
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert ranked_same.mean() > 0.9


def test_compiled_scores_are_the_same_at_any_thread_count_and_counter_width(monkeypatch):
    from recsys_core.models import knn

    estimator, train, sim = _tied_problem(5)
    rows = np.arange(train.shape[0])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = estimator.score_rows_tensor(rows).numpy()
        pairs = estimator.predict_pairs(np.repeat(rows, 9), np.tile(np.arange(0, 90, 10), len(rows)))
        monkeypatch.setattr(knn, "ROW_CHUNK", 7)  # several chunks of users and of pairs, spread over 2 threads
        monkeypatch.setattr(knn, "PAIR_CHUNK", 13)
        torch.set_num_threads(2)
        two = estimator.score_rows_tensor(rows).numpy()
        pairs_two = estimator.predict_pairs(np.repeat(rows, 9), np.tile(np.arange(0, 90, 10), len(rows)))
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(one, two) and np.array_equal(pairs, pairs_two)
    # the int32 counters of users with 32,768 ratings or more give the int16 counters' numbers
    from recsys_core.models.knn import COLUMN_BLOCK, _kernels
    c = estimator.options
    outs = []
    for width in (np.int16, np.int32):
        out = np.zeros((len(rows), sim.shape[0]), np.float32)
        r = estimator.ratings
        _kernels()[0](r.indptr, r.indices, r.residuals, rows, sim, c.neighbours, c.min_k, np.float32(c.damping),
                      COLUMN_BLOCK, np.empty(COLUMN_BLOCK, width), out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
