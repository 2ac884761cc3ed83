"""Every model and every baseline keeps the predictor contract (tests/predictor_contract.py): each is a
class of a few lines (a new model's own test file holds its class, as tests/test_ease.py does)."""

from __future__ import annotations

from predictor_contract import BaselineContract, ModelContract

from recsys_core import baselines

FAST = {"epochs": 2}  # iterative models: two epochs show the contract


class TestAutoencoder(ModelContract):
    model, options = "autoencoder", {**FAST, "layers": [16]}


class TestAutoRecItem(ModelContract):
    model, options = "autorec-item", {**FAST, "layers": [16]}


class TestAutoRecUser(ModelContract):
    model, options = "autorec-user", {**FAST, "layers": [16]}


class TestMF(ModelContract):
    model, options = "mf", FAST


class TestMFSGD(ModelContract):
    model, options = "mf", {**FAST, "solver": "sgd"}


class TestMLP(ModelContract):
    model, options = "mlp", FAST


class TestGMF(ModelContract):
    model, options = "gmf", FAST


class TestNCFMLP(ModelContract):
    model, options = "ncf-mlp", FAST


class TestNeuMF(ModelContract):
    model, options = "neumf", FAST


class TestGlobalMean(BaselineContract):
    baseline = baselines.GlobalMean


class TestItemMean(BaselineContract):
    baseline = baselines.ItemMean


class TestUserItemBias(BaselineContract):
    baseline = baselines.UserItemBias


class TestMostPopular(BaselineContract):
    baseline = baselines.MostPopular
