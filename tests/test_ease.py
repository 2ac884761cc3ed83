"""EASE: the predictor contract, the closed form by hand, and ranking against most-popular."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from predictor_contract import ModelContract
from train_fixtures import make_leave_one_out_split

from recsys_core import models
from recsys_core.settings import RunSettings
from recsys_core.train import train


class TestEASE(ModelContract):
    model, options = "ease", {"reg": 50.0}


def test_weights_are_steck_closed_form():
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], np.float32))
    data = type("Data", (), {"train": x * 4, "train_by_item": (x * 4).T.tocsr(), "meta": {}})()  # values ignored
    estimator = models.create("ease", reg=2.0)
    estimator.fit(data)
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + 2.0 * np.eye(4))
    expected = np.eye(4) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(estimator.weights.numpy(), expected, atol=1e-5)
    assert np.all(np.diag(estimator.weights.numpy()) == 0)
    np.testing.assert_allclose(estimator.score_rows(np.array([2])), dense[[2]] @ expected, atol=1e-5)


def test_ranks_far_above_most_popular_on_leave_one_out(tmp_path):
    split = make_leave_one_out_split(tmp_path / "loo")
    metrics = train(split.path, tmp_path / "run", "ease", None, RunSettings(recall_users=400))
    popular = metrics["baselines"]["most_popular"]["test"]
    assert metrics["test"]["hr@10"] > popular["hr@10"] + 0.2, (metrics["test"], popular)
    assert metrics["test"]["recall@10"] > popular["recall@10"]
    assert metrics["beaten_by"] == [] and "rmse" not in metrics["test"]
    assert metrics["trained_blind"] and metrics["valid"] is None
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # closed form: no epochs to resume


def test_reg_must_be_positive():
    from recsys_core.errors import RecsysError

    with pytest.raises(RecsysError, match="model ease: option reg must be above 0, got 0"):
        models.resolve_options("ease", {"reg": 0})
