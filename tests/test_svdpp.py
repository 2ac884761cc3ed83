"""SVD++: the predictor contract, and a folded-in user's implicit part from their rated items."""

from __future__ import annotations

import numpy as np
from predictor_contract import ModelContract

from recsys_core import models


class TestSVDpp(ModelContract):
    model, options = "svdpp", {"dim": 4, "epochs": 2}


def test_fold_in_of_a_known_users_ratings_tracks_their_trained_scores(tmp_path):
    from train_fixtures import make_rating_split

    from recsys_core.interactions import load_split_data

    data = load_split_data(make_rating_split(tmp_path / "split", n_users=200, n_items=60, n_ratings=8000).path)
    estimator = models.create("svdpp", dim=8, epochs=8)
    estimator.fit(data)
    row = 5
    lo, hi = data.train.indptr[row], data.train.indptr[row + 1]
    folded = estimator.fold_in(data.train.indices[lo:hi], data.train.data[lo:hi])
    trained = estimator.score_rows(np.array([row]))[0]
    assert np.corrcoef(folded, trained)[0, 1] > 0.9


def test_the_sparse_tables_take_the_dense_gradient_of_the_rows_a_batch_touches(tmp_path):
    """With ``sparse`` (the default) every table's gradient is row-sparse and, made dense, equals the gradient
    of the same loss with dense tables, the L2 penalty included; the optimizer is the row-wise one."""
    import torch
    from train_fixtures import make_rating_split

    from recsys_core.interactions import load_split_data
    from recsys_core.row_optim import RowAdam
    from recsys_core.training_loop import make_optimizer

    data = load_split_data(make_rating_split(tmp_path / "split", n_users=120, n_items=40, n_ratings=3000).path)
    grads = {}
    for sparse in (True, False):
        estimator = models.create("svdpp", dim=4, batch_size=256, sparse=sparse)
        estimator.bind(data)
        torch.manual_seed(0)
        for p in estimator.model.parameters():
            torch.nn.init.normal_(p, std=0.3)
        batch = next(iter(estimator.batches(np.random.default_rng(0))))
        loss, _ = next(iter(estimator.losses(batch)))
        loss.backward()
        grads[sparse] = {n: p.grad for n, p in estimator.model.named_parameters()}
        optimizer = make_optimizer(estimator.model, estimator.options)
        assert isinstance(getattr(optimizer, "parts", [None])[-1], RowAdam) is sparse
    assert all(g.is_sparse for g in grads[True].values())
    for name, dense in grads[False].items():
        torch.testing.assert_close(grads[True][name].to_dense(), dense, rtol=1e-5, atol=1e-7)
