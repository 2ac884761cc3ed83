"""Baselines reported beside every model: global mean, item mean, regularized user + item biases, and
most popular (for ranking). Each is fitted on a training matrix when made, answers the ``Predictor``
questions (``predict_pairs``, ``score_rows``) like a trained model, and saves and restores its state
(``state_dict()``, ``from_state(state)``) as tensors."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class Baseline:
    rating_model = True
    fitted: tuple[str, ...] = ()  # the attributes that make up the fitted state

    def state_dict(self) -> dict:
        return {name: torch.as_tensor(np.asarray(getattr(self, name))) for name in self.fitted}

    @classmethod
    def from_state(cls, state: dict) -> "Baseline":
        baseline = cls.__new__(cls)
        for name in cls.fitted:
            value = state[name]
            setattr(baseline, name, value.numpy() if value.dim() else value.item())
        return baseline


class GlobalMean(Baseline):
    fitted = ("mean", "n_items")

    def __init__(self, train: sp.csr_matrix):
        self.mean = float(train.data.mean())
        self.n_items = train.shape[1]

    def predict_pairs(self, rows, cols):
        return np.full(len(rows), self.mean, np.float32)

    def score_rows(self, rows):
        return np.full((len(rows), self.n_items), self.mean, np.float32)


class ItemMean(Baseline):
    """Mean rating of the item in training; the global mean for items without training ratings."""

    fitted = ("item_mean",)

    def __init__(self, train: sp.csr_matrix):
        n_items = train.shape[1]
        counts = np.bincount(train.indices, minlength=n_items)
        sums = np.bincount(train.indices, train.data.astype(np.float64), n_items)
        mean = float(train.data.mean())
        self.item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mean).astype(np.float32)

    def predict_pairs(self, rows, cols):
        return self.item_mean[np.asarray(cols)]

    def score_rows(self, rows):
        return np.broadcast_to(self.item_mean, (len(rows), len(self.item_mean))).copy()


class UserItemBias(Baseline):
    """mu + b_u + b_i fitted by alternating closed-form ridge steps:
    b_i = sum_u (r - mu - b_u) / (item_reg + n_i), b_u = sum_i (r - mu - b_i) / (user_reg + n_u)."""

    fitted = ("mean", "user_bias", "item_bias")

    def __init__(self, train: sp.csr_matrix, user_reg: float = 10.0, item_reg: float = 25.0, iterations: int = 10):
        rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
        cols = train.indices
        values = train.data.astype(np.float64)
        self.mean = float(values.mean())
        n_users, n_items = train.shape
        user_count = np.bincount(rows, minlength=n_users)
        item_count = np.bincount(cols, minlength=n_items)
        self.user_bias = np.zeros(n_users)
        self.item_bias = np.zeros(n_items)
        for _ in range(iterations):
            residual = values - self.mean - self.user_bias[rows]
            self.item_bias = np.bincount(cols, residual, n_items) / (item_reg + item_count)
            residual = values - self.mean - self.item_bias[cols]
            self.user_bias = np.bincount(rows, residual, n_users) / (user_reg + user_count)

    def predict_pairs(self, rows, cols):
        return (self.mean + self.user_bias[np.asarray(rows)] + self.item_bias[np.asarray(cols)]).astype(np.float32)

    def score_rows(self, rows):
        return (self.mean + self.user_bias[np.asarray(rows)][:, None] + self.item_bias[None, :]).astype(np.float32)


class MostPopular(Baseline):
    """Ranks items by their number of training ratings (no rating prediction)."""

    rating_model = False
    fitted = ("popularity",)

    def __init__(self, train: sp.csr_matrix):
        self.popularity = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float32)

    def predict_pairs(self, rows, cols):
        return self.popularity[np.asarray(cols)]

    def score_rows(self, rows):
        return np.broadcast_to(self.popularity, (len(rows), len(self.popularity))).copy()


def fit_baselines(train: sp.csr_matrix) -> dict:
    return {"global_mean": GlobalMean(train), "item_mean": ItemMean(train),
            "user_item_bias": UserItemBias(train), "most_popular": MostPopular(train)}
