"""One training step of MF and the embedding MLP with dense embeddings under the loop's fused Adam (before
issue 21) against sparse embeddings under the row-wise step (``recsys_core/row_optim.py``), side by side in one
process, at the table sizes of a split (default: the issue's 10%-scale N3M, 47,642 users x 17,509 items),
random batches of ``--batch`` ratings. The row models (``--models autoencoder,autorec-item,autorec-user``):
one step on the sparse path (embedding_bag in, gathered outputs) with dense input/output layers under the
fused Adam (``--no-sparse``) against row-sparse ones under the row-wise step, batches of the model's default
size, each row with ``--per-user`` (user vectors) or ``--per-item`` (item vectors) ratings on average
(geometric counts) at columns drawn with Zipf-like popularity (p ~ 1/(rank + 10)). Results and command in
BENCHMARKS.md::

    nice -n 5 .venv/bin/python bench/bench_sparse_step.py --threads 1 [--models mf,mlp,autoencoder,...]

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

import numpy as np  # noqa: E402

from recsys_core import models  # noqa: E402
from recsys_core.models.autoencoder import DeepAutoencoder  # noqa: E402
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


ROW_MODELS = {"autoencoder": "user", "autorec-user": "user", "autorec-item": "item"}


def row_batches(n_out: int, per_row: float, batch: int, steps: int, seed: int = 0):
    """``steps`` batches of ``batch`` rows as sparse bags: (cols, values, offsets, owner)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (np.arange(n_out) + 10.0)
    popularity /= popularity.sum()
    out = []
    for _ in range(steps):
        lengths = np.minimum(rng.geometric(1.0 / per_row, batch), n_out)
        cols = [np.unique(rng.choice(n_out, size=k, p=popularity)) for k in lengths]
        lengths = np.array([len(c) for c in cols])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        owner = np.repeat(np.arange(batch), lengths)
        out.append((torch.from_numpy(np.concatenate(cols)), torch.randn(int(lengths.sum())),
                    torch.from_numpy(offsets), torch.from_numpy(owner)))
    return out


def row_step_ms(name: str, sparse: bool, batches, n_out: int) -> tuple[float, float]:
    torch.manual_seed(0)
    config = models.resolve_options(name, {"sparse": sparse})
    model = DeepAutoencoder(n_out, list(config.layers), config.activation, config.dropout, config.constrained,
                            config.last_layer_activation, sparse_rows=sparse)
    optimizer = make_optimizer(model, config)
    wall, cpu = time.perf_counter(), time.process_time()
    for cols, values, offsets, owner in batches:  # the estimator's sparse path (RowsEstimator.losses)
        touched = model.touched_rows(cols)
        hidden = model.decode_hidden(model.encode_sparse(cols, values, offsets, touched))
        loss = ((model.output_at(hidden, owner, cols, touched) - values) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 1000 * (time.process_time() - cpu) / len(batches), 1000 * (time.perf_counter() - wall) / len(batches)


def bench_rows(name: str, args) -> dict:
    n_out = args.items if ROW_MODELS[name] == "user" else args.users
    per_row = args.per_user if ROW_MODELS[name] == "user" else args.per_item
    batch = int(models.resolve_options(name, {}).batch_size)
    batches = row_batches(n_out, per_row, batch, args.steps)
    touched = np.mean([len(torch.unique(b[0])) for b in batches])
    runs = {"dense": [], "sparse": []}
    for _ in range(2):
        for kind in ("dense", "sparse"):
            runs[kind].append(row_step_ms(name, kind == "sparse", batches, n_out))
    out = {kind: {"cpu_ms": round(min(c for c, _ in r), 2), "wall_ms": round(min(w for _, w in r), 2)}
           for kind, r in runs.items()}
    return {"model": name, "table_rows": n_out, "batch_rows": batch, "ratings_per_row": per_row,
            "rows_touched_per_step": round(float(touched)), **out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=47_642)
    p.add_argument("--items", type=int, default=17_509)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="mf,mlp", help="comma-separated: mf, mlp, " + ", ".join(ROW_MODELS))
    p.add_argument("--per-user", type=float, default=43.0, help="row models: mean ratings of a user vector")
    p.add_argument("--per-item", type=float, default=117.0, help="row models: mean ratings of an item vector")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        if name in ROW_MODELS:
            out = bench_rows(name, args)
            print(json.dumps({**out, "threads": args.threads, "cpu_ratio_dense_over_sparse": round(
                out["dense"]["cpu_ms"] / out["sparse"]["cpu_ms"], 2), "load": round(os.getloadavg()[0], 2)}),
                flush=True)
            continue
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
