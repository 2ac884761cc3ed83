"""One training step of MF and the embedding MLP with dense embeddings under the loop's fused Adam (before
issue 21) against sparse embeddings under the row-wise step (``recsys_core/row_optim.py``), side by side in one
process, at the table sizes of a split (default: the issue's 10%-scale N3M, 47,642 users x 17,509 items),
random batches of ``--batch`` ratings. Results and command in BENCHMARKS.md::

    nice -n 5 .venv/bin/python bench/bench_sparse_step.py --threads 1

Prints one JSON line per model: CPU and wall milliseconds per step of each, alternating the two twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from recsys_core import models  # noqa: E402
from recsys_core.models.mf import BiasedMF  # noqa: E402
from recsys_core.models.mlp import EmbeddingMLP  # noqa: E402
from recsys_core.training_loop import make_optimizer  # noqa: E402


def step_ms(name: str, sparse: bool, args) -> tuple[float, float]:
    torch.manual_seed(0)
    config = models.resolve_options(name, {"sparse": sparse})
    if name == "mf":
        model = BiasedMF(args.users, args.items, config.dim, 3.6, sparse=sparse)
    else:
        model = EmbeddingMLP(args.users, args.items, config.dim, list(config.hidden), config.dropout, 3.6,
                             sparse=sparse)
    optimizer = make_optimizer(model, config)
    users = torch.randint(0, args.users, (args.steps, args.batch))
    items = torch.randint(0, args.items, (args.steps, args.batch))
    ratings = torch.randint(1, 6, (args.steps, args.batch)).float()
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(args.steps):
        loss = ((model(users[s], items[s]) - ratings[s]) ** 2).mean() + config.l2 * model.penalty(users[s], items[s])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 1000 * (time.process_time() - cpu) / args.steps, 1000 * (time.perf_counter() - wall) / args.steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=47_642)
    p.add_argument("--items", type=int, default=17_509)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("mf", "mlp"):
        runs = {"dense": [], "sparse": []}
        for _ in range(2):
            for kind in ("dense", "sparse"):
                runs[kind].append(step_ms(name, kind == "sparse", args))
        out = {kind: {"cpu_ms": round(min(c for c, _ in r), 2), "wall_ms": round(min(w for _, w in r), 2)}
               for kind, r in runs.items()}
        print(json.dumps({"model": name, "users": args.users, "items": args.items, "batch": args.batch,
                          "threads": args.threads, **out,
                          "cpu_ratio_dense_over_sparse": round(out["dense"]["cpu_ms"] / out["sparse"]["cpu_ms"], 2),
                          "load": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
