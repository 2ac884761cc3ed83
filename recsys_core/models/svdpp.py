"""SVD++ (Koren 2008, "Factorization meets the neighborhood", eq. 15): biased factors plus the implicit signal
of which items a user rated,

    r^_ui = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j),

N(u) the items u rated in training. Trained by the project's loop on batches of USERS with all their
training ratings (a batch of about ``batch_size`` ratings): each user's implicit sum is one
``embedding_bag`` over their items, made once per batch and shared by all their ratings, so an epoch costs
O(ratings x dim); batches of single ratings would gather the sum once per rating (O(sum n_u^2 x dim)).

Loss: MSE over the batch's ratings + l2 x mean over them of (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2
+ |N(u)|^-1 sum_j |y_j|^2): per rating the L2 of what it touches, as biased MF's per-example L2, with the
implicit vectors' share spread over the user's ratings. The biases start at the user+item bias baseline's
(``recsys_core.baselines.UserItemBias``), mu is the training mean. A new user is folded in by their rated
items: their implicit sum from the trained y, then p_u and b_u by the ridge solve MF's fold-in makes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.baselines import UserItemBias
from recsys_core.distributed import local_part
from recsys_core.estimators import PairsOptions, TorchEstimator
from recsys_core.interactions import group_pairs_by_row, row_batch
from recsys_core.losses import observed_mse
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import option, options
from recsys_core.training_loop import uses_sparse_rows

PAIR_ROWS = 4096  # users per step when predicting pairs or scoring


class SVDppNet(nn.Module):
    global_mean: torch.Tensor  # a buffer

    def __init__(self, n_users: int, n_items: int, dim: int, global_mean: float, init_std: float,
                 sparse: bool = False):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, dim, sparse=sparse)
        self.item_factors = nn.Embedding(n_items, dim, sparse=sparse)
        self.implicit = nn.Embedding(n_items, dim, sparse=sparse)   # y_j
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        for emb in (self.user_factors, self.item_factors, self.implicit):
            nn.init.normal_(emb.weight, std=init_std)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))

    def user_vectors(self, users: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor,
                     counts: torch.Tensor) -> torch.Tensor:
        """p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j for ``users``, their rated ``items`` as a bag."""
        implicit = F.embedding_bag(items, self.implicit.weight, offsets, mode="sum", sparse=self.implicit.sparse)
        return self.user_factors(users) + implicit * counts.clamp_min(1).rsqrt()[:, None]

    def pairs(self, vectors: torch.Tensor, users: torch.Tensor, owner: torch.Tensor,
              items: torch.Tensor) -> torch.Tensor:
        """Predictions of (users[owner], items) pairs from the users' ``vectors``."""
        return (self.global_mean + self.user_bias(users).squeeze(-1)[owner] + self.item_bias(items).squeeze(-1)
                + (vectors[owner] * self.item_factors(items)).sum(-1))


@options
class SVDppOptions(PairsOptions):
    dim: int = option(32, "latent factors of p_u, q_i and y_j", low=1)
    l2: float = option(0.1, "per-rating L2 on the factors, implicit vectors and biases a rating touches", low=0)
    init_std: float = option(0.01, "standard deviation of the initial factors", low=0)
    lr: float = 0.003
    batch_size: int = 2048
    patience: int = 3
    sweep_space: ClassVar[dict] = {"dim": {"choices": [16, 32, 64, 128]},
                                   "lr": {"low": 5e-4, "high": 1e-2, "log": True},
                                   "l2": {"low": 1e-3, "high": 0.3, "log": True}}


@register("svdpp", options=SVDppOptions,
          help="SVD++ (Koren 2008): mu + b_u + b_i + q_i.(p_u + |N(u)|^-1/2 sum y_j), the items a user rated as "
               "implicit feedback; folds new users in by their rated items")
