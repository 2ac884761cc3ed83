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
