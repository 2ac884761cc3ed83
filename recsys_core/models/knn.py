"""Item-item neighbourhood model on baseline residuals (Koren 2010, "Factor in the neighbors", section 2.2;
Surprise's ``KNNBaseline`` with ``pearson_baseline`` item similarities): the model the Netflix Prize teams
and Surprise users compare a collaborative-filtering pipeline against.

With b_ui = mu + b_u + b_i the user+item bias baseline (``recsys_core.baselines.UserItemBias``, Surprise's
BaselineOnly fit) and e_ui = r_ui - b_ui the training residuals,

    sim(i, j) = (n_ij - 1) / (n_ij - 1 + shrinkage) * sum_u e_ui e_uj / sqrt(sum_u e_ui^2 * sum_u e_uj^2),

the sums over the n_ij users who rated both items (Surprise's shrunk ``pearson_baseline``; 0 where
n_ij < min_support), and a prediction is

    r^_ui = b_ui + sum_{j in N^k(i; u)} sim(i, j) e_uj / (damping + sum_{j in N^k(i; u)} sim(i, j)),

N^k(i; u) the k = ``neighbours`` items the user rated that are most similar to i, of which only positive
similarities count (Surprise's ``KNNBaseline.estimate``, which has damping 0). Neighbours tied at the k-th place
share its remaining places equally (Surprise keeps whichever it met first), so a prediction never depends on
the order of the user's ratings. The damping keeps a prediction
resting on a few weakly similar neighbours near the baseline (the shrunk interpolation of Koren's
neighbourhood models): chosen on valid parts, it is what lets the model beat the biases by more than
Surprise's KNNBaseline does (docs/train.md). No optimizer, no epochs.

Similarities are computed in blocks of item rows, each block four sparse products over the users
(E^T E, (E o E)^T P, P^T (E o E), P^T P with E the residual and P the rating pattern), the blocks spread
over threads as EASE's Gram matrix is (scipy's products release the GIL); never pair by pair. The dense
n_items^2 float32 matrix is the model (Surprise keeps the same): 295 MB at ml-latest-small's 8,589 items,
1.26 GB at Netflix's 17,770 (BENCHMARKS.md); its saved state keeps one triangle (half of that).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.baselines import UserItemBias
from recsys_core.estimators import Estimator
from recsys_core.interactions import group_pairs_by_row
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import ModelOptions, option, options

log = logging.getLogger("recsys_core")

SIM_BLOCK = 512         # item rows of the similarity matrix per block (4 dense 512 x n_items float32 arrays)
GATHER = 1 << 23        # gathered similarities per step of scoring (32 MB of float32)


@options
class KNNOptions(ModelOptions):
    # Surprise's k; ``k`` of every model is the cut-off of the ranking metrics and recommendation lists
    neighbours: int = option(40, "the neighbours of a prediction: the items the user rated that are most similar "
                                 "to the predicted one (Surprise's k, default 40)", low=1)
    min_k: int = option(1, "fewer neighbours with a positive similarity than this: the baseline alone", low=1)
    shrinkage: float = option(100.0, "shrinkage of the Pearson-baseline similarity towards 0: multiplied by "
                                     "(n_ij - 1) / (n_ij - 1 + shrinkage), n_ij the users who rated both "
                                     "(Surprise's 100)", low=0)
    min_support: int = option(1, "item pairs rated by fewer common users have similarity 0", low=1)
    reg_u: float = option(15.0, "L2 of the user biases of the baseline (Surprise's BaselineOnly: 15)", low=0)
    reg_i: float = option(10.0, "L2 of the item biases of the baseline (Surprise's BaselineOnly: 10)", low=0)
    # chosen on the valid parts of real ml-latest-small (chrono, random) and the generated sample: docs/train.md
    damping: float = option(0.3, "added to the sum of the neighbours' similarities that divides their weighted "
                                 "residuals, so a prediction from a few weak neighbours stays near the baseline "
                                 "(0: Surprise's KNNBaseline, a plain weighted mean)", low=0)
    # A sweep's default space (docs/sweeps.md)
    sweep_space: ClassVar[dict] = {"neighbours": {"choices": [20, 40, 80, 160]},
                                   "shrinkage": {"low": 10.0, "high": 1000.0, "log": True},
                                   "damping": {"low": 0.0, "high": 2.0}}


def residual_matrices(train: sp.csr_matrix, baseline: UserItemBias):
    """(E users x items, E items x users, P users x items, P items x users, E o E users x items, E o E
    items x users) as float32 CSR, E the residuals r - mu - b_u - b_i at the stored ratings."""
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    resid = (train.data - baseline.mean - baseline.user_bias[rows] - baseline.item_bias[train.indices])
    e = sp.csr_matrix((resid.astype(np.float32), train.indices, train.indptr), shape=train.shape)
    p = sp.csr_matrix((np.ones(train.nnz, np.float32), train.indices, train.indptr), shape=train.shape)
    sq = sp.csr_matrix((np.square(resid).astype(np.float32), train.indices, train.indptr), shape=train.shape)
    return e, e.T.tocsr(), p, p.T.tocsr(), sq, sq.T.tocsr()


def pearson_baseline(train: sp.csr_matrix, baseline: UserItemBias, shrinkage: float, min_support: int = 1,
                     threads: int = 1, block: int = SIM_BLOCK) -> np.ndarray:
    """The shrunk Pearson-baseline similarity of every item pair as a dense float32 ``[n_items, n_items]``
    array, diagonal 1 (Surprise's ``similarities.pearson_baseline``), one block of item rows per step."""
    e, e_t, p, p_t, sq, sq_t = residual_matrices(train, baseline)
    n = train.shape[1]
    sim = np.empty((n, n), np.float32)

    def fill(lo: int) -> None:
        hi = min(lo + block, n)
        prods = (e_t[lo:hi] @ e).toarray()
        freq = (p_t[lo:hi] @ p).toarray()
        denom = (sq_t[lo:hi] @ p).toarray()   # sum over common users of e_ui^2
        denom *= (p_t[lo:hi] @ sq).toarray()  # times the sum of e_uj^2
        np.sqrt(denom, out=denom)
        out = sim[lo:hi]
        np.divide(prods, denom, out=out, where=denom > 0)
        out[denom <= 0] = 0.0
        freq -= 1.0
        out *= freq / (freq + np.float32(shrinkage)) if shrinkage > 0 else (freq > 0)
        out[freq < min_support - 1] = 0.0
        out[np.arange(hi - lo), np.arange(lo, hi)] = 1.0

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(fill, range(0, n, block)))
    return sim


