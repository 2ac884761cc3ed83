"""Negative sampling for implicit feedback: items a user has not interacted with, uniformly."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def sample_negatives(seen: sp.csr_matrix, users: np.ndarray, n_per_user: int, rng: np.random.Generator,
                     max_rounds: int = 50) -> np.ndarray:
    """``[len(users), n_per_user]`` item columns not stored in ``seen`` for that user (rejection sampling).

    Users who have seen nearly every item may keep a seen item after ``max_rounds`` (reported nowhere:
    with realistic catalogues this does not happen).
    """
    if not seen.has_sorted_indices:  # the keys below must ascend
        seen = seen.copy()
        seen.sort_indices()
    n_items = seen.shape[1]
    keys = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr)) * n_items + seen.indices
    users = np.repeat(np.asarray(users, dtype=np.int64), n_per_user)
    items = rng.integers(0, n_items, users.size)
    for _ in range(max_rounds):
        probe = users * n_items + items
        pos = np.searchsorted(keys, probe)
        clash = (pos < keys.size) & (keys[np.minimum(pos, keys.size - 1)] == probe)
        if not clash.any():
            break
        items[clash] = rng.integers(0, n_items, int(clash.sum()))
    return items.reshape(-1, n_per_user)
