"""Biased matrix factorization for explicit ratings: rating = mu + b_u + b_i + p_u . q_i, trained on
(user, item, rating) examples with per-example L2 on what each batch touches."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from recsys_core.errors import RecsysError
from recsys_core.estimators import PairsEstimator, PairsOptions
from recsys_core.models import register
from recsys_core.options import option, options


class BiasedMF(nn.Module):
    """rating = mu + b_u + b_i + p_u . q_i, optionally squashed into the rating range by a scaled sigmoid."""

    low: torch.Tensor  # buffers: the rating range
    span: torch.Tensor

    def __init__(self, n_users: int, n_items: int, dim: int = 32, global_mean: float = 0.0,
                 squash: bool = False, rating_range: tuple[float, float] = (1.0, 5.0), sparse: bool = False):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, dim, sparse=sparse)
        self.item_factors = nn.Embedding(n_items, dim, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        for emb in (self.user_factors, self.item_factors):
            nn.init.normal_(emb.weight, std=0.01)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)
        self.squash = squash
        low, high = rating_range
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("span", torch.tensor(float(high - low)))
        # Squashed models start from the logit of the global mean so the first steps are not wasted.
        if squash:
            frac = min(max((global_mean - low) / (high - low), 1e-3), 1 - 1e-3)
            global_mean = float(torch.logit(torch.tensor(frac)))
        self.global_mean = nn.Parameter(torch.tensor(float(global_mean)))

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        return self.low + self.span * torch.sigmoid(raw) if self.squash else raw

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raw = (self.global_mean + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
               + (self.user_factors(users) * self.item_factors(items)).sum(-1))
        return self._finish(raw)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Predictions for every item: ``[len(users), n_items]``."""
        raw = (self.global_mean + self.user_bias(users) + self.item_bias.weight.T
               + self.user_factors(users) @ self.item_factors.weight.T)
        return self._finish(raw)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per-example L2 of the parameters the batch touches (mean over the batch)."""
        return ((self.user_factors(users) ** 2).sum(-1) + (self.item_factors(items) ** 2).sum(-1)
                + self.user_bias(users).squeeze(-1) ** 2 + self.item_bias(items).squeeze(-1) ** 2).mean()


@options
class MFOptions(PairsOptions):
    dim: int = option(16, "embedding size", low=1)
    l2: float = option(0.02, "per-example L2 on the embeddings and biases a batch touches", low=0)
    squash: bool = option(False, "squash the output into the rating range with a scaled sigmoid")
    lr: float = 0.002
    batch_size: int = 1024
    patience: int = 4
    # A sweep's default space (docs/sweeps.md).
    sweep_space: ClassVar[dict] = {"dim": {"choices": [8, 16, 32, 64]}, "lr": {"low": 5e-4, "high": 1e-2, "log": True},
                                   "l2": {"low": 1e-3, "high": 0.1, "log": True},
                                   "batch_size": {"choices": [256, 1024, 4096]}}


@register("mf", options=MFOptions, help="biased matrix factorization: mu + b_u + b_i + p_u.q_i, L2")
class MF(PairsEstimator):
    options: MFOptions
    model: BiasedMF

    def build(self, dims: dict) -> BiasedMF:
        c = self.options
        return BiasedMF(dims["n_users"], dims["n_items"], c.dim, dims["global_mean"], c.squash, dims["rating_range"],
                        self.sparse_rows)

    def penalty_weight(self) -> float:
        return float(self.options.l2)

    def item_vectors(self) -> np.ndarray:
        return self.model.item_factors.weight.detach().float().cpu().numpy()

    def folds_in(self) -> bool:
        """Whether this model folds a new user in (a squashed MF is not linear in the user's vector)."""
        return not bool(self.options.squash)

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user's factors and bias by a ridge solve against the frozen item factors and biases, then
        their predictions. Training's per-example L2, summed over the user's n ratings, is
        l2 * n * (|p_u|^2 + b_u^2): the ridge is l2 * n. Folding a known user's own training ratings back
        in gives scores that correlate > 0.9 with the trained ones (tests/test_promotion.py)."""
        model = self.model
        if model.squash:
            raise RecsysError(f"a squashed {self.name} model (squash on) cannot fold in a new user: its "
                              "predictions are not linear in the user's factors")
        with torch.no_grad():
            q = model.item_factors.weight.detach().cpu().double().numpy()
            b = model.item_bias.weight.detach().cpu().double().numpy()[:, 0]
            mu = float(model.global_mean.detach())
        cols = np.asarray(cols, np.int64)
        x = np.hstack([q[cols], np.ones((len(cols), 1))])
        y = np.asarray(values, np.float64) - mu - b[cols]
        ridge = max(float(self.options.l2) * len(cols), 1e-6)
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
        return (mu + w[-1] + b + q @ w[:-1]).astype(np.float32)

    def linear_scores(self):
        """score = p_u . q_i + b_i + (mu + b_u): None when squashed."""
        model = self.model
        if model.squash:
            return None
        with torch.no_grad():
            offset = model.user_bias.weight[:, 0] + model.global_mean
            parts = (model.user_factors.weight, model.item_factors.weight.T, model.item_bias.weight[:, 0], offset)
            return tuple(np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in parts)
