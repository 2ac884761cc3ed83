"""Exact pruned top-K of the tower models (issue 21 part 2): ``TowerBounds`` bounds every item's score, and
``recsys_core.ranking.best_items`` scores exactly only the items that can reach a row's k best, so its answer
(items, order, ties, scores) is the whole catalogue's."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn
from train_fixtures import make_rating_split

from recsys_core import models, ranking
from recsys_core.interactions import load_split_data
from recsys_core.models.mlp import EmbeddingMLP, TowerBounds
from recsys_core.models.ncf import NCF
from recsys_core.ranking import BoundedScores, best_items, pruned_scores

N_USERS, N_ITEMS = 40, 600


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for param in model.parameters():
        nn.init.normal_(param, std=0.5)
    return model.eval()


MODELS = {
    "mlp": lambda: EmbeddingMLP(N_USERS, N_ITEMS, 8, (16, 8), 0.3, 3.5),
    "mlp-deep": lambda: EmbeddingMLP(N_USERS, N_ITEMS, 8, (32, 16, 8), 0.0, 3.5),
    "ncf-mlp": lambda: NCF(N_USERS, N_ITEMS, "mlp", 8, (16, 8), 0.2),
    "neumf": lambda: NCF(N_USERS, N_ITEMS, "neumf", 8, (16, 8)),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_bounds_hold_every_score_of_every_item(name):
    model = _randomized(MODELS[name]())
    users = torch.arange(N_USERS)
    with torch.no_grad():
        lower, upper, exact = model.score_bounds(users)
        grid = model.score_all(users)
        rows, cols = torch.meshgrid(torch.arange(N_USERS), torch.arange(N_ITEMS), indexing="ij")
        pairs = exact(rows.reshape(-1), cols.reshape(-1)).view(N_USERS, N_ITEMS)
    assert torch.allclose(pairs, grid, atol=1e-5)  # the exact pairs are the grid's scores
    assert bool((lower <= grid).all()) and bool((grid <= upper).all())
    assert bool((lower < upper).all())


def test_the_bounds_are_tight_where_the_clusters_are():
    """Items that are copies of a few prototypes sit on their cluster centres: the bounds shrink to the margin."""
    model = _randomized(EmbeddingMLP(N_USERS, N_ITEMS, 8, (16, 8), 0.0, 3.5))
    with torch.no_grad():
        model.item_emb.weight.copy_(model.item_emb.weight[torch.arange(N_ITEMS) % 8])
        index = TowerBounds(model.tower, model.item_emb.weight, model.head.weight[0])
        lower, upper = index.bounds(index.user_half(model.user_emb(torch.arange(N_USERS))))
    assert float((upper - lower).max()) < 0.01


class _Grid:
    """The same predictor without its bounds: best_items scores the whole catalogue."""

    def __init__(self, predictor):
        self.predictor = predictor

    def score_rows_tensor(self, rows):
        return self.predictor.score_rows_tensor(rows)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    made = make_rating_split(tmp_path_factory.mktemp("pruned") / "N3M", n_users=120, n_items=N_ITEMS,
                             n_ratings=9_000)
    return load_split_data(made.path)


@pytest.mark.parametrize("name", ["mlp", "ncf-mlp", "neumf"])
def test_pruned_top_k_is_the_whole_catalogues(split, name, monkeypatch):
    """Items, order, scores and ties as the grid's, with the training ratings excluded, for k below and above
    what some rows have left (a user who rated all but three items); blocks of 50 rows bounded 16 at a time."""
    monkeypatch.setattr(ranking, "PRUNE_BLOCK", 16)
    estimator = models.create(name)
    estimator.bind(split)
    model = _randomized(estimator.model, seed=1)
    with torch.no_grad():  # ties at every place: items 1 and 2 copy item 0, items 301-305 copy item 300
        for table in [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == N_ITEMS]:
            table.weight[1:3] = table.weight[0]
            table.weight[301:306] = table.weight[300]
    exclude = split.train.tolil()
    exclude[7, :] = 1
    exclude[7, [5, 50, 500]] = 0
    exclude = sp.csr_matrix(exclude)
    assert isinstance(estimator, BoundedScores)
    rows = np.arange(split.train.shape[0])
    for k in (1, 5, 20):
        want_cols, want_values = best_items(_Grid(estimator), rows, k, exclude=exclude, block=50)
        cols, values = best_items(estimator, rows, k, exclude=exclude, block=50)
        np.testing.assert_array_equal(cols, want_cols)
        np.testing.assert_allclose(values, want_values, rtol=1e-6, atol=1e-6)  # float32 rounding of one GEMM or another
        assert set(cols[7, :min(k, 3)]) <= {5, 50, 500}
        assert np.isneginf(values[7, 3:]).all()  # what the row excludes comes last
    top = best_items(estimator, rows, 20, exclude=exclude, block=50)[0]
    assert any({1, 2} <= set(row) for row in top.tolist())  # the copies tie (the rule: lower column first)


def test_pruning_scores_a_small_share_of_the_pairs(split):
    """With item biases that spread the scores, a row's top 10 is decided by its bounds for most items."""
    estimator = models.create("mlp")
    estimator.bind(split)
    model = estimator.model
    with torch.no_grad():
        model.item_bias.weight.copy_(torch.linspace(-2, 2, N_ITEMS)[torch.randperm(N_ITEMS)][:, None])
    rows = np.arange(100)
    bounded = estimator.score_bounds(rows)
    assert bounded is not None
    pruned = pruned_scores(bounded, rows, 10, split.train)
    assert pruned is not None
    scores, n_pairs = pruned
    assert n_pairs < 0.1 * len(rows) * N_ITEMS
    assert int(torch.isfinite(scores).sum()) == n_pairs


def test_bounds_follow_the_weights(split):
    """The bounds are built once for a set of weights and again after a step changed them."""
    estimator = models.create("ncf-mlp")
    estimator.bind(split)
    rows = np.arange(10)
    first = estimator.score_bounds(rows)
    assert first is not None
    with torch.no_grad():
        estimator.model.mlp_item.weight.mul_(3.0)
    second = estimator.score_bounds(rows)
    assert second is not None
    exact = estimator.score_rows_tensor(rows)
    assert bool((second.lower <= exact).all()) and bool((exact <= second.upper).all())
    assert not torch.equal(first.upper, second.upper)


def test_models_without_a_tower_give_no_bounds(split):
    for name in ("gmf", "mf"):
        estimator = models.create(name)
        estimator.bind(split)
        assert estimator.score_bounds(np.arange(5)) is None
    estimator = models.create("mlp", hidden=())
    estimator.bind(split)
    assert estimator.score_bounds(np.arange(5)) is None


def test_models_without_bounds_score_a_block_at_once(split, monkeypatch):
    """A pair model without bounds (MF) keeps scoring each block of best_items whole, not part by part."""
    monkeypatch.setattr(ranking, "PRUNE_BLOCK", 16)
    estimator = models.create("mf")
    estimator.bind(split)
    calls = []
    original = estimator.score_rows_tensor
    monkeypatch.setattr(estimator, "score_rows_tensor", lambda rows: calls.append(len(rows)) or original(rows))
    best_items(estimator, np.arange(100), 5, exclude=split.train, block=100)
    assert calls == [100]
