"""Top-K over whole catalogues, in blocks of users: score a block (on the model's device when the predictor
scores in torch), mask the items to exclude, keep the K best, and never hold more than one block of scores.

The tie rule, everywhere (evaluation, recommendations, ``recommend``): the K highest scores of a row, best
first; among equal scores the lower item column comes first, at the cut-off too (of three items tied for
10th place the lowest column is kept). Excluded items score -inf and are listed last when a row has fewer
than K others.

What it costs (measured on the full-scale N3M split, 294K users x 17,733 items, 2 loaded CPU cores, a block
of 2,048 users): the block's score matrix (36M floats) used to be copied four times (a NumPy offset add, a
defensive copy, the negation inside ``np.argpartition``) and partitioned by NumPy: 4.9 s per block. Kept
in torch and written in place, with ``torch.topk`` instead of argpartition + lexsort: about 1.1 s, most of
it the scoring product itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.progress import progress_bar

BLOCK = 2048  # users per block: 2,048 x 17,770 float32 scores = 146 MB


@runtime_checkable
class TensorScores(Protocol):
    """A predictor that scores in torch (every trained model, ``recsys_core.estimators.Estimator``)."""

    def score_rows_tensor(self, rows: np.ndarray) -> torch.Tensor:
        """``score_rows`` as a float32 tensor on the predictor's device that the caller may overwrite: top-K
        over the whole catalogue masks and selects in it without a copy."""
        ...


def score_block(predictor, rows: np.ndarray) -> torch.Tensor:
    """Scores of every item for ``rows`` as a float32 tensor the caller may overwrite: the predictor's own
    tensor (on its device) when it declares ``TensorScores``, else a copy of ``score_rows``."""
    if isinstance(predictor, TensorScores):
        return predictor.score_rows_tensor(rows)
    return torch.from_numpy(np.array(predictor.score_rows(rows), np.float32, copy=True))


@dataclass(frozen=True)
class ScoreBounds:
    """Bounds of a block of rows' scores: ``lower`` and ``upper`` (``[rows, n_items]``, float32, on the
    predictor's device) hold every item's score between them, and ``exact(positions, cols)`` gives the scores
    of chosen (row position in the block, item column) pairs, computed as the predictor computes them."""

    lower: torch.Tensor
    upper: torch.Tensor
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class BoundedScores(Protocol):
    """A predictor whose scores of a block of rows can be bounded at a fraction of their cost (the tower models,
    ``recsys_core.models.mlp.TowerBounds``): ``best_items`` then scores exactly only the items whose upper
    bound reaches the row's k-th best, and finds the same top K."""

    def score_bounds(self, rows: np.ndarray) -> ScoreBounds | None:
        """The bounds of ``rows``' scores, or None where this predictor has none."""
        ...


# Rows bounded at a time. Arrays over 32 MB (glibc's largest mmap threshold) are mapped afresh for every use and
# page-faulted in: at full-scale N3M (17,412 items) 512 rows (36 MB arrays) spent 2.1 s of system CPU on 2,048
# users' top-10 against 0.3 s with 128 rows, 2.5 s wall against 1.4 s.
PRUNE_BLOCK = 128
PRUNE_MOST = 0.5   # a block whose candidates exceed this share of its pairs is scored whole instead


