"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): an item-item weight matrix in
closed form, a strong top-K ranker for implicit feedback.

With X the binary users x items training matrix (rated = 1) and lambda the L2 weight:

    P = (X^T X + lambda I)^-1,   B = I - P / diag(P)  (column j divided by P_jj),  diag(B) = 0,

and a user's scores are x_u B. No optimizer, no epochs: ``fit`` computes the Gram matrix and one inverse.
Cost: the Gram matrix is sum over users of n_u^2 sparse products (scipy, one item block per thread), the
inverse n_items^3 (LAPACK Cholesky in float32, in place: 5e-7 relative error against float64 at 8,000
items, lambda 200); memory about one n_items^2 float32 matrix plus the Gram product's blocks (1.3 GB at
Netflix's 17,770 items).
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
from scipy.linalg import lapack

from recsys_core.errors import RecsysError
from recsys_core.estimators import Estimator
from recsys_core.interactions import binary, group_pairs_by_row, torch_csr
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import ModelOptions, option, options

log = logging.getLogger("recsys_core")

GRAM_BLOCK = 1024       # item rows of the Gram matrix per sparse product (~70 MB of output per block at Netflix)
PAIR_CHUNK = 1 << 24    # gathered weights per step of predict_pairs (64 MB)


# lambda 500 (Steck's ML-20M value) is also the best of 50/200/500/2000 on a generated leave-one-out split with
# user-item affinity (tests/train_fixtures.py, seed 1, 2,000 x 800): HR@10 0.635 (200: 0.628, 2000: 0.624).
@options
class EASEOptions(ModelOptions):
    reg: float = option(500.0, "L2 weight lambda added to the diagonal of X^T X (Steck: 500 on ML-20M, 1000 on "
                               "Netflix)", low=0, low_open=True, log=True)
    # A sweep's default space (docs/sweeps.md).
    sweep_space: ClassVar[dict] = {"reg": {"low": 10.0, "high": 5000.0, "log": True}}


def item_gram(by_item: sp.csr_matrix, by_user: sp.csr_matrix, threads: int) -> np.ndarray:
    """X^T X as a dense float32 array from the items x users and users x items forms of binary X, one block
    of item rows per sparse product, the blocks spread over ``threads`` (scipy's products release the GIL)."""
    n = by_item.shape[0]
    gram = np.empty((n, n), np.float32)

    def block(lo: int) -> None:
        gram[lo:lo + GRAM_BLOCK] = (by_item[lo:lo + GRAM_BLOCK] @ by_user).toarray()

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(block, range(0, n, GRAM_BLOCK)))
    return gram


def spd_inverse(matrix: np.ndarray, block: int = GRAM_BLOCK) -> np.ndarray:
    """The inverse of a symmetric positive definite float32 array, computed in its own memory by LAPACK's
    Cholesky routines (potrf + potri: n^3 flops against LU's 2n^3, no second n^2 buffer). Measured at
    6,000 items on the shared 2-core machine: 21 s against 32 s for torch.linalg.inv."""
    n = matrix.shape[0]
    # A C-order symmetric array is its own transpose in Fortran order: LAPACK sees it without a copy.
    factor, info = lapack.spotrf(matrix.T, lower=0, overwrite_a=1, clean=0)
    if info == 0:
        factor, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise RecsysError(f"X^T X + reg I is not positive definite (LAPACK info {info}); raise reg")
    # potri filled one triangle (the lower one of the C-order array): mirror it, one block of rows at a time
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        corner = matrix[lo:hi, lo:hi]
        corner[...] = np.tril(corner) + np.tril(corner, -1).T
        matrix[lo:hi, hi:] = matrix[hi:, lo:hi].T
    return matrix


@register("ease", options=EASEOptions,
          help="EASE (Steck 2019): closed-form item-item weights B = I - P/diag(P), P = (X^T X + lambda I)^-1 "
               "(ranking)")
class EASE(Estimator):
    options: EASEOptions
    family = "item-item"
    rating_model = False

    def fit(self, data: SplitMatrices, run_dir: Path | None = None, resume: bool = False) -> dict:
        started = time.perf_counter()
        self._bind(data)
        gram = item_gram(binary(data.train_by_item), self.x, torch.get_num_threads())
        gram_seconds = time.perf_counter() - started
        gram[np.diag_indices_from(gram)] += np.float32(self.options.reg)
        weights = torch.from_numpy(spd_inverse(gram))
        # B = I - P / diag(P): column j of -P divided by P_jj, then a zero diagonal (in place)
        weights.div_(-weights.diagonal().clone())
        weights.fill_diagonal_(0.0)
        self.weights = weights.to(self.device)
        seconds = time.perf_counter() - started
        log.info("ease: %d items, Gram matrix %.1f s, inverse %.1f s", self.x.shape[1], gram_seconds,
                 seconds - gram_seconds)
        return {"history": None, "gram_seconds": round(gram_seconds, 3),
                "solve_seconds": round(seconds - gram_seconds, 3)}

    def _bind(self, data: SplitMatrices) -> None:
        self.data = data
        self.x = binary(data.train)

    def state_dict(self) -> dict:
        return {"weights": self.weights.cpu()}

    def load(self, state: dict, data: SplitMatrices) -> "EASE":
        self._bind(data)
        self.weights = state["weights"].to(self.device)
        return self

    # --- Predictor --------------------------------------------------------------------------------------
    def score_rows_tensor(self, rows) -> torch.Tensor:
        inputs = torch_csr(self.x[np.asarray(rows, np.int64)], self.device)
        return inputs @ self.weights

    def predict_pairs(self, rows, cols) -> np.ndarray:
        """score(u, j) = sum of B[i, j] over the items i of u: gathered, not a whole row per pair."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        result = np.zeros(len(rows), np.float32)
        order, _, _ = group_pairs_by_row(rows, cols)
        lengths = np.diff(self.x.indptr)[rows[order]].astype(np.int64)
        ends = np.cumsum(lengths)
        flat = self.weights.reshape(-1)
        n_items = self.weights.shape[1]
        lo = 0
        while lo < len(order):  # chunks of pairs with at most PAIR_CHUNK gathered weights (at least one pair)
            done = ends[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(ends, done + PAIR_CHUNK, side="right")))
            pairs, n = order[lo:hi], lengths[lo:hi]
            starts = self.x.indptr[rows[pairs]].astype(np.int64)
            positions = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(n.sum())
            keys = self.x.indices[positions].astype(np.int64) * n_items + np.repeat(cols[pairs], n)
            picked = flat[torch.from_numpy(keys).to(self.device)]
            owner = torch.from_numpy(np.repeat(np.arange(len(pairs)), n)).to(self.device)
            result[pairs] = torch.zeros(len(pairs), device=self.device).index_add_(0, owner, picked).cpu().numpy()
            lo = hi
        return result

    def folds_in(self) -> bool:
        """Whether this model folds a new user in."""
        return True

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user's scores: the sum of the weight rows of the items they rated (values are ignored:
        EASE reads interactions)."""
        return self.weights[torch.as_tensor(np.asarray(cols, np.int64), device=self.device)].sum(0).cpu().numpy()
