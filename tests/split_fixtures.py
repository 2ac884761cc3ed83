"""Small hand-built stage-1 folders for the split and matrices tests."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.schema import ITEMS_SCHEMA, RATINGS_SCHEMA

UTC = dt.timezone.utc


def ts(day: str | dt.date, seconds: int = 0) -> dt.datetime:
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC) + dt.timedelta(seconds=seconds)


def write_stage1(folder: Path, rows: list[tuple], row_group_size: int | None = None,
                 items: list[int] | None = None) -> Path:
    """rows: (user_id, item_id, rating, datetime). Writes ratings.parquet, items.parquet, meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    users, item_ids, ratings, stamps = (list(c) for c in zip(*rows)) if rows else ([], [], [], [])
    table = pa.table([pa.array(users, pa.int32()), pa.array(item_ids, pa.int32()),
                      pa.array(ratings, pa.float32()), pa.array(stamps, pa.timestamp("s", tz="UTC"))],
                     schema=RATINGS_SCHEMA)
    pq.write_table(table, folder / "ratings.parquet", row_group_size=row_group_size)
    catalogue = sorted(set(item_ids) | set(items or []))
    pq.write_table(pa.table({"item_id": pa.array(catalogue, pa.int32()),
                             "title": pa.array([f"Movie {i}" for i in catalogue]),
                             "year": pa.array([1990 + i % 10 for i in catalogue], pa.int16()),
                             "genres": pa.nulls(len(catalogue), pa.list_(pa.string()))}, schema=ITEMS_SCHEMA),
                   folder / "items.parquet")
    (folder / "meta.json").write_text(json.dumps({"schema_version": 1, "source": "netflix", "ratings": len(rows)}))
    return folder


def random_rows(n: int, seed: int = 0, n_users: int = 60, n_items: int = 40,
                first: str = "1999-11-20", last: str = "2005-12-31") -> list[tuple]:
    """Distinct (user, item) ratings with dates biased toward the end, boundary days included."""
    rng = np.random.default_rng(seed)
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    span = (end - start).days
    boundaries = [dt.date(2005, 9, 1), dt.date(2005, 11, 30), dt.date(2005, 12, 1), dt.date(2005, 12, 31),
                  dt.date(2005, 6, 1), dt.date(2005, 5, 31), dt.date(2005, 6, 30), dt.date(2004, 6, 1),
                  dt.date(1999, 12, 1), dt.date(1999, 11, 30)]
    pairs = rng.choice(n_users * n_items, size=min(n, n_users * n_items), replace=False)
    rows = []
    for k, pair in enumerate(pairs):
        user, item = 100 + int(pair // n_items) * 7, 1 + int(pair % n_items)
        if k % 9 == 0:
            day = boundaries[k // 9 % len(boundaries)]
        else:
            day = start + dt.timedelta(days=int(span * rng.random() ** 0.3))
        rows.append((user, item, float(rng.integers(1, 6)), ts(day, int(rng.integers(0, 86400)))))
    return rows


def read_rows(path: Path) -> list[tuple]:
    table = pq.read_table(path)
    return sorted(zip(*(table.column(c).to_pylist() for c in ("user_id", "item_id", "rating", "timestamp"))))
