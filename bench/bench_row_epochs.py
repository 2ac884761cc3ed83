"""Epochs of the row models (autoencoder, AutoRec) with dense input/output layers under the loop's fused Adam
(``--no-sparse``, before issue 21) against row-sparse ones under the row-wise step (the default), side by side in
one process on one split, alternating the two. Results and command in BENCHMARKS.md::

    RECSYS_PROGRESS=0 nice -n 5 .venv/bin/python bench/bench_row_epochs.py <matrices>/N3M --threads 2

Prints one JSON line per model and side: the loop's seconds per epoch (wall, its valid pass included), the CPU
seconds of the whole training call (epochs, evaluation, predictions) and the valid RMSE after the epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from recsys_core.settings import RunSettings  # noqa: E402
from recsys_core.train import train  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split", type=Path, help="a matrices folder of one split (e.g. <matrices>/N3M)")
    p.add_argument("--models", default="autoencoder,autorec-item,autorec-user")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    settings = RunSettings(threads=args.threads, recall_users=0)
    with tempfile.TemporaryDirectory(prefix="bench-row-epochs-") as tmp:
        for name in args.models.split(","):
            for sparse in (False, True):
                cpu = time.process_time()
                metrics = train(args.split, Path(tmp) / f"{name}-{sparse}", name,
                                {"sparse": sparse, "sparse_min_rows": 0, "epochs": args.epochs, "patience": 0},
                                settings)
                assert metrics is not None
                seconds, cpu = metrics["training"]["seconds_per_epoch"], round(time.process_time() - cpu, 1)
                print(json.dumps({"model": name, "sparse": sparse, "epochs": args.epochs, "threads": args.threads,
                                  "seconds_per_epoch": seconds, "cpu_seconds_whole_run": cpu,
                                  "valid_rmse": round(metrics["valid"]["rmse"], 4),
                                  "load": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
