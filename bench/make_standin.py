"""Write a stage-1-format stand-in of the full Netflix ratings (about 100M rows) straight from numpy.

Used to benchmark the split and matrices stages before the real converted file exists. Shape like
the Netflix Prize set: 17,770 movies (ids 1..17770), 480,189 customers with gappy ids in
1..2,649,429, heavy-tailed activity and popularity (lognormal weights), ratings 1..5 with the
real marginal, dates 1999-11-11..2005-12-31 growing strongly toward 2005 (each customer joins at a
date drawn from a growing density and rates between joining and the end). Rows are grouped by
movie like the source files. Not a statistical model of anything: only the sizes matter here.

    flock /tmp/heavy.lock .venv/bin/python bench/make_standin.py data/bench/stage1-standin --scale 1.0
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.io import atomic_dir, write_json
from recsys_core.schema import ITEMS_SCHEMA, RATINGS_SCHEMA

FIRST_DAY = (dt.date(1999, 11, 11) - dt.date(1970, 1, 1)).days
LAST_DAY = (dt.date(2005, 12, 31) - dt.date(1970, 1, 1)).days
RATING_PROBS = [0.046, 0.101, 0.287, 0.336, 0.230]


def generate(out_dir: Path, scale: float, seed: int, chunk_items: int = 1000) -> dict:
    rng = np.random.default_rng(seed)
    n_items = round(17770 * scale**0.5)
    n_users = round(480189 * scale)
    n_ratings = round(100_480_507 * scale)
    user_ids = np.sort(rng.choice(np.arange(1, 2_649_430, dtype=np.int32), n_users, replace=False))
    user_weight = rng.lognormal(0.0, 1.2, n_users)
    user_cdf = np.cumsum(user_weight / user_weight.sum())
    # rating density per day: grows ~exp(t / 450 days), flat from 2005-03 on (like the real monthly counts)
    t = np.arange(LAST_DAY - FIRST_DAY + 1)
    density = np.exp(np.minimum(t, LAST_DAY - FIRST_DAY - 300) / 450.0)
    day_cdf = np.cumsum(density) / density.sum()
    # a customer joins at a day drawn from that density, moved back by an exponential(1 year) lag
    join = np.searchsorted(day_cdf, rng.random(n_users)) - rng.exponential(365, n_users)
    user_join = np.clip(join, 0, len(t) - 1).astype(np.int32)
    item_weight = rng.lognormal(0.0, 1.5, n_items)
    # draw ~12% more: repeats of a (user, item) pair are dropped below
    per_item = rng.multinomial(round(n_ratings * 1.125), item_weight / item_weight.sum())
    with atomic_dir(out_dir) as tmp:
        writer = pq.ParquetWriter(tmp / "ratings.parquet", RATINGS_SCHEMA, compression="zstd")
        first = last = None
        written = 0
        for start in range(0, n_items, chunk_items):
            counts = per_item[start:start + chunk_items]
            items = np.repeat(np.arange(start + 1, start + 1 + len(counts), dtype=np.int32), counts)
            users_idx = np.searchsorted(user_cdf, rng.random(len(items)) * user_cdf[-1])
            users_idx = np.minimum(users_idx, n_users - 1)
            # one rating per (user, item): drop repeats inside the chunk (the chunk holds whole items)
            key = items.astype(np.int64) * n_users + users_idx
            key = np.unique(key)
            items = (key // n_users).astype(np.int32)
            users_idx = key % n_users
            # day drawn from the density truncated to [join day, last day]
            lo = day_cdf[user_join[users_idx]] - density[user_join[users_idx]] / density.sum()
            offsets = np.searchsorted(day_cdf, lo + rng.random(len(items)) * (1 - lo))
            days = FIRST_DAY + np.minimum(offsets, len(t) - 1).astype(np.int32)
            ratings = (rng.choice(5, len(items), p=RATING_PROBS) + 1).astype(np.float32)
            table = pa.table(
                [pa.array(user_ids[users_idx]), pa.array(items), pa.array(ratings),
                 pa.array(days.astype(np.int64) * 86400).cast(pa.timestamp("s", tz="UTC"))],
                schema=RATINGS_SCHEMA,
            )
            writer.write_table(table, row_group_size=1 << 20)
            written += len(items)
            lo, hi = int(days.min()), int(days.max())
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
            print(f"items {start + len(counts)}/{n_items}: {written:,} ratings", flush=True)
        writer.close()
        item_table = pa.table(
            {"item_id": pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
             "title": pa.array([f"Stand-in movie {i}" for i in range(1, n_items + 1)]),
             "year": pa.array(rng.integers(1920, 2006, n_items).astype(np.int16)),
             "genres": pa.nulls(n_items, pa.list_(pa.string()))},
            schema=ITEMS_SCHEMA,
        )
        pq.write_table(item_table, tmp / "items.parquet")
        to_date = lambda d: (dt.date(1970, 1, 1) + dt.timedelta(days=d)).isoformat()  # noqa: E731
        meta = {"schema_version": 1, "source": "netflix", "ratings": written, "users": n_users,
                "items": n_items, "catalog_items": n_items, "first_date": to_date(first),
                "last_date": to_date(last), "rating_min": 1.0, "rating_max": 5.0, "rating_step": 1.0,
                "standin": {"scale": scale, "seed": seed}}
        write_json(tmp / "meta.json", meta)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = full Netflix size (default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    meta = generate(args.out_dir, args.scale, args.seed)
    print(f"wrote {meta['ratings']:,} ratings in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
