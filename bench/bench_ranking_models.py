"""Fit time and peak memory of the closed-form / sweep models (EASE, ALS) on a stage-3 split folder, one
model per process (peak RSS is per process). Results and commands in BENCHMARKS.md. Heavy: run under
``flock /tmp/heavy.lock``.

    .venv/bin/python bench/bench_ranking_models.py data/matrices/<source>/<protocol>/N3M --model ease
    .venv/bin/python bench/bench_ranking_models.py SPLIT_DIR --model als --option iterations=15

Prints one JSON line: load, fit and scoring seconds (scoring: 10,000 users' full rows), peak RSS.
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

from measure import peak_rss_mb  # noqa: E402

from recsys_core import models  # noqa: E402
from recsys_core.interactions import load_split_data  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split_dir", help="a stage-3 split folder")
    p.add_argument("--model", required=True, choices=models.names())
    p.add_argument("--option", action="append", default=[], metavar="NAME=JSON", help="a model option")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--score-users", type=int, default=10_000)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}

    started = time.perf_counter()
    data = load_split_data(args.split_dir)
    load_s = time.perf_counter() - started
    rss_after_load = peak_rss_mb()
    estimator = models.create(args.model, **options)
    started = time.perf_counter()
    summary = estimator.fit(data)
    fit_s = time.perf_counter() - started
    rss_after_fit = peak_rss_mb()
    rows = np.flatnonzero(np.diff(data.train.indptr) > 0)[:args.score_users]
    started = time.perf_counter()
    for lo in range(0, len(rows), 1024):
        estimator.score_rows(rows[lo:lo + 1024])
    score_s = time.perf_counter() - started
    counts = np.diff(data.train.indptr).astype(np.float64)
    print(json.dumps({
        "bench": f"{args.model}-fit", "split": str(args.split_dir), "users": int(data.train.shape[0]),
        "items": int(data.train.shape[1]), "train_nnz": int(data.train.nnz),
        "sum_user_count_squared": float((counts ** 2).sum()), "options": estimator.options.to_dict(),
        "threads": args.threads, "load_s": round(load_s, 1), "fit_s": round(fit_s, 1),
        "fit_summary": {k: v for k, v in summary.items() if k != "history"},
        "score_users": int(len(rows)), "score_s": round(score_s, 1),
        "peak_rss_mb_after_load": round(rss_after_load), "peak_rss_mb": round(max(rss_after_fit, peak_rss_mb()))}),
        flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
