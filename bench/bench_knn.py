"""knn-item at Netflix's full item count (17,770 items) on generated ratings: similarity time and peak memory,
pair predictions and full-row scoring. Results and the command in BENCHMARKS.md ("knn-item at 17,770 items").

    .venv/bin/python bench/bench_knn.py --users 40000 --ratings 2000000

The ratings are generated here (lognormal item popularity and user activity as the Netflix data's, values
from a rank-8 model rounded to 1..5): what matters for the cost is the item count (the n_items^2 float32
similarity matrix) and sum over users of n_u^2 (the sparse products). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from measure import peak_rss_mb  # noqa: E402

from recsys_core import models  # noqa: E402


def generated(n_users: int, n_items: int, n_ratings: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    item_weight = rng.lognormal(0.0, 1.5, n_items)
    user_count = np.maximum(1, rng.lognormal(0.0, 1.0, n_users))
    user_count = np.minimum(n_items // 2, np.ceil(user_count / user_count.sum() * n_ratings)).astype(np.int64)
    rows = np.repeat(np.arange(n_users), user_count)
    cols = rng.choice(n_items, len(rows), p=item_weight / item_weight.sum())
    p, q = rng.normal(0, 0.4, (n_users, 8)), rng.normal(0, 0.4, (n_items, 8))
    values = np.clip(np.rint(3.6 + (p[rows] * q[cols]).sum(1) + rng.normal(0, 0.9, len(rows))), 1, 5)
    train = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n_users, n_items))
    train.data = np.minimum(train.data, 5.0)  # duplicate pairs summed: keep one rating's range
    train.sum_duplicates()
    train.sort_indices()
    return type("Data", (), {"train": train, "meta": {}})()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=40_000)
    p.add_argument("--items", type=int, default=17_770)
    p.add_argument("--ratings", type=int, default=2_000_000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = generated(args.users, args.items, args.ratings)
    counts = np.diff(data.train.indptr).astype(np.float64)
    rss_data = peak_rss_mb()
    estimator = models.create("knn-item")
    started = time.perf_counter()
    estimator.fit(data)
    fit_s = time.perf_counter() - started
    rss_fit = peak_rss_mb()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, args.users, 100_000)
    cols = rng.integers(0, args.items, 100_000)
    started = time.perf_counter()
    estimator.predict_pairs(rows, cols)
    pairs_s = time.perf_counter() - started
    started = time.perf_counter()
    estimator.score_rows(np.arange(200))
    rows_s = time.perf_counter() - started
    started = time.perf_counter()
    state = estimator.state_dict()
    state_s = time.perf_counter() - started
    print(json.dumps({"users": args.users, "items": args.items, "ratings": int(data.train.nnz),
                      "sum_n_u_squared": float((counts ** 2).sum()), "threads": args.threads,
                      "similarity_s": round(fit_s, 1), "peak_rss_mb_data": round(rss_data),
                      "peak_rss_mb_fit": round(rss_fit), "predict_100k_pairs_s": round(pairs_s, 1),
                      "score_200_full_rows_s": round(rows_s, 1), "state_dict_s": round(state_s, 1),
                      "state_mb": round(sum(t.numel() * t.element_size() for t in state.values()) / 2**20),
                      "peak_rss_mb": round(peak_rss_mb())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
