"""The interface every predictor keeps, models and baselines alike (as implicit's RecommenderBaseTestMixin):
fit on a tiny split, predict and score with the right shapes and consistently, recommend only unrated
items, and come back identical from its saved state. A model's test is then a few lines::

    class TestEASE(ModelContract):
        model = "ease"
        options = {"reg": 50.0}
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import make_leave_one_out_split

from recsys_core import models
from recsys_core.errors import RecsysError
from recsys_core.interactions import load_split_data
from recsys_core.predictor import FoldIn, ItemVectors, LinearScores, Predictor, TensorScores, top_items

# Tiny: every model fits in seconds. Leave-one-out with sampled negatives, as the ranking models meet it.
FIXTURE = dict(n_users=120, n_items=90, mean_per_user=20, n_negatives=30, seed=5)


def round_trip(state: dict) -> dict:
    """The state as it comes back from model.pt: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


class PredictorContract:
    """Subclasses say how to fit a predictor (``fit``) and how to restore one from its state (``reload``)."""

    def fit(self, data) -> Predictor:
        raise NotImplementedError

    def reload(self, fitted, data) -> Predictor:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, tmp_path_factory):
        torch.set_num_threads(2)
        split = make_leave_one_out_split(Path(tmp_path_factory.mktemp("contract")) / "loo", **FIXTURE)
        return load_split_data(split.path)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, data):
        return cls().fit(data)

    def test_is_a_predictor(self, fitted):
        assert isinstance(fitted, Predictor)
        assert isinstance(fitted.rating_model, bool)

    def test_predict_pairs_gives_one_finite_value_per_pair(self, fitted, data):
        rows = np.array([3, 0, 3, 119, 57], np.int64)
        cols = np.array([1, 89, 1, 0, 44], np.int64)
        prediction = np.asarray(fitted.predict_pairs(rows, cols))
        assert prediction.shape == (5,) and np.isfinite(prediction).all()
        assert prediction[0] == pytest.approx(prediction[2], abs=1e-6)  # the same pair, the same answer
        assert len(fitted.predict_pairs(np.empty(0, np.int64), np.empty(0, np.int64))) == 0

    def test_score_rows_scores_every_item_as_predict_pairs_does(self, fitted, data):
        n_items = data.train.shape[1]
        rows = np.array([7, 2, 7], np.int64)
        scores = np.asarray(fitted.score_rows(rows))
        assert scores.shape == (3, n_items) and np.isfinite(scores).all()
        pairs = fitted.predict_pairs(np.repeat(rows, n_items), np.tile(np.arange(n_items), 3))
        np.testing.assert_allclose(pairs.reshape(3, n_items), scores, rtol=1e-4, atol=1e-4)

    def test_recommendations_exclude_the_items_a_user_rated(self, fitted, data):
        rows = np.arange(data.train.shape[0], dtype=np.int64)
        top, scores = top_items(fitted, rows, 10, exclude=data.train)
        assert top.shape == (len(rows), 10)
        for row in rows:
            rated = set(data.train.indices[data.train.indptr[row]:data.train.indptr[row + 1]].tolist())
            assert not rated & set(top[row].tolist()), row
        assert np.all(np.diff(np.take_along_axis(scores, top, axis=1), axis=1) <= 0)  # best first

    def test_capabilities_answer_as_the_predictor_does(self, fitted, data):
        """The optional capabilities, where the predictor has them: item vectors one per item column;
        linear scores reproduce ``score_rows``; fold-in scores every item (or refuses in one sentence)."""
        n_items = data.train.shape[1]
        if isinstance(fitted, ItemVectors):
            vectors = np.asarray(fitted.item_vectors())
            assert vectors.ndim == 2 and vectors.shape[0] == n_items and np.isfinite(vectors).all()
        linear = fitted.linear_scores() if isinstance(fitted, LinearScores) else None
        if linear is not None:
            users, weight, bias, offset = linear
            rows = np.array([7, 2, 7], np.int64)
            np.testing.assert_allclose(users[rows] @ weight + bias + offset[rows, None], fitted.score_rows(rows),
                                       rtol=1e-4, atol=1e-4)
        if isinstance(fitted, FoldIn):  # what folds_in() declares is what fold_in does
            lo, hi = data.train.indptr[3], data.train.indptr[4]
            if fitted.folds_in():
                scores = np.asarray(fitted.fold_in(data.train.indices[lo:hi], data.train.data[lo:hi]))
                assert scores.shape == (n_items,) and np.isfinite(scores).all()
            else:  # a configuration of the model without the capability (I-AutoRec)
                with pytest.raises(RecsysError, match="cannot"):
                    fitted.fold_in(data.train.indices[lo:hi], data.train.data[lo:hi])

    def test_saved_state_restores_the_same_predictor(self, fitted, data):
        restored = self.reload(fitted, data)
        rows = np.arange(0, data.train.shape[0], 7, dtype=np.int64)
        np.testing.assert_array_equal(restored.score_rows(rows), fitted.score_rows(rows))
        cols = (rows * 13) % data.train.shape[1]
        np.testing.assert_array_equal(restored.predict_pairs(rows, cols), fitted.predict_pairs(rows, cols))


class ModelContract(PredictorContract):
    """A registered model: ``model`` names it, ``options`` are its options for the tiny fixture."""

    model: str = ""
    options: dict = {}

    def fit(self, data):
        estimator = models.create(self.model, device="cpu", **self.options)
        estimator.fit(data)
        return estimator

    def reload(self, fitted, data):
        registration = models.get(self.model)
        return registration.create(fitted.options, device="cpu").load(round_trip(fitted.state_dict()), data)

    def test_scores_rows_in_torch(self, fitted, data):
        """Ranking scores every trained model as a tensor on its device (a baseline's rows are copied)."""
        assert isinstance(fitted, TensorScores)
        rows = np.array([7, 2, 7], np.int64)
        np.testing.assert_allclose(fitted.score_rows_tensor(rows).cpu().numpy(), fitted.score_rows(rows),
                                   rtol=1e-5, atol=1e-5)

    def test_same_options_fit_the_same_model(self, fitted, data):
        again = self.fit(data)
        rows = np.arange(0, data.train.shape[0], 11, dtype=np.int64)
        np.testing.assert_allclose(again.score_rows(rows), fitted.score_rows(rows), rtol=1e-6, atol=1e-6)


class BaselineContract(PredictorContract):
    """A baseline of ``recsys_core.baselines``: ``baseline`` is its class."""

    baseline: type = object

    def fit(self, data):
        return self.baseline(data.train)

    def reload(self, fitted, data):
        return self.baseline.from_state(round_trip(fitted.state_dict()))
