"""The ``leave-one-out`` protocol (NCF): per user the latest rating is test, the one before valid, plus
sampled negatives for the test users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsys_core.errors import InputError, RecsysError
from recsys_core.idset import IdSet
from recsys_core.io import atomic_dir
from recsys_core.sampling import sample_negatives
from recsys_core.split.reading import RATING_COLUMNS, items_path, ratings_path, read_all
from recsys_core.split.stats import part_stats
from recsys_core.split.writing import PARQUET_COMPRESSION, finish_folder, write_parquet


def split_leave_one_out(ratings_dir: Path, out_dir: Path, valid: bool = True, negatives: int = 99,
                        min_interactions: int | None = None, seed: int = 0) -> dict[str, dict]:
    """NCF protocol: per user the latest interaction is test and, with ``valid`` (default), the one before valid.

    "Latest" orders a user's ratings by timestamp, then by item_id (a larger item_id counts as later
    on equal timestamps). Users with fewer than ``min_interactions`` ratings (default: one more than
    the ratings held out, so 3 with valid, 2 without) keep all of them in train and get no test rating
    (counted as ``train_only_users``). Each test user gets ``negatives`` distinct items sampled (seeded)
    among the items of the data set the user never rated in any part; a user with fewer unrated items
    than that also stays in train only (counted as ``users_without_room_for_negatives``).
    """
    held_per_user = 2 if valid else 1
    if min_interactions is None:
        min_interactions = held_per_user + 1
    if min_interactions < held_per_user + 1:
        raise RecsysError(f"--min-interactions must be at least {held_per_user + 1} so every test user keeps "
                          "a train rating")
    if negatives < 0:
        raise RecsysError(f"--negatives must be 0 or more, got {negatives}")
    path = ratings_path(ratings_dir)
    items_src = items_path(ratings_dir)
    table = read_all(path)
    if table.num_rows == 0:
        raise InputError(path, "holds no ratings")
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)  # a Table gives a frame (polars' overloads cannot see pyarrow's types)
    # one int64 that orders by (timestamp, item_id): seconds * 2^32 + (item_id + 2^31)
    later = pl.col("timestamp").dt.epoch("s") * (1 << 32) + (pl.col("item_id").cast(pl.Int64) + (1 << 31))
    ranked = frame.with_columns(
        later.rank("ordinal", descending=True).over("user_id").alias("_rank"),
        pl.len().over("user_id").alias("_count"),
    )
    # A test user needs `negatives` items never rated to sample from (ratings are distinct per user and item);
    # a user who rated nearly the whole catalogue keeps everything in train, like a too-short history.
    enough_history = pl.col("_count") >= min_interactions
    room_for_negatives = pl.col("_count") <= frame["item_id"].n_unique() - negatives
    eligible = enough_history & room_for_negatives
    test_f = ranked.filter(eligible & (pl.col("_rank") == 1))
    valid_f = ranked.filter(eligible & (pl.col("_rank") == 2)) if valid else ranked.clear()
    train_f = ranked.filter(~eligible | (pl.col("_rank") > held_per_user))
    to_arrow = lambda f: f.select(RATING_COLUMNS).to_arrow().cast(table.schema)  # noqa: E731
    train_t, valid_t, test_t = to_arrow(train_f), to_arrow(valid_f), to_arrow(test_f)
    if test_t.num_rows == 0:
        raise RecsysError(f"{path}: split leave-one-out would have an empty test part; no user has "
                          f"{min_interactions} or more ratings")
    train_only = ranked.filter(~eligible)
    test_users = np.sort(test_t.column("user_id").to_numpy())
    negatives_table = _negatives_table(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), test_users,
                                       negatives, seed)
    test_items = np.unique(test_t.column("item_id").to_numpy())
    train_items = np.unique(train_t.column("item_id").to_numpy())
    stats = {
        "split": "leave-one-out",
        "protocol": "leave-one-out",
        "train": part_stats(train_t),
        "valid": part_stats(valid_t),
        "test": part_stats(test_t),
        "train_only_users": train_only["user_id"].n_unique(),
        "train_only_ratings": train_only.height,
        "users_without_room_for_negatives": ranked.filter(enough_history & ~room_for_negatives)["user_id"].n_unique(),
        "test_items_not_in_train": int(np.count_nonzero(~np.isin(test_items, train_items))),
    }
    params = {"seed": seed, "valid": valid, "negatives": negatives, "min_interactions": min_interactions,
              "tie_rule": "latest timestamp, then larger item_id"}
    with atomic_dir(Path(out_dir) / "leave-one-out") as folder:
        write_parquet(train_t, folder / "train.parquet")
        write_parquet(valid_t, folder / "valid.parquet")
        write_parquet(test_t, folder / "test.parquet")
        pq.write_table(negatives_table, folder / "negatives.parquet", compression=PARQUET_COMPRESSION)
        finish_folder(folder, items_src, "leave-one-out", "leave-one-out", params, stats)
    return {"leave-one-out": stats}


def _negatives_table(raw_users: np.ndarray, raw_items: np.ndarray, test_users: np.ndarray, negatives: int,
                     seed: int) -> pa.Table:
    """``negatives`` distinct items per test user (sorted raw ids) among the items of the data set the user
    never rated in any part."""
    neg_ids = np.zeros((len(test_users), 0), dtype=np.int32)
    if negatives:
        user_index, item_index = IdSet([raw_users]), IdSet([raw_items])
        # scipy's C++ counting sort makes the canonical (user, item) matrix the sampler needs
        ratings_csr = sp.csr_matrix(
            (np.ones(len(raw_users), np.float32), (user_index.positions(raw_users), item_index.positions(raw_items))),
            shape=(len(user_index), len(item_index)))
        ratings_csr.sum_duplicates()
        codes = sample_negatives(ratings_csr, user_index.positions(test_users), negatives,
                                 np.random.default_rng(seed), distinct=True)
        neg_ids = item_index.ids[codes]
    offsets = np.arange(len(test_users) + 1, dtype=np.int32) * negatives
    return pa.table({
        "user_id": pa.array(test_users.astype(np.int32)),
        "negatives": pa.ListArray.from_arrays(pa.array(offsets), pa.array(neg_ids.ravel(), type=pa.int32())),
    })
