"""Throwaway generator of Netflix-shaped text for benchmarking the converter before the real
synth data exists: ``training_set/mv_NNNNNNN.txt`` + ``movie_titles.txt`` (+ ``training_set.tar``).

Not a model of anything (random users, ratings and dates): only the file shape, line lengths and
per-file sizes resemble the real set. Usage:
    python bench/make_netflix_like.py OUT_DIR --scale 0.1 [--tar]
"""

from __future__ import annotations

import argparse
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def generate(out_dir: Path, scale: float, seed: int, tar: bool) -> None:
    rng = np.random.default_rng(seed)
    n_movies = round(17770 * scale**0.5)
    n_users = round(480189 * scale)
    n_ratings = int(100_480_507 * scale)
    user_ids = np.sort(rng.choice(2_649_429, size=n_users, replace=False) + 1).astype(np.int32)
    popularity = rng.pareto(1.2, n_movies) + 0.05
    movie = rng.choice(n_movies, size=n_ratings, p=popularity / popularity.sum()).astype(np.int32) + 1
    user = user_ids[rng.integers(0, n_users, n_ratings)]
    start, end = np.datetime64("1999-11-11"), np.datetime64("2005-12-31")
    span = (end - start).astype(int)
    day = (span * np.sqrt(rng.random(n_ratings))).astype(np.int32)  # skew toward 2005
    frame = (
        pl.DataFrame({"movie": movie, "user": user, "rating": rng.integers(1, 6, n_ratings, dtype=np.int8),
                      "date": (start + day.astype("timedelta64[D]")).astype("datetime64[D]")})
        .unique(["movie", "user"], keep="first")
        .sort("movie", maintain_order=True)
    )
    text = frame.select("user", "rating", pl.col("date").dt.strftime("%Y-%m-%d")).write_csv(include_header=False)
    data = text.encode()
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    counts = np.bincount(frame["movie"].to_numpy(), minlength=n_movies + 1)[1:]
    line_ends = np.concatenate([[0], ends])[np.cumsum(np.concatenate([[0], counts]))]
    folder = out_dir / "training_set"
    folder.mkdir(parents=True, exist_ok=True)
    for movie_id in range(1, n_movies + 1):
        body = data[line_ends[movie_id - 1]:line_ends[movie_id]]
        (folder / f"mv_{movie_id:07d}.txt").write_bytes(f"{movie_id}:\n".encode() + body)
    with open(out_dir / "movie_titles.txt", "wb") as titles:
        for movie_id in range(1, n_movies + 1):
            year = "NULL" if movie_id % 997 == 0 else str(1920 + movie_id % 85)
            titles.write(f"{movie_id},{year},Movie {movie_id}, the sequel\n".encode("latin-1"))
    if tar:
        with tarfile.open(out_dir / "training_set.tar", "w", format=tarfile.GNU_FORMAT) as archive:
            for movie_id in range(1, n_movies + 1):
                name = f"mv_{movie_id:07d}.txt"
                archive.add(folder / name, arcname=f"training_set/{name}")
    print(f"{len(frame):,} ratings, {n_movies} movies, {len(data) / 1e6:.0f} MB text in {out_dir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tar", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    generate(args.out_dir, args.scale, args.seed, args.tar)
    print(f"{time.perf_counter() - t0:.1f} s")
