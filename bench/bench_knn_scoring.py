"""knn-item's whole-row scoring per user, by activity band: the compiled loops against the numpy scoring they
replaced (commit e245528, kept as the reference in tests/test_knn.py), on a trained run. Results and the command
in BENCHMARKS.md ("Default models at full-scale N3M").

    .venv/bin/python bench/bench_knn_scoring.py RUN_DIR [--users 256] [--threads 1]

Draws ``--users`` users in each band of training ratings (1-40, 41-80, 81-160, 161+), times
``ItemKNN.score_rows_tensor`` and the reference on them, checks that their scores agree to float rounding, and
projects the time of every user of the split from the per-band means. Prints one JSON line.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_knn import _reference_adjustment  # noqa: E402

from recsys_core.train import load_run  # noqa: E402

BANDS = [(1, 40), (41, 80), (81, 160), (161, 1 << 30)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _, data, est = load_run(args.run_dir)
    est.score_rows_tensor(np.arange(2))  # compile (or load the compiled loops) outside the timings
    counts = np.diff(data.train.indptr)
    rng = np.random.default_rng(11)
    c = est.options
    bands, projected = [], {"compiled": 0.0, "numpy": 0.0}
    for lo, hi in BANDS:
        members = np.flatnonzero((counts >= lo) & (counts <= hi))
        if len(members) == 0:
            continue
        users = rng.choice(members, min(args.users, len(members)), replace=False)
        started = time.perf_counter()
        got = est.score_rows_tensor(users).numpy()
        compiled = (time.perf_counter() - started) / len(users)
        started = time.perf_counter()
        adjust = np.stack([_reference_adjustment(est.sim_array, c.neighbours, c.min_k, c.damping, *est._user(int(u)))
                           for u in users])
        reference = (time.perf_counter() - started) / len(users)
        base = (est.mean + est.user_bias[users][:, None] + est.item_bias[None, :]).astype(np.float32)
        bands.append({"ratings": f"{lo}-{min(hi, int(counts.max()))}", "users": len(members),
                      "compiled_ms": round(compiled * 1e3, 3), "numpy_ms": round(reference * 1e3, 3),
                      "max_abs_diff": float(np.abs(got - (base + adjust)).max())})
        projected["compiled"] += compiled * len(members)
        projected["numpy"] += reference * len(members)
    print(json.dumps({"threads": args.threads, "bands": bands,
                      "projected_s": {k: round(v, 1) for k, v in projected.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
