"""Full-catalogue top-K of every user for trained tower models (issue 21 part 2): the exact pruned path
(``TowerBounds``: bounds from cluster centres, exact scores only where an item can reach a row's k best)
against the whole catalogue scored by ``score_all`` (GEMMs), side by side in one process on the same users,
the two paths alternated so a shared machine's load falls on both. Results and command in BENCHMARKS.md::

    RECSYS_PROGRESS=0 nice -n 5 .venv/bin/python bench/bench_top_k.py RUN_DIR [RUN_DIR ...] --users 4096

Each RUN_DIR is a finished ``train`` run of mlp, ncf-mlp or neumf (the bounds' tightness depends on trained
weights, so untrained ones would say nothing). Prints one JSON line per run: CPU and wall seconds per 1,000
users of each path (median of ``--repeats``), their ratio, the share of (user, item) pairs the pruned path
scored exactly, whether the two answers are identical, and the projected seconds for every user.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from recsys_core import ranking  # noqa: E402
from recsys_core.ranking import best_items  # noqa: E402
from recsys_core.train import load_run  # noqa: E402


class WholeCatalogue:
    """The predictor without its bounds: ``best_items`` scores every item of every row."""

    def __init__(self, predictor):
        self.predictor = predictor

    def score_rows_tensor(self, rows):
        return self.predictor.score_rows_tensor(rows)


def _timed(call, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = call(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--users", type=int, default=4096, help="users drawn (seed 0) from the split's users")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        config, data, estimator = load_run(run)
        n_users, n_items = data.train.shape
        rows = np.sort(np.random.default_rng(0).choice(n_users, min(args.users, n_users), replace=False))
        known = data.train
        best_items(estimator, rows[:64], args.k, exclude=known)  # builds the bounds once, as a run does
        scored: list[int] = []
        original = ranking.pruned_scores

        def counting(*a, scored=scored, original=original, **kw):
            out = original(*a, **kw)
            if out is not None:
                scored.append(out[1])
            return out

        times: dict[str, list[tuple[float, float]]] = {"whole": [], "pruned": []}
        answers = {}
        for _ in range(args.repeats):
            for name, predictor in (("whole", WholeCatalogue(estimator)), ("pruned", estimator)):
                scored.clear()
                ranking.pruned_scores = counting
                try:
                    answers[name], wall, cpu = _timed(best_items, predictor, rows, args.k, exclude=known)
                finally:
                    ranking.pruned_scores = original
                times[name].append((wall, cpu))
        share = sum(scored) / (len(rows) * n_items)
        per_k = {f"{name}_{what}_s": 1000 * statistics.median(t[i] for t in times[name]) / len(rows)
                 for name in times for i, what in enumerate(("wall", "cpu"))}
        print(json.dumps({
            "run": str(run), "model": config["model"], "users": int(n_users), "items": int(n_items),
            "threads": args.threads, "scored_users": len(rows), "k": args.k,
            "per_1000_users": {key: round(value, 3) for key, value in per_k.items()},
            "cpu_ratio_whole_over_pruned": round(per_k["whole_cpu_s"] / per_k["pruned_cpu_s"], 2),
            "wall_ratio_whole_over_pruned": round(per_k["whole_wall_s"] / per_k["pruned_wall_s"], 2),
            "pairs_scored_exactly": round(share, 4),
            "same_items": bool(np.array_equal(answers["whole"][0], answers["pruned"][0])),
            "max_score_difference": float(np.abs(answers["whole"][1] - answers["pruned"][1]).max()),
            "every_user_wall_s": {name: round(per_k[f"{name}_wall_s"] * n_users / 1000, 1) for name in times},
            "load": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
