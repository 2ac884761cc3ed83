"""Negative sampling for implicit feedback: items a user has not interacted with, uniformly.

One sampler serves NCF training (negatives drawn with replacement, ``distinct=False``) and the
leave-one-out split (``distinct=True``: the 99 evaluation negatives of a user are different items).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("recsys_core")

# The seen / repeat checks run over blocks of this many draws, so their temporaries stay near 100 MB
# whatever the number of users (a full leave-one-out split draws 480K x 99 = 47.5M negatives).
_CHECK_BLOCK = 1 << 22


def _stored_keys(seen: sp.csr_matrix) -> np.ndarray:
    """Sorted ``row * n_cols + col`` of the stored entries (a canonical CSR lists them in that order)."""
    if not seen.has_canonical_format:
        seen = seen.copy()
        seen.sum_duplicates()
    rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
    return rows * seen.shape[1] + seen.indices


def _is_stored(keys: np.ndarray, probe: np.ndarray) -> np.ndarray:
    if keys.size == 0:
        return np.zeros(probe.shape, dtype=bool)
    pos = np.searchsorted(keys, probe)
    return keys[np.minimum(pos, keys.size - 1)] == probe


def _repeats(draws: np.ndarray) -> np.ndarray:
    """Per row of ``draws`` ([n, k]), True where the value already occurs at a smaller column."""
    order = np.argsort(draws, axis=1, kind="stable")  # equal values keep their column order
    ordered = np.take_along_axis(draws, order, axis=1)
    later = np.zeros(draws.shape, dtype=bool)
    later[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    out = np.zeros(draws.shape, dtype=bool)
    np.put_along_axis(out, order, later, axis=1)
    return out


def _bad_positions(keys: np.ndarray, owners: np.ndarray, items: np.ndarray, n_items: int, per_row: int,
                   candidates: np.ndarray | None, distinct: bool) -> np.ndarray:
    """Sorted flat positions among ``candidates`` (sorted; None: all) that hold a seen item or, with
    ``distinct``, repeat an item of their row; with ``distinct`` every position of a row holding a
    candidate is checked (a redraw can collide with any other draw of its row)."""
    if distinct:
        n_rows = len(items) // per_row
        row_ids = np.arange(n_rows) if candidates is None else np.unique(candidates // per_row)
        step = max(1, _CHECK_BLOCK // per_row)
        blocks = ((row_ids[s:s + step, None] * per_row + np.arange(per_row)).ravel()
                  for s in range(0, len(row_ids), step))
    elif candidates is None:
        blocks = (np.arange(s, min(s + _CHECK_BLOCK, len(items))) for s in range(0, len(items), _CHECK_BLOCK))
    else:
        blocks = (candidates[s:s + _CHECK_BLOCK] for s in range(0, len(candidates), _CHECK_BLOCK))
    found = [np.zeros(0, dtype=np.int64)]
    for flat in blocks:
        bad = _is_stored(keys, owners[flat] * n_items + items[flat])
        if distinct:
            bad |= _repeats(items[flat].reshape(-1, per_row)).ravel()
        found.append(flat[bad])
    return np.concatenate(found)


def sample_negatives(seen: sp.csr_matrix, users: np.ndarray, n_per_user: int, rng: np.random.Generator,
                     max_rounds: int = 50, distinct: bool = False) -> np.ndarray:
    """``[len(users), n_per_user]`` item columns (int64) not stored in ``seen`` for that user, uniformly.

    Rejection sampling: all draws at once, then only the draws that hit a seen item (or, with
    ``distinct``, repeat an item of their row) are drawn again, for up to ``max_rounds`` rounds; a row
    still short after that (a user who saw nearly every item) gets an exact choice among its unseen
    items. ``distinct=True`` needs at least ``n_per_user`` unseen items per user (ValueError otherwise);
    without it a user who has seen every item keeps seen items (logged as a warning), as there is
    nothing else to draw. Each result is uniform over the user's unseen items (with ``distinct``, over
    ordered tuples of distinct unseen items): the redraw decisions depend only on which draws are seen
    or equal, never on which item they are. For a given ``rng`` state the draws of a run that needs no
    exact choice are those of the sampler NCF used before the leave-one-out split shared it.
    """
    if not seen.has_sorted_indices:  # the keys below must ascend
        seen = seen.copy()
        seen.sort_indices()
    n_items = seen.shape[1]
    keys = _stored_keys(seen)
    users = np.asarray(users, dtype=np.int64)
    owners = np.repeat(users, n_per_user)
    items = rng.integers(0, n_items, owners.size)
    if n_per_user == 0 or owners.size == 0:
        return items.reshape(len(users), n_per_user)
    candidates = None  # all draws
    for _ in range(max_rounds):
        candidates = _bad_positions(keys, owners, items, n_items, n_per_user, candidates, distinct)
        if candidates.size == 0:
            break
        items[candidates] = rng.integers(0, n_items, candidates.size)
    else:
        candidates = _bad_positions(keys, owners, items, n_items, n_per_user, candidates, distinct)
    if candidates.size:
        _exact_choice(seen, owners, items, n_per_user, candidates, rng, distinct)
    return items.reshape(len(users), n_per_user)


def _exact_choice(seen: sp.csr_matrix, owners: np.ndarray, items: np.ndarray, per_row: int, bad: np.ndarray,
                  rng: np.random.Generator, distinct: bool) -> None:
    """Redraw the ``bad`` positions among each row's unseen items (the whole row with ``distinct``)."""
    n_items = seen.shape[1]
    rows, first = np.unique(bad // per_row, return_index=True)
    bounds = list(first[1:]) + [len(bad)]
    starved = 0
    for row, lo, hi in zip(rows, first, bounds):
        user = owners[row * per_row]
        free = np.setdiff1d(np.arange(n_items), seen.indices[seen.indptr[user]:seen.indptr[user + 1]])
        if distinct:
            if len(free) < per_row:
                raise ValueError(f"user row {user} has {len(free)} unseen items, fewer than the {per_row} "
                                 f"distinct negatives asked for")
            items[row * per_row:(row + 1) * per_row] = rng.choice(free, per_row, replace=False)
        elif len(free):
            items[bad[lo:hi]] = rng.choice(free, hi - lo)
        else:
            starved += 1
    if starved:
        log.warning("negative sampling: %d user row(s) have seen every item and keep seen items as negatives",
                    starved)
