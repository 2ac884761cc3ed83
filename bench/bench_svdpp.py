"""SVD++ against biased MF, one training epoch each side by side in one process, on generated ratings at
Netflix's item count (BENCHMARKS.md, "svdpp epoch"). SVD++'s implicit sums are made once per user and batch
(one embedding_bag), so its epoch should cost a small multiple of MF's, not a factor of the mean n_u.

    .venv/bin/python bench/bench_svdpp.py --users 40000 --ratings 2000000 --threads 2

Prints one JSON line: seconds per epoch of each, ratings per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_knn import generated  # noqa: E402

from recsys_core import models  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=40_000)
    p.add_argument("--items", type=int, default=17_770)
    p.add_argument("--ratings", type=int, default=2_000_000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = generated(args.users, args.items, args.ratings)
    empty = type(data.train)(data.train.shape, dtype=np.float32)
    data.valid, data.test, data.meta = empty, empty, {"rating_min": 1.0, "rating_max": 5.0}
    out = {"users": args.users, "items": args.items, "ratings": int(data.train.nnz), "threads": args.threads}
    for name in ("mf", "svdpp"):
        estimator = models.create(name, epochs=1, patience=0)
        started = time.perf_counter()
        estimator.fit(data)
        seconds = time.perf_counter() - started
        out[f"{name}_epoch_s"] = round(seconds, 1)
        out[f"{name}_ratings_per_s"] = round(data.train.nnz / seconds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
