"""Benchmark stage 2: all four netflix-time splits from a stage-1 folder.

Prints wall and CPU seconds, peak RSS (VmHWM) and the phase breakdown of the streaming pass
(open, read = Parquet decode, route = masks + filters + id bitmaps, write_wait = waiting for the
train writers, heldout = valid/test assignment + their files + stats, close = rename into place).

    flock /tmp/heavy.lock .venv/bin/python bench/bench_split.py data/full/converted data/full/splits-nt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import peak_rss_mb  # noqa: E402

os.environ.setdefault("RECSYS_PROGRESS", "0")

from recsys_core import split as split_mod  # noqa: E402


def peak_rss_gb() -> float:
    return peak_rss_mb() / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ratings_dir", type=Path, help="stage-1 folder (ratings.parquet, items.parquet)")
    parser.add_argument("out_dir", type=Path, help="where the split folders go")
    parser.add_argument("--splits", default="N3M,N6M,N1Y,NF")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stats = split_mod.split(args.ratings_dir, args.out_dir, "netflix-time", splits=args.splits.split(","),
                            seed=args.seed)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(split_mod.stats_table(stats), end="")
    print(f"phases (s): {split_mod.last_phases}")
    print(f"wall {wall:.2f} s  cpu {cpu:.2f} s  peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
