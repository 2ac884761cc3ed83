"""Errors broken down where models lose: the held-out pairs of a part grouped by how much training knows
of their user and item, and a predictor's RMSE (and HR@K) per group.

Buckets, from the split's training matrix alone:
- the user's number of training ratings (the length of their train CSR row): ``0``, ``1-5``, ``6-20``,
  ``21-100``, ``>100``; every held-out pair is in exactly one of these;
- ``new items``: pairs whose item has no training rating. It overlaps the user buckets (a pair of a new
  item is also counted in its user's bucket). The time, chrono and random protocols drop the held-out
  ratings of such items when splitting (random keeps them with ``keep_unseen``); leave-one-out keeps them.
  A bucket no held-out pair falls in is reported as absent (counts 0, metric null, ``absent`` says why),
  never filled in.

Rating metrics: RMSE of the clipped predictions per bucket, with the held-out ratings and their distinct
users. Ranking metrics (sampled negatives, leave-one-out test): HR@K per bucket of the ranked users (one
held-out item each; its item decides ``new items``).

Cost: one ``Buckets`` per split (two bincounts over train's CSR arrays, done once for the model and every
baseline), then per predictor and part one gather and a few bincounts over the held-out pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# (label, least, most) training ratings of the user; None: no upper bound
USER_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0), ("1-5", 1, 5), ("6-20", 6, 20), ("21-100", 21, 100), (">100", 101, None))
NEW_ITEMS = "new items"
LABELS = tuple(label for label, _, _ in USER_BUCKETS) + (NEW_ITEMS,)
# user bucket of a row = number of lower bounds (after the first) at or below its training count
_LOWER = np.array([least for _, least, _ in USER_BUCKETS[1:]], np.int64)


@dataclass(frozen=True)
class BucketRow:
    """One bucket of one part (valid or test) for one predictor.

    ``ratings``/``users``/``rmse``: the held-out ratings in the bucket, their distinct users and the RMSE
    over them; all None when the predictor's rating metrics were not measured (a ranking model).
    ``ranked_users``/``hit_rate``: the users ranked among their sampled negatives and HR@K over them; None
    when the part has no sampled negatives. A metric is None also when its bucket is empty (or the
    predictor has no ranking: the global mean), and ``absent`` then says why the bucket is empty.
    """

    bucket: str
    ratings: int | None = None
    users: int | None = None
    rmse: float | None = None
    ranked_users: int | None = None
    hit_rate: float | None = None
    absent: str | None = None

    def as_json(self, k: int) -> dict:
        """The row as metrics.json stores it: the measured families only, HR@K under ``hr@K``, a metric that
        is not finite (a diverged model's NaN) as null: JSON has no NaN."""
        out: dict = {"bucket": self.bucket}
        if self.ratings is not None:
            out.update(ratings=self.ratings, users=self.users, rmse=_finite(self.rmse))
        if self.ranked_users is not None:
            out.update({"ranked_users": self.ranked_users, f"hr@{k}": _finite(self.hit_rate)})
        if self.absent is not None:
            out["absent"] = self.absent
        return out


_DROPPED = "the time, chrono and random protocols drop them when splitting; random keeps them with keep_unseen"


def _why_absent(label: str) -> str:
    if label == NEW_ITEMS:
        return f"no held-out rating of an item without training ratings ({_DROPPED})"
    if label == "0":
        return f"no held-out rating of a user without training ratings ({_DROPPED})"
    return f"no held-out rating of a user with {label} training ratings"


@dataclass(frozen=True)
class Buckets:
    """Which bucket each user row and item column of a split falls in, from its training matrix."""

    user_bucket: np.ndarray  # int8 per row: index into USER_BUCKETS
    new_item: np.ndarray     # bool per column: no training rating

    @classmethod
    def of(cls, train: sp.csr_matrix) -> "Buckets":
        counts = np.diff(train.indptr)
        user_bucket = np.searchsorted(_LOWER, counts, side="right").astype(np.int8)
        new_item = np.bincount(train.indices, minlength=train.shape[1]) == 0
        return cls(user_bucket, new_item)

    def _groups(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.user_bucket[rows], self.new_item[cols]

    def rating_rows(self, rows: np.ndarray, cols: np.ndarray, prediction: np.ndarray,
                    truth: np.ndarray) -> list[BucketRow]:
        """RMSE per bucket of the pairs (``rows`` ascending, as ``csr_triplets`` gives them) whose clipped
        ``prediction`` and ``truth`` are given."""
        user, new = self._groups(rows, cols)
        squared = (np.asarray(prediction, np.float64) - truth) ** 2
        n = len(USER_BUCKETS)
        counts = np.append(np.bincount(user, minlength=n), np.count_nonzero(new))
        sums = np.append(np.bincount(user, squared, n), squared[new].sum())
        # distinct users: rows come in ascending order, so a user starts where the row changes
        starts = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, bool)
        users = np.append(np.bincount(user[starts], minlength=n), _distinct_sorted(rows[new]))
        return [BucketRow(label, ratings=int(c), users=int(u),
                          rmse=float(np.sqrt(s / c)) if c else None, absent=None if c else _why_absent(label))
                for label, c, u, s in zip(LABELS, counts, users, sums)]

    def ranking_rows(self, rows: np.ndarray, positive_items: np.ndarray, ranks: np.ndarray | None,
                     k: int) -> list[BucketRow]:
        """HR@K per bucket of the ranked users (``rows``, each with its held-out item); ``ranks`` None: the
        predictor has no ranking (counts only)."""
        user, new = self._groups(rows, positive_items)
        n = len(USER_BUCKETS)
        counts = np.append(np.bincount(user, minlength=n), np.count_nonzero(new))
        if ranks is None:
            hits = np.full(n + 1, np.nan)
        else:
            hit = (np.asarray(ranks) < k).astype(np.float64)
            hits = np.append(np.bincount(user, hit, n), hit[new].sum())
        return [BucketRow(label, ranked_users=int(c),
                          hit_rate=float(h / c) if c and not np.isnan(h) else None,
                          absent=None if c else _why_absent(label))
                for label, c, h in zip(LABELS, counts, hits)]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _distinct_sorted(values: np.ndarray) -> int:
    return int(np.count_nonzero(values[1:] != values[:-1]) + 1) if len(values) else 0


def merge(rating: list[BucketRow] | None, ranking: list[BucketRow] | None) -> list[BucketRow]:
    """One row per bucket holding the rating and the ranking metrics measured on one part."""
    if rating is None or ranking is None:
        return list(rating or ranking or [])
    return [BucketRow(a.bucket, a.ratings, a.users, a.rmse, b.ranked_users, b.hit_rate,
                      a.absent if a.absent and b.absent else None) for a, b in zip(rating, ranking)]


def to_json(parts: dict[str, list[BucketRow]], k: int) -> dict[str, list[dict]]:
    """{part: [row, ...]} as metrics.json stores it (the one place rows become JSON)."""
    return {part: [row.as_json(k) for row in rows] for part, rows in parts.items()}
