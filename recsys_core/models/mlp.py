"""An embedding MLP for explicit ratings: rating = mu + b_u + b_i + MLP([e_u, e_i]), dropout between hidden
layers. ``mlp_tower`` is also NCF's tower."""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from recsys_core.estimators import PairsEstimator, PairsOptions
from recsys_core.models import register
from recsys_core.options import option, options


def mlp_tower(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear + ReLU (+ dropout) for each consecutive pair of ``sizes``."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


GRID_FLOATS = 1 << 23  # activations of one block of (user, item) pairs in ``tower_grid``: 32 MB of float32


def tower_grid(tower: nn.Sequential, users_x: torch.Tensor, items_x: torch.Tensor,
               head_weight: torch.Tensor) -> torch.Tensor:
    """``head_weight . tower([u, i])`` for every row ``u`` of ``users_x`` and ``i`` of ``items_x`` (eval mode),
    ``[len(users_x), len(items_x)]``. The first layer splits into its user and item halves, ``W_u u + b`` and
    ``W_i i``, each one GEMM over the rows it needs (not one per pair); the rest of the tower runs on blocks
    of users x every item, one batched GEMM per layer, never more than ``GRID_FLOATS`` activations held."""
    dim = users_x.shape[1]
    linears = [m for m in tower if isinstance(m, nn.Linear)]
    if not linears:  # no hidden layer: the head is linear in [u, i]
        return (users_x @ head_weight[:dim]).unsqueeze(1) + (items_x @ head_weight[dim:]).unsqueeze(0)
    first = linears[0]
    user_half = torch.addmm(first.bias, users_x, first.weight[:, :dim].T)
    item_half = items_x @ first.weight[:, dim:].T
    rest = tower[1:]
    widest = max(m.out_features for m in linears)
    step = max(1, GRID_FLOATS // max(len(items_x) * widest, 1))
    out = torch.empty((len(users_x), len(items_x)), dtype=user_half.dtype, device=user_half.device)
    for lo in range(0, len(users_x), step):
        hidden = rest(user_half[lo:lo + step, None, :] + item_half[None, :, :])
        out[lo:lo + step] = hidden @ head_weight
    return out


class EmbeddingMLP(nn.Module):
    """rating = mu + b_u + b_i + MLP([e_u, e_i]) with dropout between hidden layers."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32, hidden: Sequence[int] = (64, 32),
                 dropout: float = 0.2, global_mean: float = 0.0, sparse: bool = False):
        super().__init__()
        self.user_emb = nn.Embedding(n_users, dim, sparse=sparse)
        self.item_emb = nn.Embedding(n_items, dim, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
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

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Predictions for every item, ``[len(users), n_items]`` (``tower_grid``; eval mode)."""
        grid = tower_grid(self.tower, self.user_emb(users), self.item_emb.weight, self.head.weight[0])
        return grid.add_(self.global_mean + self.head.bias + self.user_bias(users)).add_(self.item_bias.weight.T)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return ((self.user_emb(users) ** 2).sum(-1) + (self.item_emb(items) ** 2).sum(-1)
                + self.user_bias(users).squeeze(-1) ** 2 + self.item_bias(items).squeeze(-1) ** 2).mean()


@options
class MLPOptions(PairsOptions):
    dim: int = option(32, "embedding size", low=1)
    hidden: tuple[int, ...] = option((64, 32), "hidden layer sizes of the MLP tower, e.g. 64,32,16", item_low=1)
    dropout: float = option(0.2, "dropout between hidden layers", low=0, high=1, high_open=True)
    l2: float = option(0.02, "per-example L2 on the embeddings and biases a batch touches", low=0)
    lr: float = 0.002
    batch_size: int = 1024
    patience: int = 4
    # A sweep's default space (docs/sweeps.md).
    sweep_space: ClassVar[dict] = {"dim": {"choices": [16, 32, 64]}, "hidden": {"choices": [[32], [64, 32], [128, 64]]},
                                   "dropout": {"low": 0.0, "high": 0.5}, "lr": {"low": 5e-4, "high": 1e-2, "log": True},
                                   "l2": {"low": 1e-3, "high": 0.1, "log": True}}


@register("mlp", options=MLPOptions, help="embedding MLP for ratings: [e_u, e_i] -> hidden layers with dropout")
class MLP(PairsEstimator):
    options: MLPOptions
    model: EmbeddingMLP

    def build(self, dims: dict) -> EmbeddingMLP:
        c = self.options
        return EmbeddingMLP(dims["n_users"], dims["n_items"], c.dim, list(c.hidden), c.dropout, dims["global_mean"],
                            self.sparse_rows)

    def penalty_weight(self) -> float:
        return float(self.options.l2)

    def item_vectors(self) -> np.ndarray:
        """The item embeddings."""
        return self.model.item_emb.weight.detach().float().cpu().numpy()