def pruned_scores(bounded: ScoreBounds, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None
                  ) -> tuple[torch.Tensor, int] | None:
    """(scores, exact pairs scored): ``[len(rows), n_items]``, each row's k best items (after ``exclude``)
    scored exactly and every other item -inf, or None where most pairs would need scoring. The threshold
    of a row is the k-th best exact score of the k items with the highest lower bounds, which is at most the
    row's true k-th best; every item whose upper bound reaches it is scored. An item left out has
    ``score <= upper < threshold <= k-th best``, so it can be neither in the top K nor tied at its cut-off."""
    lower, upper = bounded.lower, bounded.upper
    if exclude is not None:
        mask_items(lower, rows, exclude)
        mask_items(upper, rows, exclude)
    n_rows, n_items = lower.shape
    kk = min(k, n_items)
    if kk == 0:
        return None
    seeds = torch.topk(lower, kk, dim=1).indices
    positions = torch.arange(n_rows, device=lower.device).repeat_interleave(kk)
    seeded = bounded.exact(positions, seeds.reshape(-1)).view(n_rows, kk)
    seeded[lower.gather(1, seeds) == float("-inf")] = float("-inf")  # an excluded item (a row with fewer than k)
    threshold = seeded.min(1, keepdim=True).values
    candidates = upper >= threshold
    n_pairs = int(candidates.sum())
    if n_pairs > PRUNE_MOST * candidates.numel():
        return None
    rows_at, cols_at = candidates.nonzero(as_tuple=True)
    scores = lower.fill_(float("-inf"))  # the lower bounds are spent: their memory holds the scores
    scores[rows_at, cols_at] = bounded.exact(rows_at, cols_at)
    return scores, n_pairs


def scored_parts(predictor, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset in ``rows``, scores of the rows from there with ``exclude`` masked), exact wherever they can
    reach a row's k best: pruned (``pruned_scores``) in parts of ``PRUNE_BLOCK`` rows for a ``BoundedScores``
    predictor whose bounds exist (a part whose bounds prune too little is scored whole), else the whole
    catalogue (``score_block``) of all the rows at once."""
    bounded = predictor.score_bounds(rows[:PRUNE_BLOCK]) if isinstance(predictor, BoundedScores) else None
    if bounded is None:  # no bounds (MF, GMF, ...): the whole catalogue of all the rows at once, as before
        scores = score_block(predictor, rows)
        yield 0, (scores if exclude is None else mask_items(scores, rows, exclude))
        return
    for lo in range(0, len(rows), PRUNE_BLOCK):
        part = rows[lo:lo + PRUNE_BLOCK]
        if lo:
            bounded = predictor.score_bounds(part)
        pruned = None if bounded is None else pruned_scores(bounded, part, k, exclude)
        if pruned is None:
            scores = score_block(predictor, part)
            yield lo, (scores if exclude is None else mask_items(scores, part, exclude))
        else:
            yield lo, pruned[0]


# A run's evaluation (Recall@K of the test users, and of the valid users for ranking models) and its
# recommendations (every user) score the same rows two or three times; where every user's scores fit in this
# many bytes they are kept after the first time. Measured on real ml-latest-small (671 x 9,066, 24 MB): knn-item's
# evaluation and recommendations took 57 s of its 63 s run, two passes over the catalogue of nearly every user.
MEMO_BYTES = 256 << 20


class ScoredOnce:
    """``predictor`` whose full-catalogue scores of a row are computed once, the first time they are asked for,
    and gathered from then on (exactly the same values: each row is scored once). Everything else is the
    predictor's own. ``wrap`` gives the predictor itself where ``n_rows`` x ``n_items`` float32 scores would
    not fit in ``MEMO_BYTES``."""

    def __init__(self, predictor, n_rows: int):
        self.predictor = predictor
        self.n_rows = int(n_rows)
        self.scores: torch.Tensor | None = None
        self.done = np.zeros(self.n_rows, bool)

    @classmethod
    def wrap(cls, predictor, n_rows: int, n_items: int):
        return cls(predictor, n_rows) if n_rows * n_items * 4 <= MEMO_BYTES else predictor

    def score_rows_tensor(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, np.int64)
        missing = np.unique(rows[~self.done[rows]])
        if len(missing):
            fresh = score_block(self.predictor, missing)
            if self.scores is None:
                self.scores = torch.empty((self.n_rows, fresh.shape[1]), dtype=fresh.dtype, device=fresh.device)
            self.scores[torch.from_numpy(missing).to(fresh.device)] = fresh
            self.done[missing] = True
        assert self.scores is not None
        return self.scores[torch.from_numpy(rows).to(self.scores.device)]  # a copy: callers write into it

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)


def mask_items(scores: torch.Tensor, rows: np.ndarray, items: sp.csr_matrix) -> torch.Tensor:
    """Set ``scores[p, j]`` to -inf for every item j stored in row ``rows[p]`` of CSR ``items`` (in place,
    one indexed write for the whole block)."""
    rows = np.asarray(rows, np.int64)
    starts = items.indptr[rows].astype(np.int64)
    lengths = items.indptr[rows + 1].astype(np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return scores
    offsets = np.cumsum(lengths) - lengths
    positions = np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
    owner = torch.from_numpy(np.repeat(np.arange(len(rows), dtype=np.int64), lengths)).to(scores.device)
    cols = torch.from_numpy(items.indices[positions].astype(np.int64)).to(scores.device)
    scores[owner, cols] = float("-inf")
    return scores


def _best_first(values: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row's (value, column) pairs by value descending, then column ascending."""
    by_col = torch.argsort(cols, dim=1)
    values, cols = values.gather(1, by_col), cols.gather(1, by_col)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), cols.gather(1, by_value)


