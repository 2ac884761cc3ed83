"""The one negative sampler: NCF training draws (with replacement) and leave-one-out's distinct negatives."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_core.sampling import sample_negatives


def random_seen(n_users, n_items, density, seed):
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=seed)
    m.data[:] = 1
    return m


def reference_ncf_sampler(seen, users, n_per_user, rng, max_rounds=50):
    """The sampler NCF training used before the split shared it (kept to pin its draws)."""
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


@pytest.mark.parametrize("seed", range(6))
def test_ncf_draws_are_those_of_the_previous_sampler(seed):
    rng = np.random.default_rng(100 + seed)
    seen = random_seen(int(rng.integers(5, 300)), int(rng.integers(20, 400)), [0.01, 0.1, 0.5][seed % 3], seed)
    users = rng.integers(0, seen.shape[0], 3000)
    n = int(rng.integers(1, 8))
    got = sample_negatives(seen, users, n, np.random.default_rng(seed))
    assert np.array_equal(got, reference_ncf_sampler(seen, users, n, np.random.default_rng(seed)))
    dense = seen.toarray().astype(bool)
    assert got.shape == (len(users), n) and not dense[users[:, None], got].any()


def test_users_who_saw_nearly_everything_get_unseen_items():
    seen = sp.csr_matrix(np.array([[1] * 199 + [0], [1] * 150 + [0] * 50, [0] * 200]))  # user 0: only item 199 free
    users = np.array([0, 1, 2, 0])
    got = sample_negatives(seen, users, 30, np.random.default_rng(0))
    assert (got[[0, 3]] == 199).all()
    assert not seen.toarray()[users[:, None], got].any()
    distinct = sample_negatives(seen, np.array([1, 2]), 50, np.random.default_rng(0), distinct=True)
    assert sorted(distinct[0]) == list(range(150, 200)) and len(set(distinct[1])) == 50
    with pytest.raises(ValueError, match="fewer than the 2 distinct negatives"):
        sample_negatives(seen, np.array([0]), 2, np.random.default_rng(0), distinct=True)


def test_distinct_negatives_are_unseen_distinct_seeded_and_uniform():
    seen = random_seen(40, 60, 0.3, 1)
    users = np.repeat(np.arange(40), 50)  # each user 50 times: 2,000 rows of 20 distinct negatives
    a = sample_negatives(seen, users, 20, np.random.default_rng(7), distinct=True)
    b = sample_negatives(seen, users, 20, np.random.default_rng(7), distinct=True)
    assert np.array_equal(a, b) and not np.array_equal(a, sample_negatives(seen, users, 20, np.random.default_rng(8),
                                                                                 distinct=True))
    dense = seen.toarray().astype(bool)
    assert not dense[users[:, None], a].any()
    assert all(len(set(row)) == 20 for row in a)
    # uniform over each user's unseen items: every unseen item of user 0 is drawn 50 * 20 / free times on average
    free = np.flatnonzero(~dense[0])
    counts = np.bincount(a[users == 0].ravel(), minlength=60)[free]
    expected = 50 * 20 / len(free)
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # the position in the row carries no bias either: the first column is uniform too
    first = np.bincount(a[users == 0][:, 0], minlength=60)[free]
    assert first.sum() == 50 and first.max() <= 8


def test_empty_requests():
    seen = random_seen(5, 10, 0.2, 0)
    assert sample_negatives(seen, np.array([], np.int64), 4, np.random.default_rng(0)).shape == (0, 4)
    assert sample_negatives(seen, np.array([1, 2]), 0, np.random.default_rng(0), distinct=True).shape == (2, 0)
