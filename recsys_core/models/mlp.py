"""An embedding MLP for explicit ratings: rating = mu + b_u + b_i + MLP([e_u, e_i]), dropout between hidden
layers. ``mlp_tower`` is also NCF's tower."""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from recsys_core.estimators import PairsEstimator, PairsOptions, weights_version
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


# The exact scores of chosen (row, item) pairs of a block of users: ``exact(rows, cols)``.
PairScores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

GRID_FLOATS = 1 << 23  # activations of one block of (user, item) pairs in ``tower_grid``: 32 MB of float32


def _split_first(tower: nn.Sequential, users_x: torch.Tensor, items_x: torch.Tensor):
    """(user halves ``W_u u + b``, item halves ``W_i i``, the layers after the first) of a tower over
    ``[u, i]`` with at least one hidden layer."""
    dim = users_x.shape[1]
    first = next(m for m in tower if isinstance(m, nn.Linear))
    return (torch.addmm(first.bias, users_x, first.weight[:, :dim].T), items_x @ first.weight[:, dim:].T,
            tower[1:])


def _rest_grid(rest: nn.Module, user_half: torch.Tensor, item_half: torch.Tensor,
               head_weight: torch.Tensor, widest: int) -> torch.Tensor:
    """``head_weight . rest(u + i)`` for every row u of ``user_half`` and i of ``item_half``, on blocks of
    users x every item, one batched GEMM per layer, never more than ``GRID_FLOATS`` activations held."""
    step = max(1, GRID_FLOATS // max(len(item_half) * widest, 1))
    out = torch.empty((len(user_half), len(item_half)), dtype=user_half.dtype, device=user_half.device)
    for lo in range(0, len(user_half), step):
        hidden = rest(user_half[lo:lo + step, None, :] + item_half[None, :, :])
        out[lo:lo + step] = hidden @ head_weight
    return out


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
    user_half, item_half, rest = _split_first(tower, users_x, items_x)
    return _rest_grid(rest, user_half, item_half, head_weight, max(m.out_features for m in linears))


# Items per cluster of ``TowerBounds`` (at least 16 clusters, at most 1,024): a user's scores of the centres cost
# 1/32 of the whole catalogue's. Measured on a trained MLP at generated 10% N3M (5,412 items), the candidates
# left were 5.8 / 4.6 / 3.5% of the items with 128 / 256 / 512 clusters before the threshold is refined.
ITEMS_PER_CLUSTER = 32
GROUP = 32  # items per group of a cluster in the slack's batched product (a cluster's last group is padded)


class TowerBounds:
    """Bounds on ``head . tower([u, i])`` for every item at a fraction of the cost of the scores themselves,
    for exact pruned top-K (``recsys_core.ranking.ScoreBounds``). With ``b_i`` the item half of the first
    layer and ``a_u`` the user half, the score is ``g(relu(a_u + b_i))`` with g made of ReLUs and linear layers.
    Since ReLU is 1-Lipschitz elementwise, ``|g(h) - g(h')| <= v . |h - h'|`` with ``v = |head| |W_L| ... |W_2|``
    (elementwise absolute values), and ``|relu(a + b_i) - relu(a + b_c)| <= |b_i - b_c|``, which is 0 in a unit
    where both are negative. The items are clustered (k-means on ``v * b``, seeded) and each is bounded by its
    cluster centre ``c``: ``score(u, c) +- sum_k v_k |b_ik - b_ck| [a_uk + max_{j in c} b_jk > 0]``, so a user
    pays the tower on the centres only, and a product over the item halves for the slack. Built once for a
    set of weights (eval mode), it holds the item halves, their clusters and their distances to the centres."""

    def __init__(self, tower: nn.Sequential, items_x: torch.Tensor, head_weight: torch.Tensor, *, seed: int = 0):
        linears = [m for m in tower if isinstance(m, nn.Linear)]
        self.head_weight = head_weight
        self.dim = items_x.shape[1]
        self.widest = max(m.out_features for m in linears)
        first = linears[0]
        self.user_weight, self.user_bias = first.weight[:, :self.dim], first.bias
        self.item_half = items_x @ first.weight[:, self.dim:].T  # [n_items, h1]
        self.rest = tower[1:]
        lipschitz = head_weight.abs()
        for layer in reversed(linears[1:]):
            lipschitz = lipschitz @ layer.weight.abs()
        self.lipschitz = lipschitz  # [h1]
        n_items = len(self.item_half)
        n_clusters = int(min(1024, max(16, n_items // ITEMS_PER_CLUSTER), n_items))
        assign, centres = _kmeans(self.item_half * lipschitz, n_clusters, seed)
        self.assign = assign
        # centres back in item-half space
        self.centres = centres / lipschitz.clamp_min(torch.finfo(lipschitz.dtype).tiny)
        # Each cluster's items in groups of at most GROUP, every group padded to GROUP: the slack of a block of
        # users is then one batched product over the groups (a loop over clusters, one small product each,
        # stalled on a loaded machine where every small op waits for its OpenMP threads).
        order = torch.argsort(assign, stable=True)
        sorted_assign = assign[order]
        starts = torch.ones(n_items, dtype=torch.bool, device=assign.device)
        starts[1:] = sorted_assign[1:] != sorted_assign[:-1]
        first_of_cluster = torch.cummax(torch.where(starts, torch.arange(n_items, device=assign.device), 0), 0).values
        rank = torch.arange(n_items, device=assign.device) - first_of_cluster  # place within its cluster
        new_group = starts | (rank % GROUP == 0)
        group = torch.cumsum(new_group.long(), 0) - 1  # group of each item in the sorted order
        n_groups = int(group[-1]) + 1 if n_items else 0
        # each item's group and slot in a [groups x GROUP] layout
        self.group_of_item = torch.empty(n_items, dtype=torch.int64, device=assign.device)
        self.group_of_item[order] = group
        slot = torch.empty(n_items, dtype=torch.int64, device=assign.device)
        slot[order] = rank % GROUP
        self.place = self.group_of_item * GROUP + slot
        distance = torch.zeros((n_groups, GROUP, self.item_half.shape[1]), dtype=self.item_half.dtype,
                               device=self.item_half.device)
        distance[self.group_of_item, slot] = (self.item_half - self.centres[assign]).abs()
        self.distance = distance  # [groups, GROUP, h1], 0 where padded
        # a unit's top over a group's items, and over its centre: where it is <= -a_u, the unit is off for them all
        top = torch.full((n_groups, self.item_half.shape[1]), float("-inf"), dtype=self.item_half.dtype,
                         device=self.item_half.device)
        top.scatter_reduce_(0, self.group_of_item[:, None].expand_as(self.item_half), self.item_half, "amax")
        group_cluster = torch.empty(n_groups, dtype=torch.int64, device=assign.device)
        group_cluster[self.group_of_item] = assign
        self.top = torch.maximum(top, self.centres[group_cluster])

    def user_half(self, users_x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.user_bias, users_x, self.user_weight.T)

    def bounds(self, user_half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) of the tower's score of every item for each row of ``user_half``, ``[rows, n_items]``,
        widened by a margin that covers float32 rounding."""
        centre = _rest_grid(self.rest, user_half, self.centres, self.head_weight, self.widest)  # [rows, clusters]
        # [groups, rows, h1]: v_k where unit k is on for some item of the group, else 0 (in place: a third of the
        # time of a boolean mask times v)
        weights = (user_half[None, :, :] + self.top[:, None, :]).gt_(0).mul_(self.lipschitz)
        slack = torch.bmm(weights, self.distance.transpose(1, 2))  # [groups, rows, GROUP]
        # index_select: a third of the time of advanced indexing on the grouped layout
        slack = slack.transpose(0, 1).reshape(len(user_half), -1).index_select(1, self.place)  # [rows, n_items]
        slack.add_(centre.abs().amax(1, keepdim=True).mul_(1e-4).add_(1e-4))  # the margin, per row
        centre = centre.index_select(1, self.assign)
        return centre - slack, centre.add_(slack)

    def pairs(self, user_half: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The tower's score of each (row ``rows`` of ``user_half``, item ``cols``) pair, as ``tower_grid``
        computes it, in chunks of at most ``GRID_FLOATS`` activations."""
        out = torch.empty(len(cols), dtype=user_half.dtype, device=user_half.device)
        step = max(1, GRID_FLOATS // self.widest)
        for lo in range(0, len(cols), step):
            hidden = self.rest(user_half.index_select(0, rows[lo:lo + step])
                               + self.item_half.index_select(0, cols[lo:lo + step]))
            out[lo:lo + step] = hidden @ self.head_weight
        return out


def cached_tower_bounds(owner: nn.Module, tower: nn.Sequential, items_x: torch.Tensor,
                        head_weight: torch.Tensor) -> TowerBounds | None:
    """``owner``'s ``TowerBounds``, built the first time and again whenever one of its parameters changed
    (training steps and loads write them in place, which moves their version counters); None where the tower
    does not support bounds."""
    if not tower_supports_bounds(tower):
        return None
    key = weights_version(owner)
    cached = owner.__dict__.get("_tower_bounds")
    if cached is None or cached[0] != key:
        cached = (key, TowerBounds(tower, items_x, head_weight))
        owner.__dict__["_tower_bounds"] = cached
    return cached[1]


def _kmeans(points: torch.Tensor, n_clusters: int, seed: int, iterations: int = 15
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster of each point, centres) by Lloyd's iterations from ``n_clusters`` points drawn with ``seed``;
    an emptied cluster keeps its centre. Any clustering keeps the bounds exact; a good one keeps them tight."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randperm(len(points), generator=generator)[:n_clusters].to(points.device)
    centres = points[start].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=n_clusters).to(points.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return torch.cdist(points, centres).argmin(1), centres


def tower_supports_bounds(tower: nn.Sequential) -> bool:
    """Whether ``TowerBounds`` applies: at least one hidden layer, and only Linear, ReLU and Dropout (eval mode)."""
    return (any(isinstance(m, nn.Linear) for m in tower)
            and all(isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)) for m in tower))


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

    def score_bounds(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, PairScores] | None:
        """(lower, upper) of every item's prediction for ``users`` and the exact predictions of chosen
        (row, item) pairs, as ``score_all`` computes them (``TowerBounds``; eval mode)."""
        index = cached_tower_bounds(self, self.tower, self.item_emb.weight, self.head.weight[0])
        if index is None:
            return None
        user_half = index.user_half(self.user_emb(users))
        base = self.global_mean + self.head.bias + self.user_bias(users)  # [rows, 1]
        item_bias = self.item_bias.weight
        lower, upper = index.bounds(user_half)

        def exact(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return index.pairs(user_half, rows, cols).add_(base[rows, 0]).add_(item_bias[cols, 0])

        return lower.add_(base).add_(item_bias.T), upper.add_(base).add_(item_bias.T), exact

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