def top_k_tensor(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns), each ``[rows, min(k, n_items)]``, of the k best scores of each row by the tie rule
    of this module. One ``torch.topk`` of k + 1 per row: where the k-th and (k+1)-th values differ, the k
    found are the k best whatever the order of ties inside them; rows where they are equal (a tie across
    the cut-off) take their tied items by ascending column."""
    n_items = scores.shape[1]
    k = min(k, n_items)
    if k == 0 or scores.shape[0] == 0:
        empty = torch.empty((scores.shape[0], k), device=scores.device)
        return empty, empty.long()
    values, cols = torch.topk(scores, min(k + 1, n_items), dim=1, sorted=True)
    if k < n_items:
        cut = (values[:, k - 1] == values[:, k]).nonzero().squeeze(1)
    else:
        cut = torch.arange(scores.shape[0], device=scores.device)  # the whole row is kept: only the order matters
    values, cols = values[:, :k].contiguous(), cols[:, :k].contiguous()
    if len(cut):
        tied = scores[cut]
        kth = values[cut, k - 1].unsqueeze(1)
        above = tied > kth
        at = tied == kth
        room = k - above.sum(1, keepdim=True)
        chosen = above | (at & (at.cumsum(1) <= room))
        picked = chosen.nonzero()[:, 1].view(len(cut), k)  # ascending columns within each row
        cols[cut] = picked
        values[cut] = tied.gather(1, picked)
    return _best_first(values, cols)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first (ties: lower column first)."""
    return top_k_tensor(torch.from_numpy(np.ascontiguousarray(scores)), k)[1].numpy()


def best_items(predictor, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None = None, *,
               block: int = BLOCK, description: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(columns ``[len(rows), k]`` int64, their scores float32) of the ``k`` best items of each row by the
    tie rule above (k at most the number of items), never one stored for that row in ``exclude`` unless a
    row has fewer than ``k`` others (those come last, scored -inf). Scores ``block`` rows at a time;
    ``description`` shows a progress bar."""
    rows = np.asarray(rows, np.int64)
    cols = np.empty((len(rows), k), np.int64)
    values = np.empty((len(rows), k), np.float32)
    bar_scope = progress_bar(description, len(rows), "users") if description else contextlib.nullcontext()
    with bar_scope as bar:
        for lo in range(0, len(rows), block):
            part = rows[lo:lo + block]
            for at, scores in scored_parts(predictor, part, k, exclude):
                top_values, top_cols = top_k_tensor(scores, k)
                del scores
                if top_cols.shape[1] < cols.shape[1]:  # fewer items than k
                    cols, values = cols[:, :top_cols.shape[1]].copy(), values[:, :top_cols.shape[1]].copy()
                cols[lo + at:lo + at + len(top_cols)] = top_cols.cpu().numpy()
                values[lo + at:lo + at + len(top_cols)] = top_values.float().cpu().numpy()
            if bar is not None:
                bar.advance(len(part))
    return cols, values
