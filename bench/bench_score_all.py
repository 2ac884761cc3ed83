"""Whole-catalogue scoring of the pair models (issue 21 part 2): ``score_all`` (GEMMs: the tower's first layer
split into user and item halves, GMF as one product) against the pair-by-pair path the models took before
(the user x item grid through the network's forward, ``PairsEstimator.predict_pairs``), side by side in one
process on the same split, untrained weights (the cost does not depend on their values). Results and
command in BENCHMARKS.md::

    RECSYS_PROGRESS=0 nice -n 5 .venv/bin/python bench/bench_score_all.py data/matrices-10/N3M --threads 2

Prints one JSON line per model: CPU and wall seconds per 1,000 users of each path, their ratio, the largest
difference between the two paths' scores, and the projected CPU seconds to score every user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from recsys_core import models  # noqa: E402
from recsys_core.estimators import PairsEstimator  # noqa: E402
from recsys_core.interactions import load_split_data  # noqa: E402


def _timed(call, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = call(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split_dir")
    p.add_argument("--models", nargs="*", default=["mf", "mlp", "gmf", "ncf-mlp", "neumf"])
    p.add_argument("--users", type=int, default=2048, help="users scored by score_all (one block)")
    p.add_argument("--pair-users", type=int, default=16, help="users scored pair by pair (the old path)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_split_data(args.split_dir)
    n_users, n_items = data.train.shape
    rows = np.random.default_rng(0).choice(n_users, min(args.users, n_users), replace=False)
    for name in args.models:
        estimator = models.create(name)
        estimator.bind(data)
        fast, wall, cpu = _timed(estimator.score_rows_tensor, rows)
        few = rows[:args.pair_users]
        grid_rows, grid_cols = np.repeat(few, n_items), np.tile(np.arange(n_items), len(few))
        slow, pair_wall, pair_cpu = _timed(PairsEstimator.predict_pairs, estimator, grid_rows, grid_cols)
        slow = torch.from_numpy(slow.reshape(len(few), n_items))
        if name in ("gmf", "ncf-mlp", "neumf"):
            slow = torch.sigmoid(slow)
        per_k = {"score_all_cpu_s": 1000 * cpu / len(rows), "score_all_wall_s": 1000 * wall / len(rows),
                 "pairs_cpu_s": 1000 * pair_cpu / len(few), "pairs_wall_s": 1000 * pair_wall / len(few)}
        print(json.dumps({
            "model": name, "users": int(n_users), "items": int(n_items), "threads": args.threads,
            "per_1000_users": {k: round(v, 3) for k, v in per_k.items()},
            "cpu_ratio_pairs_over_score_all": round(per_k["pairs_cpu_s"] / per_k["score_all_cpu_s"], 1),
            "max_abs_difference": float((fast[:len(few)] - slow).abs().max()),
            "every_user_cpu_s_score_all": round(per_k["score_all_cpu_s"] * n_users / 1000, 1),
            "every_user_cpu_s_pairs": round(per_k["pairs_cpu_s"] * n_users / 1000, 1),
            "load": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