class SVDpp(TorchEstimator):
    options: SVDppOptions
    model: SVDppNet
    family = "pairs"

    def build(self, dims: dict) -> SVDppNet:
        c = self.options
        return SVDppNet(dims["n_users"], dims["n_items"], c.dim, dims["global_mean"], c.init_std,
                        uses_sparse_rows(c))

    def prepare(self, data: SplitMatrices) -> None:
        train = data.train
        self.counts = np.diff(train.indptr).astype(np.int64)
        self.train_rows = np.flatnonzero(self.counts > 0)
        baseline = UserItemBias(train)
        with torch.no_grad():  # start from the baseline's biases: the factors then learn the residuals
            self.model.user_bias.weight[:, 0] = torch.from_numpy(baseline.user_bias).float()
            self.model.item_bias.weight[:, 0] = torch.from_numpy(baseline.item_bias).float()
            self.model.global_mean.fill_(baseline.mean)

    # --- the loop's questions -------------------------------------------------------------------------------
    def _user_groups(self, order: np.ndarray) -> list[np.ndarray]:
        """``order`` cut into consecutive groups of users with about ``batch_size`` ratings (at least one user)."""
        ends = np.cumsum(self.counts[order])
        cuts = np.searchsorted(ends, np.arange(self.batch_size, ends[-1], self.batch_size), side="left") + 1
        return [group for group in np.split(order, np.unique(cuts)) if len(group)]

    def n_batches(self) -> int:
        return len(self._user_groups(self.train_rows))

    def batches(self, rng):
        for group in self._user_groups(rng.permutation(self.train_rows)):
            yield self._bag(local_part(group))

    def _bag(self, rows: np.ndarray):
        batch = row_batch(self.data.train, rows)
        dev = self.device
        return (torch.from_numpy(np.asarray(rows, np.int64)).to(dev), batch.cols.to(dev), batch.values.to(dev),
                batch.offsets.to(dev), batch.owner.to(dev), torch.from_numpy(self.counts[rows]).to(dev))

    def losses(self, batch):
        users, items, values, offsets, owner, counts = batch
        model = self.model
        with self.autocast():
            vectors = model.user_vectors(users, items, offsets, counts)
            pred = model.pairs(vectors, users, owner, items)
        fit = observed_mse(pred.float(), values)
        l2 = float(self.options.l2)
        if not l2:
            yield fit, fit.detach()
            return
        per_user = ((model.user_factors(users) ** 2).sum(-1) + model.user_bias(users).squeeze(-1) ** 2)
        implicit = model.implicit(items).pow(2).sum()   # the rows the batch touches, not the whole table
        per_rating = ((model.item_factors(items) ** 2).sum(-1) + model.item_bias(items).squeeze(-1) ** 2)
        # every rating of u carries u's terms once and 1/n_u of u's implicit vectors' squares
        penalty = (per_rating.sum() + (counts * per_user).sum() + implicit) / len(items)
        yield fit + l2 * penalty, fit.detach()

    # --- Predictor --------------------------------------------------------------------------------------
    def _vectors(self, rows: np.ndarray) -> torch.Tensor:
        users, items, _, offsets, _, counts = self._bag(rows)
        return self.model.user_vectors(users, items, offsets, counts)

    def predict_pairs(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = np.empty(len(rows), np.float32)
        if len(rows) == 0:
            return out
        order, unique_rows, inverse = group_pairs_by_row(rows, cols)
        with self._eval_mode():
            for lo in range(0, len(unique_rows), PAIR_ROWS):
                part = unique_rows[lo:lo + PAIR_ROWS]
                pairs = order[(inverse >= lo) & (inverse < lo + PAIR_ROWS)]
                vectors = self._vectors(part)
                owner = torch.from_numpy(inverse[(inverse >= lo) & (inverse < lo + PAIR_ROWS)] - lo).to(self.device)
                users = torch.from_numpy(part).to(self.device)
                items = torch.from_numpy(cols[pairs]).to(self.device)
                out[pairs] = self.model.pairs(vectors, users, owner, items).float().cpu().numpy()
        return out

    def score_rows_tensor(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, np.int64)
        model = self.model
        with self._eval_mode():
            vectors = self._vectors(rows)
            users = torch.from_numpy(rows).to(self.device)
            return (model.global_mean + model.user_bias(users) + model.item_bias.weight.T
                    + vectors @ model.item_factors.weight.T).float()

    def item_vectors(self) -> np.ndarray:
        return self.model.item_factors.weight.detach().float().cpu().numpy()

    def linear_scores(self):
        """score = (p_u + implicit_u) . q_i + b_i + (mu + b_u)."""
        model = self.model
        rows = np.arange(self.data.train.shape[0], dtype=np.int64)
        with self._eval_mode():
            users = torch.cat([self._vectors(rows[lo:lo + PAIR_ROWS]) for lo in range(0, len(rows), PAIR_ROWS)])
            offset = model.user_bias.weight[:, 0] + model.global_mean
            parts = (users, model.item_factors.weight.T, model.item_bias.weight[:, 0], offset)
            return tuple(np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in parts)

    def folds_in(self) -> bool:
        """Whether this model folds a new user in."""
        return True

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user: the implicit sum of the items they rated from the trained y_j, then p_u and b_u by a
        ridge solve against the frozen item factors and biases (ridge l2 x n, training's per-rating L2
        summed over the user's n ratings), then their predictions of every item."""
        model = self.model
        cols = np.asarray(cols, np.int64)
        with torch.no_grad():
            q = model.item_factors.weight.detach().cpu().double().numpy()
            b = model.item_bias.weight.detach().cpu().double().numpy()[:, 0]
            y = model.implicit.weight.detach().cpu().double().numpy()
            mu = float(model.global_mean)
        implicit = y[cols].sum(0) / np.sqrt(len(cols))
        x = np.hstack([q[cols], np.ones((len(cols), 1))])
        target = np.asarray(values, np.float64) - mu - b[cols] - q[cols] @ implicit
        ridge = max(float(self.options.l2) * len(cols), 1e-6)
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ target)
        return (mu + w[-1] + b + q @ (w[:-1] + implicit)).astype(np.float32)
