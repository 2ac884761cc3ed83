"""Seconds per epoch of the loop's models projected from timed training steps, for epochs too long to run
whole (issue 21 item 5: NeuMF at full-scale N3M, 268K steps of 256 pairs). For each model at its defaults
on one stage-3 split: the time to the first batch (the epoch's shuffle and, for NCF, its sampled negatives),
then ``--steps`` steps of the loop's own work (batch, forward, backward, optimizer step), timed after
``--warmup`` steps; projected epoch = first batch + seconds per step x steps per epoch. Results and command in
BENCHMARKS.md ("Default models at full-scale N3M")::

    RECSYS_PROGRESS=0 .venv/bin/python bench/bench_steps.py MATRICES/N3M --models gmf neumf ncf-mlp

Check the projection on a model whose whole epoch was measured (GMF, NCF-MLP) before trusting it on one
that was not. Prints one JSON line per model.
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
sys.path[:0] = [str(ROOT)]

from recsys_core import models  # noqa: E402
from recsys_core.interactions import load_split_data  # noqa: E402
from recsys_core.training_loop import make_optimizer  # noqa: E402


def time_steps(data, name: str, steps: int, warmup: int) -> dict:
    estimator = models.create(name)
    estimator.bind(data)
    optimizer = make_optimizer(estimator.model, estimator.options)
    started = time.perf_counter()
    batches = iter(estimator.batches(np.random.default_rng([0, 1])))
    batch = next(batches)
    first = time.perf_counter() - started
    per_epoch = estimator.n_batches()
    timed_from = None
    for step in range(min(warmup + steps, per_epoch)):
        if step == warmup:
            timed_from = time.perf_counter()
        if step:
            batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        for loss, _ in estimator.losses(batch):
            loss.backward()
        optimizer.step()
    if timed_from is None:
        raise SystemExit(f"{name}: an epoch has only {per_epoch} steps, fewer than --warmup {warmup}; time it whole")
    timed = min(warmup + steps, per_epoch) - warmup
    per_step = (time.perf_counter() - timed_from) / timed
    return {"model": name, "batch_size": estimator.batch_size, "steps_per_epoch": per_epoch,
            "first_batch_s": round(first, 2), "ms_per_step": round(per_step * 1e3, 3), "timed_steps": timed,
            "projected_epoch_s": round(first + per_step * per_epoch, 1), "load": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Seconds per epoch projected from timed training steps.")
    parser.add_argument("split_dir", type=Path, help="a stage-3 split folder (train.npz, meta.json, ...)")
    parser.add_argument("--models", nargs="+", default=["gmf", "neumf", "ncf-mlp"])
    parser.add_argument("--steps", type=int, default=2500, help="steps timed per model")
    parser.add_argument("--warmup", type=int, default=500, help="steps run before timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_split_data(args.split_dir)
    for name in args.models:
        print(json.dumps(time_steps(data, name, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
