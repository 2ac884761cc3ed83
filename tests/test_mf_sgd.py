"""MF's hand-written SGD solver (``solver: sgd``, recsys_core/models/mf.py ``SequentialSGD``): its updates are
Surprise's rule computed by hand, one rating after another, i.e. minus lr times each rating's gradient; runs repeat
bit for bit and a resumed run continues exactly; the loop keeps no optimizer state for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_fixtures import make_rating_split

from recsys_core import distributed, models
from recsys_core.errors import RecsysError
from recsys_core.models.mf import BiasedMF, SequentialSGD
from recsys_core.settings import RunSettings
from recsys_core.train import train

pytestmark = pytest.mark.usefixtures("two_torch_threads")  # the runs below are compared bit for bit

SGD = dict(solver="sgd", lr=0.01, l2=0.05, patience=0)
RUN = RunSettings(recall_users=0)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("mfsgd") / "N3M", n_users=300, n_items=60, n_ratings=12_000)


def _tiny(squash: bool = False) -> BiasedMF:
    model = BiasedMF(2, 3, dim=2, global_mean=3.5, squash=squash)
    with torch.no_grad():
        model.user_factors.weight.copy_(torch.tensor([[0.3, -0.2], [0.1, 0.4]]))
        model.item_factors.weight.copy_(torch.tensor([[0.5, 0.1], [-0.3, 0.2], [0.2, 0.2]]))
        model.user_bias.weight.copy_(torch.tensor([[0.2], [-0.1]]))
        model.item_bias.weight.copy_(torch.tensor([[0.3], [0.0], [-0.4]]))
    return model


def _solver(users, items, ratings) -> SequentialSGD:
    """A solver that visits exactly these ratings in this order (one chunk)."""
    solver = SequentialSGD(torch.tensor(users), torch.tensor(items), torch.tensor(ratings), seed=0)
    solver.users, solver.items = np.array(users, np.int32), np.array(items, np.int32)
    solver.ratings = np.array(ratings, np.float32)
    return solver


# user 0 twice, item 1 twice: the second rating of each sees the first one's update; item 2 is not rated
USERS, ITEMS, RATINGS = [0, 0, 1], [1, 0, 1], [4.0, 3.0, 5.0]


def test_the_sgd_solver_is_surprises_rule_one_rating_after_another():
    lr, reg = 0.1, 0.05
    model = _tiny()
    p = model.user_factors.weight.detach().double().numpy().copy()
    q = model.item_factors.weight.detach().double().numpy().copy()
    bu = model.user_bias.weight.detach().double().numpy()[:, 0].copy()
    bi = model.item_bias.weight.detach().double().numpy()[:, 0].copy()
    errors = []
    for u, i, r in zip(USERS, ITEMS, RATINGS):  # Surprise's SVD.sgd, by hand
        e = r - (3.5 + bu[u] + bi[i] + p[u] @ q[i])
        errors.append(e)
        bu[u] += lr * (e - reg * bu[u])
        bi[i] += lr * (e - reg * bi[i])
        pu, qi = p[u].copy(), q[i].copy()
        p[u] += lr * (e * qi - reg * pu)
        q[i] += lr * (e * pu - reg * qi)
    mse = _solver(USERS, ITEMS, RATINGS).step(model, np.array([0]), lr=lr, reg=reg)
    assert float(mse) == pytest.approx(np.mean(np.square(errors)), rel=1e-5)
    np.testing.assert_allclose(model.user_factors.weight.detach().numpy(), p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.item_factors.weight.detach().numpy(), q, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.user_bias.weight.detach().numpy()[:, 0], bu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.item_bias.weight.detach().numpy()[:, 0], bi, rtol=0, atol=1e-6)
    assert torch.equal(model.item_factors.weight[2], torch.tensor([0.2, 0.2]))  # unrated: untouched
    assert float(model.global_mean.detach()) == 3.5  # mu stays the training mean, as in Surprise


@pytest.mark.parametrize("squash", [False, True])
def test_one_rating_steps_by_minus_lr_times_its_gradient(squash):
    """The rule read as a gradient step on 0.5 e^2 + 0.5 reg (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2), the gradient
    by autograd (with squash, e passes through the scaled sigmoid)."""
    lr, reg = 0.1, 0.05
    reference = _tiny(squash)
    u, i, r = torch.tensor([1]), torch.tensor([2]), torch.tensor([2.0])
    loss = (0.5 * (r - reference(u, i)) ** 2).sum() + 0.5 * reg * (
        (reference.user_factors(u) ** 2).sum() + (reference.item_factors(i) ** 2).sum()
        + (reference.user_bias(u) ** 2).sum() + (reference.item_bias(i) ** 2).sum())
    loss.backward()
    model = _tiny(squash)
    _solver([1], [2], [2.0]).step(model, np.array([0]), lr=lr, reg=reg)
    for name in ("user_factors", "item_factors", "user_bias", "item_bias"):
        before = getattr(reference, name).weight
        expected = before.detach() - lr * before.grad
        assert torch.allclose(getattr(model, name).weight.detach(), expected, atol=1e-6), name


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_two_runs_are_bit_identical_and_a_resumed_run_continues_exactly(split, tmp_path):
    straight = train(split.path, tmp_path / "straight", "mf", {**SGD, "epochs": 4}, RUN)
    again = train(split.path, tmp_path / "again", "mf", {**SGD, "epochs": 4}, RUN)
    assert straight is not None and again is not None  # (one process: the metrics)
    _assert_same_weights(tmp_path / "straight", tmp_path / "again")
    assert straight["test"] == again["test"]
    train(split.path, tmp_path / "resumed", "mf", {**SGD, "epochs": 2}, RUN)
    resumed = train(split.path, tmp_path / "resumed", "mf", {"epochs": 4}, RunSettings(resume=True))
    assert resumed is not None
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    assert resumed["test"] == straight["test"]
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert history["valid"] == json.loads((tmp_path / "straight" / "history.json").read_text())["valid"]
    # the loop kept no optimizer state for it, and the epochs learnt: train loss falls, valid beats the mean
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["optimizer"] == {}
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert straight["valid"]["rmse"] < straight["baselines"]["global_mean"]["valid"]["rmse"]
    other = train(split.path, tmp_path / "seed1", "mf", {**SGD, "epochs": 4, "seed": 1}, RUN)
    assert other is not None
    assert other["test"]["rmse"] != straight["test"]["rmse"]


def test_the_sgd_solver_refuses_weight_decay_and_several_processes(monkeypatch):
    with pytest.raises(RecsysError, match="weight_decay is the autograd solver's"):
        models.get("mf").options.resolve({"solver": "sgd", "weight_decay": 0.01}, model="mf")
    estimator = models.create("mf", solver="sgd")
    monkeypatch.setattr(distributed, "current", lambda: distributed.DistContext(0, 2, 0, torch.device("cpu")))
    with pytest.raises(RecsysError, match="trains in one process"):
        estimator.own_step()


def test_a_diverging_sgd_run_names_the_solver(split, tmp_path):
    with pytest.raises(RecsysError, match="with the sgd solver at lr 10"):
        train(split.path, tmp_path / "run", "mf", {**SGD, "lr": 10.0, "epochs": 2}, RUN)
