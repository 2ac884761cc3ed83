"""The ``chrono`` protocol: a chronological split per user (MS Recommenders' ``python_chrono_split``,
RecBole's time-ordered split by user).

Each user's ratings are ordered by time, ties on one timestamp by a seeded hash of (seed, user_id, item_id);
the oldest ``train_share`` of them go to train, the next ``valid_share`` to valid and the latest to test.
The cuts fall at ``floor(share * n + 0.5)`` of the user's ``n`` ratings (shares cumulated), so a user with 20 ratings
gives 16 / 2 / 2 at the default 80/10/10. Held-out ratings of items with no train rating are dropped and
counted, as in every other protocol; every user with a held-out rating has train ratings by construction.

Why this protocol for MovieLens-style data: a global time cut (``time``) keeps only the users active on
both sides of the cut, 8 users in the test part of ml-latest-small at quantile 0.9 (real data, issue 17);
a per-user cut keeps every user's latest ratings as the future to predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys_core.errors import InputError, RecsysError
from recsys_core.io import atomic_dir
from recsys_core.split.engine import check_share
from recsys_core.split.hashing import SALT_CHRONO_TIES, hash_unit
from recsys_core.split.reading import RATING_COLUMNS, items_path, ratings_path, read_all
from recsys_core.split.stats import part_stats
from recsys_core.split.writing import finish_folder, write_parquet


def check_chrono_options(train_share: float = 0.8, valid_share: float = 0.1, seed: int = 0) -> None:
    """The options of ``chrono`` checked without reading data."""
    check_share("train_share", train_share)
    check_share("valid_share", valid_share)
    if train_share <= 0 or train_share + valid_share >= 1:
        raise RecsysError(f"need 0 < --train-share and --train-share + --valid-share < 1 (the rest is test), "
                          f"got {train_share} + {valid_share}")


def split_chrono(ratings_dir: Path, out_dir: Path, train_share: float = 0.8, valid_share: float = 0.1,
                 seed: int = 0) -> dict[str, dict]:
    """Per user, by time: the oldest ``train_share`` to train, the next ``valid_share`` to valid, the rest
    (the latest) to test; ``valid_share`` 0 gives no valid part."""
    check_chrono_options(train_share, valid_share, seed)
    path = ratings_path(ratings_dir)
    items_src = items_path(ratings_dir)
    table = read_all(path)
    if table.num_rows == 0:
        raise InputError(path, "holds no ratings")
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)  # a Table gives a frame (polars' overloads cannot see pyarrow's types)
    frame = frame.with_columns(
        pl.Series("_tie", hash_unit(seed, SALT_CHRONO_TIES, users, items)),
        pl.Series("_row", np.arange(table.num_rows, dtype=np.int64)),
    )
    ordered = frame.sort(["user_id", "timestamp", "_tie"])
    position = pl.int_range(pl.len()).over("user_id")
    count = pl.len().over("user_id").cast(pl.Float64)
    # round(share x n) with halves up, the same in every library: floor(share x n + 0.5)
    train_end = (count * train_share + 0.5).floor()
    valid_end = (count * (train_share + valid_share) + 0.5).floor()
    part = (pl.when(position < train_end).then(0).when(position < valid_end).then(1).otherwise(2)).alias("_part")
    ordered = ordered.with_columns(part)
    # rows back in their input order within each part, so the output does not depend on the sort
    pieces = {k: ordered.filter(pl.col("_part") == k).sort("_row") for k in range(3)}
    train_items = pieces[0]["item_id"].unique()
    dropped = {}
    held = {}
    for name, k in (("valid", 1), ("test", 2)):
        seen = pieces[k]["item_id"].is_in(train_items.implode())
        dropped[name] = int((~seen).sum())
        held[name] = pieces[k].filter(seen)
    to_arrow = lambda f: f.select(RATING_COLUMNS).to_arrow().cast(table.schema)  # noqa: E731
    train_t, valid_t, test_t = to_arrow(pieces[0]), to_arrow(held["valid"]), to_arrow(held["test"])
    if test_t.num_rows == 0:
        raise RecsysError(f"{path}: split chrono would have an empty test part; users need more ratings "
                          f"(a user's test share is round({1 - train_share - valid_share:g} x its ratings))")
    stats = {
        "split": "chrono",
        "protocol": "chrono",
        "train": part_stats(train_t),
        "valid": part_stats(valid_t),
        "test": part_stats(test_t),
        "dropped": {"valid_ratings_of_items_not_in_train": dropped["valid"],
                    "test_ratings_of_items_not_in_train": dropped["test"]},
    }
    params = {"seed": seed, "train_share": train_share, "valid_share": valid_share,
              "test_share": round(1 - train_share - valid_share, 12),
              "tie_rule": "per user by timestamp, ties by a seeded hash of (seed, user_id, item_id)"}
    with atomic_dir(Path(out_dir) / "chrono") as folder:
        write_parquet(train_t, folder / "train.parquet")
        write_parquet(valid_t, folder / "valid.parquet")
        write_parquet(test_t, folder / "test.parquet")
        finish_folder(folder, items_src, "chrono", "chrono", params, stats)
    return {"chrono": stats}
