"""Neural collaborative filtering for implicit feedback (He et al. 2017): GMF, MLP and NeuMF.

Each returns a logit for "user interacted with item"; training uses BCE with sampled negatives.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_core.models.factorization import mlp_tower


class NCF(nn.Module):
    """``kind`` = "gmf" (p_u * q_i -> linear), "mlp" ([p_u, q_i] -> tower -> linear) or "neumf" (both, fused)."""

    def __init__(self, n_users: int, n_items: int, kind: str = "neumf", dim: int = 16,
                 hidden: list[int] = (64, 32, 16), dropout: float = 0.0):
        super().__init__()
        if kind not in ("gmf", "mlp", "neumf"):
            raise ValueError(f"unknown NCF kind {kind!r}")
        self.kind = kind
        hidden = list(hidden)
        width = 0
        if kind in ("gmf", "neumf"):
            self.gmf_user = nn.Embedding(n_users, dim)
            self.gmf_item = nn.Embedding(n_items, dim)
            width += dim
        if kind in ("mlp", "neumf"):
            self.mlp_user = nn.Embedding(n_users, dim)
            self.mlp_item = nn.Embedding(n_items, dim)
            self.tower = mlp_tower([2 * dim, *hidden], dropout)
            width += hidden[-1] if hidden else 2 * dim
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=0.01)
        self.head = nn.Linear(width, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.kind in ("gmf", "neumf"):
            parts.append(self.gmf_user(users) * self.gmf_item(items))
        if self.kind in ("mlp", "neumf"):
            parts.append(self.tower(torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1)))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)
