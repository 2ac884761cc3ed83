"""Benchmark of the work after the last epoch (issue 14 part 8; results and command in BENCHMARKS.md).

One run measures, on one split folder, one training epoch of a model and then each post-training phase that
``recsys_core.train.train`` runs after it, in the same order and with the same functions:

  epoch            ``estimator.fit`` with ``epochs=1`` (one epoch + its valid evaluation)
  evaluation       model metrics, baselines fitted and evaluated, predictions.parquet
                   (``train._evaluate_and_write``; its own per-phase seconds are logged)
  recommendations  top-K of every user with training ratings, recommendations.parquet
                   (``train._write_recommendations``)

For each: wall seconds, CPU seconds and the peak RSS reached during that phase (the kernel's high-water mark
is reset between phases through /proc/self/clear_refs), and the load average when it ended, so that the
ratio post-training / epoch is read within one run on a shared machine. Heavy at full scale: run it under
``nice`` (and ``flock /tmp/heavy.lock`` where other jobs share the machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

from recsys_core import models  # noqa: E402
from recsys_core.interactions import load_split_data  # noqa: E402
from recsys_core.settings import RunSettings  # noqa: E402
from recsys_core.train import _evaluate_and_write, _write_recommendations  # noqa: E402


def _reset_peak() -> None:
    """Start a fresh RSS high-water mark (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def phase(name: str, func, results: dict):
    _reset_peak()
    cpu, started = _cpu(), time.perf_counter()
    value = func()
    results[name] = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(_cpu() - cpu, 1),
                     "peak_rss_mb": _peak_mb(), "load_avg_1m": round(os.getloadavg()[0], 1)}
    print(json.dumps({"phase": name, **results[name]}), flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True, help="a stage-3 split folder (matrices/<name>)")
    parser.add_argument("--model", default="autoencoder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    results: dict = {}
    data = phase("load", lambda: load_split_data(args.split), results)
    registration = models.get(args.model)
    settings = RunSettings(k=args.k).resolved()
    estimator = registration.create(registration.resolve({"epochs": 1}), device="cpu", settings=settings)
    with tempfile.TemporaryDirectory(prefix="bench-post-") as tmp:
        run_dir = args.out or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        run_config = {**estimator.describe(), **settings.recorded(), "split_dir": str(args.split.resolve())}
        phase("epoch", lambda: estimator.fit(data, run_dir=run_dir), results)
        phase("evaluation", lambda: _evaluate_and_write(estimator, data, run_config, run_dir, {}), results)
        phase("recommendations", lambda: _write_recommendations(estimator, data, run_dir, args.k), results)
    post = results["evaluation"]["wall_s"] + results["recommendations"]["wall_s"]
    print(json.dumps({"bench": "post-training", "split": str(args.split), "model": args.model,
                      "users": data.train.shape[0], "items": data.train.shape[1], "train_ratings": data.train.nnz,
                      "threads": args.threads, "epoch_s": results["epoch"]["wall_s"], "post_training_s": round(post, 1),
                      "post_over_epoch": round(post / results["epoch"]["wall_s"], 2),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in results.values())}), flush=True)


if __name__ == "__main__":
    main()
