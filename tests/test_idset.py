"""IdSet, the one id set of convert (distinct counts), split (membership) and matrices (dense index)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core import idset as idset_mod
from recsys_core.idset import IdSet

BOTH_PATHS = pytest.mark.parametrize("bitmap_limit", [idset_mod.MAX_BITMAP_ID, 100])


@BOTH_PATHS
def test_growing_set_counts_and_membership(monkeypatch, bitmap_limit):
    monkeypatch.setattr(idset_mod, "MAX_BITMAP_ID", bitmap_limit)
    ids = IdSet()
    assert len(ids) == 0 and ids.ids.tolist() == [] and not ids.contains(np.array([0, 5], np.int32)).any()
    ids.add(np.array([5, 90, 5], np.int32))
    ids.add(np.array([3000, 7], np.int32))
    ids.add(np.array([], np.int32))
    assert len(ids) == 4 and ids.ids.tolist() == [5, 7, 90, 3000] and ids.ids.dtype == np.int32
    assert ids.contains(np.array([5, 7, 90, 3000, 6, 4000, -5], np.int32)).tolist() == [True] * 4 + [False] * 3
    ids.add(np.array([-2], np.int32))  # a negative id switches to the sorted path
    assert ids.contains(np.array([-2, 5, -5], np.int32)).tolist() == [True, True, False] and len(ids) == 5
    assert ids.ids.tolist() == [-2, 5, 7, 90, 3000]


@BOTH_PATHS
def test_index_positions_from_several_arrays(monkeypatch, bitmap_limit):
    monkeypatch.setattr(idset_mod, "MAX_BITMAP_ID", bitmap_limit)
    index = IdSet([np.array([900, 5, 77], np.int32), np.array([], np.int32), np.array([5, 3], np.int32)])
    assert index.ids.tolist() == [3, 5, 77, 900] and len(index) == 4
    assert index.positions(np.array([900, 3, 77, 4, 10_000, -1], np.int32)).tolist() == [3, 0, 2, -1, -1, -1]
    out = np.full(3, -9, np.int32)
    index.positions_into(np.array([77, 3, 900], np.int32), out)
    assert out.tolist() == [2, 0, 3]
    index.add(np.array([4], np.int32))  # positions follow a later add
    assert index.positions(np.array([4, 900], np.int32)).tolist() == [1, 4]


def test_matches_numpy_on_random_batches():
    rng = np.random.default_rng(0)
    ids, reference = IdSet(), set()
    for _ in range(20):
        batch = rng.integers(0, 5000, int(rng.integers(0, 300))).astype(np.int32)
        ids.add(batch)
        reference |= set(batch.tolist())
    probe = np.arange(-10, 5010, dtype=np.int32)
    assert ids.ids.tolist() == sorted(reference) and len(ids) == len(reference)
    assert ids.contains(probe).tolist() == [int(p) in reference for p in probe]
    expected = {v: k for k, v in enumerate(sorted(reference))}
    assert ids.positions(probe).tolist() == [expected.get(int(p), -1) for p in probe]
