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
