"""Benchmark stage 3: matrices of split folders (default: the NF split).

Prints wall and CPU seconds, peak RSS (VmHWM) and the phases of each split (read = Parquet decode,
index = dense id index, map = raw ids -> row/col numbers, csr = CSR build, transpose = train_by_item,
write = npz/Parquet files).

    flock /tmp/heavy.lock .venv/bin/python bench/bench_matrices.py data/full/splits-nt/NF data/full/matrices-nt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RECSYS_PROGRESS", "0")

from bench_split import peak_rss_gb  # noqa: E402

from recsys_core.matrices import build_matrices  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_dir", type=Path, help="one split folder, or a folder of split folders")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = build_matrices(args.split_dir, args.out_dir)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    for name, meta in result.items():
        print(f"{name}: {meta['n_users']:,} x {meta['n_items']:,}, nnz {meta['nnz']}, phases (s) {meta['seconds']}")
    print(f"wall {wall:.2f} s  cpu {cpu:.2f} s  peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
