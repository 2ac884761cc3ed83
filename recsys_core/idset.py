"""One set of raw int32 ids for every stage: distinct counts (convert), membership (split) and the dense
index raw id -> position (matrices, leave-one-out negatives).

Ids in ``0 .. MAX_BITMAP_ID`` live in a bitmap indexed by id (one byte per possible id: 2.6M Netflix
customer ids cost 2.6 MB, and ``bits[ids] = True`` over a 6.5M-row batch is a few milliseconds); a negative
id or one above the limit switches the set to a sorted array of unique ids (``np.union1d`` per batch,
``searchsorted`` for lookups), so odd ids cost speed, never correctness.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

# Bitmaps (bool) are used up to this id; the position lookup of ``positions`` is int32 of the same length,
# so the dense path costs at most 256 MB + 1 GB at the limit.
MAX_BITMAP_ID = 1 << 28


class IdSet:
    """A growing set of int32 ids with ``add``, ``contains``, ``len``, the sorted ``ids`` and ``positions``.

    ``IdSet(arrays)`` builds the set from several arrays at once (the bitmap is sized once). Positions
    are the ranks of ids in the sorted ``ids`` (rows or columns of a matrix); they are computed on first
    use and recomputed after a later ``add``.
    """

    def __init__(self, id_arrays: Iterable[np.ndarray] = ()) -> None:
        self._bits = np.zeros(0, dtype=bool)
        self._sorted: np.ndarray | None = None  # used once an id is negative or above MAX_BITMAP_ID
        self._ids: np.ndarray | None = None  # cache of the sorted ids
        self._lookup: np.ndarray | None = None  # cache: raw id -> position (bitmap path only)
        arrays = [np.asarray(a) for a in id_arrays]
        arrays = [a for a in arrays if len(a)]
        if not arrays:
            return
        top = max(int(a.max()) for a in arrays)
        if top <= MAX_BITMAP_ID and min(int(a.min()) for a in arrays) >= 0:
            self._bits = np.zeros(top + 1, dtype=bool)  # sized once: no growth, no bounds pass per array
            for a in arrays:
                self._bits[a] = True
        else:
            self._sorted = np.unique(np.concatenate([a.astype(np.int64) for a in arrays]))

    def add(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._ids = self._lookup = None
        top = int(ids.max())
        if self._sorted is None and top <= MAX_BITMAP_ID and int(ids.min()) >= 0:
            if top >= len(self._bits):
                grown = np.zeros(max(top + 1, 2 * len(self._bits)), dtype=bool)
                grown[: len(self._bits)] = self._bits
                self._bits = grown
            self._bits[ids] = True
            return
        if self._sorted is None:
            self._sorted = np.flatnonzero(self._bits).astype(np.int64)
            self._bits = np.zeros(0, dtype=bool)
        self._sorted = np.union1d(self._sorted, np.asarray(ids, dtype=np.int64))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """A bool mask: which of ``ids`` are in the set."""
        if self._sorted is not None:
            return np.isin(ids, self._sorted)
        inside = (ids >= 0) & (ids < len(self._bits))
        if inside.all():
            return self._bits[ids]
        result = np.zeros(len(ids), dtype=bool)
        result[inside] = self._bits[ids[inside]]
        return result

    def __len__(self) -> int:
        return len(self._sorted) if self._sorted is not None else int(np.count_nonzero(self._bits))

    @property
    def ids(self) -> np.ndarray:
        """The ids in the set, sorted, as int32."""
        if self._ids is None:
            self._ids = (self._sorted if self._sorted is not None else np.flatnonzero(self._bits)).astype(np.int32)
        return self._ids

    def _positions_lookup(self) -> np.ndarray | None:
        if self._sorted is not None:
            return None
        if self._lookup is None:
            ids = self.ids
            self._lookup = np.full(len(self._bits), -1, dtype=np.int32)
            self._lookup[ids] = np.arange(len(ids), dtype=np.int32)
        return self._lookup

    def positions_into(self, raw: np.ndarray, out: np.ndarray) -> None:
        """Write the positions of ids known to be in the set into ``out`` (no checks, no temporaries)."""
        lookup = self._positions_lookup()
        if lookup is not None:
            np.take(lookup, raw, out=out, mode="clip")  # "raise" would buffer the whole output
        else:
            out[:] = np.searchsorted(self.ids, raw)

    def positions(self, raw: np.ndarray) -> np.ndarray:
        """Positions of raw ids in the sorted ``ids`` (int32); -1 where an id is not in the set."""
        lookup = self._positions_lookup()
        if lookup is not None:
            inside = (raw >= 0) & (raw < len(lookup))
            if inside.all():
                return lookup[raw]
            out = np.full(raw.shape, -1, dtype=np.int32)
            out[inside] = lookup[raw[inside]]
            return out
        ids = self.ids
        pos = np.searchsorted(ids, raw)
        found = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == raw)
        return np.where(found, pos, -1).astype(np.int32)
