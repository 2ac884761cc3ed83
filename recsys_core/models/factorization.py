"""Models of (user, item) pairs for explicit ratings: biased matrix factorization and an embedding MLP."""

from __future__ import annotations

import torch
from torch import nn


class BiasedMF(nn.Module):
    """rating = mu + b_u + b_i + p_u . q_i, optionally squashed into the rating range by a scaled sigmoid."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32, global_mean: float = 0.0,
                 squash: bool = False, rating_range: tuple[float, float] = (1.0, 5.0)):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, dim)
        self.item_factors = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
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


def mlp_tower(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear + ReLU (+ dropout) for each consecutive pair of ``sizes``."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class EmbeddingMLP(nn.Module):
    """rating = mu + b_u + b_i + MLP([e_u, e_i]) with dropout between hidden layers."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32, hidden: list[int] = (64, 32),
                 dropout: float = 0.2, global_mean: float = 0.0):
        super().__init__()
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        for emb in (self.user_emb, self.item_emb):
            nn.init.normal_(emb.weight, std=0.05)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)
        hidden = list(hidden)
        self.tower = mlp_tower([2 * dim, *hidden], dropout)
        self.head = nn.Linear(hidden[-1] if hidden else 2 * dim, 1)
        nn.init.zeros_(self.head.bias)
        self.global_mean = nn.Parameter(torch.tensor(float(global_mean)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.user_emb(users), self.item_emb(items)], dim=-1)
        return (self.global_mean + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
                + self.head(self.tower(x)).squeeze(-1))

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return ((self.user_emb(users) ** 2).sum(-1) + (self.item_emb(items) ** 2).sum(-1)
                + self.user_bias(users).squeeze(-1) ** 2 + self.item_bias(items).squeeze(-1) ** 2).mean()
