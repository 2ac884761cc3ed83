"""Neural collaborative filtering for implicit feedback (He et al. 2017): GMF, MLP and NeuMF.

Each returns a logit for "user interacted with item"; training uses BCE with sampled negatives.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from recsys_core.distributed import local_part
from recsys_core.estimators import PairsEstimator, PairsOptions
from recsys_core.evaluation import hit_rate_at_k, rank_of_positive
from recsys_core.interactions import csr_triplets
from recsys_core.losses import binary_cross_entropy
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.models.mlp import PairScores, cached_tower_bounds, mlp_tower, tower_grid
from recsys_core.options import option, options
from recsys_core.ranking import ScoreBounds
from recsys_core.sampling import sample_negatives

VALID_NEGATIVES = 99  # validation: the held-out item ranked among this many sampled non-interactions


class NCF(nn.Module):
    """``kind`` = "gmf" (p_u * q_i -> linear), "mlp" ([p_u, q_i] -> tower -> linear) or "neumf" (both, fused)."""

    def __init__(self, n_users: int, n_items: int, kind: str = "neumf", dim: int = 16,
                 hidden: Sequence[int] = (64, 32, 16), dropout: float = 0.0, sparse: bool = False):
        super().__init__()
        if kind not in ("gmf", "mlp", "neumf"):
            raise ValueError(f"unknown NCF kind {kind!r}")
        self.kind = kind
        hidden = list(hidden)
        width = 0
        if kind in ("gmf", "neumf"):
            self.gmf_user = nn.Embedding(n_users, dim, sparse=sparse)
            self.gmf_item = nn.Embedding(n_items, dim, sparse=sparse)
            width += dim
        if kind in ("mlp", "neumf"):
            self.mlp_user = nn.Embedding(n_users, dim, sparse=sparse)
            self.mlp_item = nn.Embedding(n_items, dim, sparse=sparse)
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

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits for every item, ``[len(users), n_items]`` (eval mode): GMF's part is one product with the
        head's weights folded into the user side, the tower's is ``tower_grid``."""
        weight = self.head.weight[0]
        out = None
        if self.kind in ("gmf", "neumf"):
            dim = self.gmf_user.embedding_dim
            out = (self.gmf_user(users) * weight[:dim]) @ self.gmf_item.weight.T
            weight = weight[dim:]
        if self.kind in ("mlp", "neumf"):
            grid = tower_grid(self.tower, self.mlp_user(users), self.mlp_item.weight, weight)
            out = grid if out is None else out.add_(grid)
        assert out is not None  # every kind has a GMF or a tower part
        return out.add_(self.head.bias)

    def score_bounds(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, PairScores] | None:
        """(lower, upper) of every item's logit for ``users`` and the exact logits of chosen (row, item)
        pairs, as ``score_all`` computes them: the tower's part bounded (``TowerBounds``), GMF's exact; None for
        GMF alone, which ``score_all`` scores in one product."""
        if self.kind == "gmf":
            return None
        weight = self.head.weight[0]
        gmf = None
        if self.kind == "neumf":
            dim = self.gmf_user.embedding_dim
            gmf = (self.gmf_user(users) * weight[:dim]) @ self.gmf_item.weight.T
            weight = weight[dim:]
        index = cached_tower_bounds(self, self.tower, self.mlp_item.weight, weight)
        if index is None:
            return None
        user_half = index.user_half(self.mlp_user(users))
        lower, upper = index.bounds(user_half)
        if gmf is not None:
            lower, upper = gmf + lower, upper.add_(gmf)
        bias = self.head.bias

        def exact(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            tower = index.pairs(user_half, rows, cols)
            return (tower if gmf is None else gmf[rows, cols].add_(tower)).add_(bias)

        return lower.add_(bias), upper.add_(bias), exact


@options
class NCFOptions(PairsOptions):
    dim: int = option(16, "embedding size (of each part in NeuMF)", low=1)
    hidden: tuple[int, ...] = option((64, 32, 16), "hidden layer sizes of the MLP tower, e.g. 64,32,16", item_low=1)
    dropout: float = option(0.0, "dropout between hidden layers", low=0, high=1, high_open=True)
    negatives: int = option(4, "sampled negatives per positive, resampled every epoch", low=1)
    batch_size: int = 256
    epochs: int = 20
    patience: int = 3
    # A sweep's default space (docs/sweeps.md), shared by gmf, ncf-mlp and neumf.
    sweep_space: ClassVar[dict] = {"dim": {"choices": [8, 16, 32, 64]}, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "negatives": {"low": 2, "high": 8},
                                   "weight_decay": {"low": 1e-7, "high": 1e-3, "log": True}}


# Batch size and learning rate of each kind chosen on real MovieLens leave-one-out valid (docs/train.md, "The
# defaults on real data", and docs/sweeps/*-real-loo.yaml); the MLP tower's epoch cap is a ceiling only (early
# stopping ends the run): it learns from 0.01-scale embeddings alone and needs more epochs than GMF and NeuMF.
@options
class GMFOptions(NCFOptions):
    batch_size: int = 1024
    lr: float = 0.004


@options
class NCFMLPOptions(NCFOptions):
    batch_size: int = 1024
    epochs: int = 60
    lr: float = 0.003


@register("gmf", options=GMFOptions, kind="gmf", help="NCF generalized matrix factorization (implicit)")
@register("ncf-mlp", options=NCFMLPOptions, kind="mlp", help="NCF multi-layer perceptron (implicit)")
@register("neumf", options=NCFOptions, kind="neumf", help="NCF NeuMF = GMF + MLP fused (implicit)")
class NCFEstimator(PairsEstimator):
    """NCF: every training rating is a positive; ``negatives`` items outside the user's training ratings per
    positive, drawn afresh each epoch from the epoch's seeded generator; BCE on logits. Scores are
    probabilities. Training never reads the valid or test part; validation reads valid, never test."""

    options: NCFOptions
    model: NCF
    family = "implicit"
    rating_model = False
    valid_metric = "hr@10"
    higher_is_better = True

    def __init__(self, options, *, name, device=None, settings=None, kind: str = "neumf"):
        super().__init__(options, name=name, device=device, settings=settings)
        self.kind = kind

    def build(self, dims: dict) -> NCF:
        c = self.options
        return NCF(dims["n_users"], dims["n_items"], self.kind, c.dim, list(c.hidden), c.dropout, self.sparse_rows)

    def prepare(self, data: SplitMatrices) -> None:
        super().prepare(data)
        self.n_negatives = int(self.options.negatives)
        # Training negatives: any item outside the user's TRAIN ratings (as the NCF paper's code does). Excluding
        # the held-out items too (it once used train + valid + test) never pushes the test item down while the
        # evaluation's 99 negatives are: on MovieLens 100K that inflated NeuMF's HR@10 from 0.595 to 0.614.
        self.seen = data.train
        self._valid_ranking = None

    def n_batches(self) -> int:
        return -(-len(self.users) * (1 + self.n_negatives) // self.batch_size)

    def batches(self, rng):
        negatives = sample_negatives(self.seen, self.users.numpy(), self.n_negatives, rng)
        users = torch.cat([self.users, self.users.repeat_interleave(self.n_negatives)])
        items = torch.cat([self.items, torch.from_numpy(negatives.reshape(-1))])
        labels = torch.cat([torch.ones(len(self.users)), torch.zeros(negatives.size)])
        order = torch.from_numpy(rng.permutation(len(users)))
        for start in range(0, len(order), self.batch_size):
            idx = local_part(order[start:start + self.batch_size])
            yield users[idx].to(self.device), items[idx].to(self.device), labels[idx].to(self.device)

    def losses(self, batch):
        users, items, labels = batch
        with self.autocast():
            logits = self.model(users, items)
        loss = binary_cross_entropy(logits, labels)
        yield loss, loss.detach()

    def validate(self) -> float | None:
        """HR@10 of each valid interaction among 99 fixed sampled non-interactions."""
        if self.data.valid.nnz == 0:
            return None
        if self._valid_ranking is None:
            rows, cols, _ = csr_triplets(self.data.valid)
            # valid negatives avoid train and valid ratings; test is never read before training ends
            known = (self.data.train + self.data.valid).tocsr()
            known.sort_indices()
            negatives = sample_negatives(known, rows, VALID_NEGATIVES, np.random.default_rng(12345))
            self._valid_ranking = rows, cols, negatives
        rows, cols, negatives = self._valid_ranking
        pos = self.predict_pairs(rows, cols)
        neg = self.predict_pairs(np.repeat(rows, VALID_NEGATIVES), negatives.reshape(-1))
        return hit_rate_at_k(rank_of_positive(pos, neg.reshape(len(rows), -1)), 10)

    def predict_pairs(self, rows, cols):
        return self._pairs_in_chunks(rows, cols, transform=torch.sigmoid)

    def score_rows_tensor(self, rows):
        return torch.sigmoid_(super().score_rows_tensor(rows))

    def score_bounds(self, rows: np.ndarray) -> ScoreBounds | None:
        """The logits' bounds through the sigmoid, which keeps their order (probabilities, as ``score_rows``)."""
        found = super().score_bounds(rows)
        if found is None:
            return None
        exact = found.exact
        return ScoreBounds(found.lower.sigmoid_(), found.upper.sigmoid_(),
                           lambda positions, cols: torch.sigmoid_(exact(positions, cols)))

    def item_vectors(self) -> np.ndarray:
        """The item embeddings of the parts the model has (GMF's and the MLP tower's side by side in NeuMF)."""
        parts = [getattr(self.model, name).weight for name in ("gmf_item", "mlp_item") if hasattr(self.model, name)]
        return torch.cat(parts, dim=1).detach().float().cpu().numpy()
