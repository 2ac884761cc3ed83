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

Scoring (evaluation's pairs and full-catalogue Recall, the top-K of every user) is exact KNNBaseline in compiled
loops (numba, ``_kernels``), users spread over the threads: a user's scores of every item read the rows of the
items they rated once, in blocks of columns, summing the positive similarities and their weighted residuals;
only a user who rated more than k items can have a column with more than k positive neighbours, and only those
columns select their k largest, all of a block at once (``top_k_columns``). At full-scale N3M (17,412 items,
319,556 users) that is ~0.3 ms per user who rated at most 40 items and ~4-15 ms per heavier one on one core,
where the numpy gather-and-partition it replaced took 5-130 ms (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.baselines import UserItemBias
from recsys_core.estimators import Estimator
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import ModelOptions, option, options

log = logging.getLogger("recsys_core")

SIM_BLOCK = 512         # item rows of the similarity matrix per block (4 dense 512 x n_items float32 arrays)
COLUMN_BLOCK = 2048     # target columns per pass of whole-row scoring (a user's similarities to them stay in L2)
ROW_CHUNK = 256         # users per task of whole-row scoring, pairs per task: PAIR_CHUNK
PAIR_CHUNK = 1 << 16


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


@functools.cache
def _kernels():
    """The compiled neighbourhood loops (numba, compiled on first use and cached on disk; imported lazily so
    that importing the models does not import numba): ``(rows, pairs)``, see ``ItemKNN._adjust_rows`` and
    ``ItemKNN._adjust_pairs``."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def kth_smallest(a, n, m):
        """The value of order ``m`` (0-based) of ``a[:n]``, reordering ``a[:n]`` (Hoare's quickselect)."""
        lo, hi = 0, n - 1
        while lo < hi:
            x, y, z = a[lo], a[(lo + hi) // 2], a[hi]
            pivot = max(min(x, y), min(max(x, y), z))  # the median of three
            i, j = lo, hi
            while i <= j:
                while a[i] < pivot:
                    i += 1
                while a[j] > pivot:
                    j -= 1
                if i <= j:
                    a[i], a[j] = a[j], a[i]
                    i += 1
                    j -= 1
            if m <= j:
                hi = j
            elif m >= i:
                lo = i
            else:
                break
        return a[m]

    @numba.njit(cache=True, nogil=True)
    def top_k_sums(values, resid, n, k, tmp):
        """(sum w e, sum w) over the k largest of the positive ``values[:n]`` (residuals ``resid``), which
        number more than k, those tied at the k-th place sharing its remaining places equally."""
        c = 0
        for t in range(n):
            if values[t] > 0:
                tmp[c] = values[t]
                c += 1
        kth = kth_smallest(tmp, c, c - k)
        above_w, above_t, tied_e = 0.0, 0.0, 0.0
        n_above, n_tied = 0, 0
        for t in range(n):
            v = values[t]
            if v > kth:
                above_w += v * resid[t]
                above_t += v
                n_above += 1
            elif v == kth:
                tied_e += resid[t]
                n_tied += 1
        rest = (k - n_above) * kth
        return above_w + rest * tied_e / n_tied, above_t + rest

    @numba.njit(cache=True, nogil=True)
    def top_k_columns(sim, rated, c0, crowded, m, n, k, resid, packed, keys, cand, thr, ge, kth, sums, counts,
                      weighted, total):
        """For each column c0 + q, q = ``crowded[r]``, of ``sim`` with more than k positive similarities to the
        ``rated`` items (residuals ``resid``), ``weighted[q]``, ``total[q]``: sum w e and sum w over the k largest
        positive w, those tied at the k-th place sharing its remaining places equally.

        Selecting column by column stalls on every comparison; here every column's k-th largest is found at
        once and branch-free. Positive float32 values order as their bit patterns do, so 15 counting passes over
        the top 16 bits (int16: exponent and 7 mantissa bits) find the k-th largest's top bits; one pass per
        column then picks it among the few values that share them, and one more pass sums."""
        width = m + 24  # rows a power-of-two bytes apart would share cache sets when read down a column
        values = packed[:n * width].reshape((n, width))
        zero = np.float32(0.0)
        for t in range(n):  # the rows were just read for the sums: still in cache
            row = sim[rated[t], c0:]
            for r in range(m):
                values[t, r] = max(row[crowded[r]], zero)
        bits = packed[:n * width].view(np.int32)
        flat = keys[:n * width]
        for i in range(n * width):
            flat[i] = bits[i] >> 16
        top = flat.reshape((n, width))
        key = thr[1, :m]
        key[:] = 0
        for bit in range(14, -1, -1):  # the largest key x with at least k keys >= x: the k-th largest's
            step = np.int16(1 << bit)
            for r in range(m):
                thr[0, r] = key[r] | step
            ge[:m] = 0
            for t in range(n):
                for r in range(m):
                    ge[r] += top[t, r] >= thr[0, r]
            for r in range(m):
                if ge[r] >= k:
                    key[r] = thr[0, r]
        for r in range(m):  # the k-th largest: of the values with its key, the (k - keys above)-th largest
            above, c = 0, 0
            for t in range(n):
                x = top[t, r]
                above += x > key[r]
                cand[c] = values[t, r]
                c += x == key[r]
            need = k - above
            for i in range(need):  # the few candidates, by selection
                best = i
                for j in range(i + 1, c):
                    if cand[j] > cand[best]:
                        best = j
                cand[i], cand[best] = cand[best], cand[i]
            kth[r] = cand[need - 1]
        sums[:, :m] = 0
        counts[:, :m] = 0
        for t in range(n):
            e = resid[t]
            for r in range(m):
                v = values[t, r]
                over = v > kth[r]
                at = v == kth[r]
                sums[0, r] += v * e if over else zero
                sums[1, r] += v if over else zero
                sums[2, r] += e if at else zero
                counts[0, r] += over
                counts[1, r] += at
        for r in range(m):
            rest = np.float32(k - counts[0, r]) * kth[r]
            weighted[crowded[r]] = sums[0, r] + rest * sums[2, r] / np.float32(counts[1, r])
            total[crowded[r]] = sums[1, r] + rest

    @numba.njit(cache=True, nogil=True)
    def longest_row(indptr, rows):
        """The most ratings of any of ``rows`` (at least 1): the size of a kernel's per-user buffers."""
        longest = 1
        for p in range(len(rows)):
            longest = max(longest, indptr[rows[p] + 1] - indptr[rows[p]])
        return longest

    @numba.njit(cache=True, nogil=True)
    def rows_kernel(indptr, indices, resid, rows, sim, k, min_k, damping, block, ge, out):
        """Adds the adjustment of every item for each user ``rows[p]`` to ``out[p]``; ``ge``: ``block`` counters
        of an integer type that holds the longest user's number of ratings (int16 is the fastest)."""
        n_items = sim.shape[1]
        longest = longest_row(indptr, rows)
        packed = np.empty(longest * (block + 24), np.float32)  # a user's similarities to crowded columns
        keys = np.empty(longest * (block + 24), np.int16)
        cand = np.empty(longest, np.float32)
        crowded = np.empty(block, np.int64)
        thr = np.empty((2, block), np.int16)
        kth = np.empty(block, np.float32)
        sums = np.empty((3, block), np.float32)
        counts = np.empty((2, block), np.int32)
        weighted = np.empty(block, np.float32)
        total = np.empty(block, np.float32)
        count = np.empty(block, np.int32)
        zero = np.float32(0.0)
        for p in range(len(rows)):
            lo, hi = indptr[rows[p]], indptr[rows[p] + 1]
            n = hi - lo
            if n == 0 or n < min_k:
                continue
            crowding = n > k  # only then can a column have more than k positive neighbours
            counting = crowding or min_k > 1
            for c0 in range(0, n_items, block):
                b = min(block, n_items - c0)
                weighted[:b] = 0
                total[:b] = 0
                count[:b] = 0
                for t in range(n):
                    e = resid[lo + t]
                    row = sim[indices[lo + t], c0:c0 + b]
                    if counting:
                        for q in range(b):
                            s = max(row[q], zero)
                            weighted[q] += s * e
                            total[q] += s
                            count[q] += s > 0
                    else:
                        for q in range(b):
                            s = max(row[q], zero)
                            weighted[q] += s * e
                            total[q] += s
                if crowding:
                    m = 0
                    for q in range(b):
                        if count[q] > k:
                            crowded[m] = q
                            m += 1
                    if m > 0:
                        top_k_columns(sim, indices[lo:hi], c0, crowded, m, n, k, resid[lo:hi], packed, keys, cand,
                                      thr, ge, kth, sums, counts, weighted, total)
                        for r in range(m):
                            count[crowded[r]] = k
                for q in range(b):
                    if total[q] > 0 and (not counting or count[q] >= min_k):
                        out[p, c0 + q] += weighted[q] / (total[q] + damping)

    @numba.njit(cache=True, nogil=True)
    def pairs_kernel(indptr, indices, resid, rows, cols, sim, k, min_k, damping, out):
        """Adds the adjustment of item ``cols[p]`` for user ``rows[p]`` to ``out[p]``."""
        longest = longest_row(indptr, rows)
        values = np.empty(longest, np.float32)
        tmp = np.empty(longest, np.float32)
        zero = np.float32(0.0)
        for p in range(len(rows)):
            lo, hi = indptr[rows[p]], indptr[rows[p] + 1]
            n = hi - lo
            i = cols[p]
            weighted, total = np.float32(0.0), np.float32(0.0)
            count = 0
            for t in range(n):
                s = max(sim[indices[lo + t], i], zero)
                values[t] = s
                weighted += s * resid[lo + t]
                total += s
                count += s > 0
            if count > k:
                w, tt = top_k_sums(values, resid[lo:hi], n, k, tmp)
                weighted, total, count = np.float32(w), np.float32(tt), k
            if total > 0 and count >= min_k:
                out[p] += weighted / (total + damping)

    return rows_kernel, pairs_kernel


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
        self.ratings = _Ratings(train.indptr.astype(np.int64), train.indices.astype(np.int32), self.residuals)

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
        one = _Ratings(np.array([0, len(rated)], np.int64), np.asarray(rated, np.int32),
                       np.asarray(residuals, np.float32))
        if targets is None:
            out = np.zeros((1, self.sim_array.shape[0]), np.float32)
            self._adjust_rows(one, np.zeros(1, np.int64), out)
            return torch.from_numpy(out[0])
        targets = np.asarray(targets, np.int64)
        out = np.zeros(len(targets), np.float32)
        self._adjust_pairs(one, np.zeros(len(targets), np.int64), targets, out)
        return torch.from_numpy(out)

    def _settings(self) -> tuple[int, int, np.float32]:
        return int(self.options.neighbours), int(self.options.min_k), np.float32(self.options.damping)

    def _adjust_rows(self, ratings: "_Ratings", rows: np.ndarray, out: np.ndarray) -> None:
        """Adds to ``out[p]`` the adjustment of every item for user ``rows[p]`` of ``ratings``, the users split
        in chunks of ``ROW_CHUNK`` over the threads (each user's numbers are the same at any thread count)."""
        rows_kernel = _kernels()[0]
        k, min_k, damping = self._settings()

        def work(lo: int) -> None:
            part = rows[lo:lo + ROW_CHUNK]
            longest = int((ratings.indptr[part + 1] - ratings.indptr[part]).max())
            counters = np.empty(COLUMN_BLOCK, np.int16 if longest < 1 << 15 else np.int32)
            rows_kernel(ratings.indptr, ratings.indices, ratings.residuals, part, self.sim_array, k, min_k, damping,
                        COLUMN_BLOCK, counters, out[lo:lo + ROW_CHUNK])
        _spread(work, range(0, len(rows), ROW_CHUNK))

    def _adjust_pairs(self, ratings: "_Ratings", rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
        """Adds to ``out[p]`` the adjustment of item ``cols[p]`` for user ``rows[p]`` of ``ratings``."""
        pairs_kernel = _kernels()[1]
        k, min_k, damping = self._settings()

        def work(lo: int) -> None:
            pairs_kernel(ratings.indptr, ratings.indices, ratings.residuals, rows[lo:lo + PAIR_CHUNK],
                         cols[lo:lo + PAIR_CHUNK], self.sim_array, k, min_k, damping, out[lo:lo + PAIR_CHUNK])
        _spread(work, range(0, len(rows), PAIR_CHUNK))

    def _user(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.data.train.indptr[row], self.data.train.indptr[row + 1]
        return self.data.train.indices[lo:hi], self.residuals[lo:hi]

    # --- Predictor --------------------------------------------------------------------------------------
    def predict_pairs(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = (self.mean + self.user_bias[rows] + self.item_bias[cols]).astype(np.float32)
        self._adjust_pairs(self.ratings, rows, cols, out)
        return out

    def score_rows_tensor(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, np.int64)
        base = (self.mean + self.user_bias[rows][:, None] + self.item_bias[None, :]).astype(np.float32)
        self._adjust_rows(self.ratings, rows, base)
        return torch.from_numpy(base)

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


class _Ratings(NamedTuple):
    """Users' rated items and residuals, CSR-style: user u's are ``indices[indptr[u]:indptr[u + 1]]``."""
    indptr: np.ndarray    # int64
    indices: np.ndarray   # int32
    residuals: np.ndarray  # float32


def _spread(work, starts) -> None:
    """``work(start)`` for every start, over ``torch.get_num_threads()`` threads (the compiled loops release
    the GIL); each start's numbers do not depend on which thread runs it."""
    starts = list(starts)
    threads = max(1, min(torch.get_num_threads(), len(starts)))
    if threads == 1:
        for start in starts:
            work(start)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, starts))