@register("knn-item", options=KNNOptions,
          help="item-item kNN on the residuals of the user+item bias baseline (Koren 2010; Surprise's "
               "KNNBaseline): shrunk Pearson-baseline similarities, the k most similar items the user rated")
class ItemKNN(Estimator):
    options: KNNOptions
    family = "item-item"

    def fit(self, data: SplitMatrices, run_dir: Path | None = None, resume: bool = False) -> dict:
        c = self.options
        started = time.perf_counter()
        baseline = UserItemBias(data.train, reg_u=c.reg_u, reg_i=c.reg_i)
        sim = pearson_baseline(data.train, baseline, c.shrinkage, c.min_support, torch.get_num_threads())
        self._bind(data, baseline.mean, baseline.user_bias, baseline.item_bias, torch.from_numpy(sim))
        seconds = time.perf_counter() - started
        log.info("knn-item: %d items, similarities in %.1f s", sim.shape[0], seconds)
        return {"history": None, "similarity_seconds": round(seconds, 3)}

    def _bind(self, data: SplitMatrices, mean: float, user_bias: np.ndarray, item_bias: np.ndarray,
              sim: torch.Tensor) -> None:
        self.data = data
        self.mean = float(mean)
        self.user_bias = np.asarray(user_bias, np.float64)
        self.item_bias = np.asarray(item_bias, np.float64)
        self.sim = sim  # CPU: scoring gathers and selects per user, where numpy beats torch (below)
        self.sim_array = sim.numpy()
        train = data.train
        rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
        self.residuals = (train.data - self.mean - self.user_bias[rows] - self.item_bias[train.indices]
                          ).astype(np.float32)

    def state_dict(self) -> dict:
        """The biases and the upper triangle of the symmetric similarity matrix, row after row."""
        sim = self.sim.cpu()
        n = sim.shape[0]
        packed = torch.empty(n * (n + 1) // 2, dtype=torch.float32)
        at = 0
        for i in range(n):
            packed[at:at + n - i] = sim[i, i:]
            at += n - i
        return {"mean": torch.tensor(self.mean, dtype=torch.float64), "user_bias": torch.from_numpy(self.user_bias),
                "item_bias": torch.from_numpy(self.item_bias), "sim_upper": packed}

    def load(self, state: dict, data: SplitMatrices) -> "ItemKNN":
        packed = state["sim_upper"]
        n = len(state["item_bias"])
        sim = torch.empty(n, n, dtype=torch.float32)
        at = 0
        for i in range(n):
            sim[i, i:] = packed[at:at + n - i]
            at += n - i
        for lo in range(0, n, SIM_BLOCK):  # mirror the upper triangle, one block of rows at a time
            hi = min(lo + SIM_BLOCK, n)
            corner = sim[lo:hi, lo:hi]
            corner.copy_(torch.triu(corner) + torch.triu(corner, 1).T)
            sim[hi:, lo:hi] = sim[lo:hi, hi:].T
        self._bind(data, float(state["mean"]), state["user_bias"].numpy(), state["item_bias"].numpy(), sim)
        return self

    # --- the neighbourhood ------------------------------------------------------------------------------
    def _adjustment(self, rated: np.ndarray, residuals: np.ndarray, targets: np.ndarray | None) -> torch.Tensor:
        """sum sim(i, j) e_uj / (damping + sum sim(i, j)) over the k most similar of the ``rated`` columns
        (residuals ``residuals``) with positive similarity, ties at the k-th place sharing it, for each target
        column i (all when None); 0 without ``min_k`` such neighbours."""
        n_targets = self.sim.shape[0] if targets is None else len(targets)
        out = torch.zeros(n_targets, dtype=torch.float32)
        if len(rated) == 0 or n_targets == 0:
            return out
        k, min_k = int(self.options.neighbours), int(self.options.min_k)
        damping = np.float32(self.options.damping)
        rated = np.asarray(rated, np.int64)
        resid = np.asarray(residuals, np.float32)
        sums = np.vstack([resid, np.ones_like(resid)])  # one product gives sum w e and sum w
        sim = self.sim_array
        step = max(1, GATHER // len(rated))
        for lo in range(0, n_targets, step):
            # numpy throughout: torch's advanced indexing took 12 of the 13 s of ml-latest-small's test pairs,
            # and its multi-threaded reductions stall on a loaded machine (OpenMP threads waiting for cores)
            block = (sim[rated, lo:lo + step] if targets is None
                     else sim[np.ix_(rated, np.asarray(targets[lo:lo + step], np.int64))])
            # Only positive similarities count: a column with at most k of them takes them all (one product);
            # only columns with more go through the selection of their k largest.
            positive = np.maximum(block, 0.0, out=block)  # the gather is a copy: clipped in place
            count = np.count_nonzero(positive, axis=0)
            weighted, total = sums @ positive
            crowded = np.flatnonzero(count > k)
            if len(crowded):
                # crowded x rated, each row contiguous: partitioning along rows is 5x faster than down columns
                part = np.ascontiguousarray(positive[:, crowded].T)
                kth = np.partition(part, len(rated) - k, axis=1)[:, len(rated) - k]  # the k-th largest (> 0)
                above = part > kth[:, None]
                n_above = above.sum(1)
                # the neighbours tied at the k-th place share its remaining slots equally, so a prediction
                # never depends on the order of the user's ratings
                tied = part == kth[:, None]
                tied_resid, n_tied = np.where(tied, resid, 0.0).sum(1), tied.sum(1)
                kept = np.where(above, part, 0.0)
                total[crowded] = kept.sum(1) + (k - n_above) * kth
                weighted[crowded] = kept @ resid + (k - n_above) * kth * tied_resid / n_tied
                count[crowded] = k
            enough = (count >= min_k) & (total > 0)
            out[lo:lo + block.shape[1]] = torch.from_numpy(
                np.where(enough, weighted / np.where(enough, total + damping, 1.0), 0.0).astype(np.float32))
        return out

    def _user(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.data.train.indptr[row], self.data.train.indptr[row + 1]
        return self.data.train.indices[lo:hi], self.residuals[lo:hi]

    # --- Predictor --------------------------------------------------------------------------------------
    def predict_pairs(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = (self.mean + self.user_bias[rows] + self.item_bias[cols]).astype(np.float32)
        if len(rows) == 0:
            return out
        order, unique_rows, inverse = group_pairs_by_row(rows, cols)
        bounds = np.searchsorted(inverse, np.arange(len(unique_rows) + 1))
        for p, row in enumerate(unique_rows):
            pairs = order[bounds[p]:bounds[p + 1]]
            out[pairs] += self._adjustment(*self._user(int(row)), cols[pairs]).numpy()
        return out

    def score_rows_tensor(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, np.int64)
        base = torch.from_numpy((self.mean + self.user_bias[rows][:, None] + self.item_bias[None, :]
                                 ).astype(np.float32))
        for p, row in enumerate(rows):
            base[p] += self._adjustment(*self._user(int(row)), None)
        return base

    def folds_in(self) -> bool:
        """Whether this model folds a new user in."""
        return True

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user's bias by the baseline's own user step against the trained item biases,
        b_u = sum (r - mu - b_i) / (reg_u + n), then their neighbourhood predictions of every item."""
        cols = np.asarray(cols, np.int64)
        gap = np.asarray(values, np.float64) - self.mean - self.item_bias[cols]
        user_bias = gap.sum() / (float(self.options.reg_u) + len(cols))
        adjust = self._adjustment(cols, (gap - user_bias).astype(np.float32), None).numpy()
        return (self.mean + user_bias + self.item_bias + adjust).astype(np.float32)

    def item_similarities(self, cols: np.ndarray) -> np.ndarray:
        """The similarity of each of ``cols`` to every item: ``[len(cols), n_items]`` (similar items)."""
        return self.sim_array[np.asarray(cols, np.int64)]
