"""Benchmark stage 1 (convert): wall and CPU time, phase breakdown, throughput and peak memory.

    flock /tmp/heavy.lock python bench/bench_convert.py SRC OUT_DIR [--compression lz4] [--batch-mb 128]

SRC is any input ``convert`` accepts (e.g. data/raw/full or its training_set.tar).
Run it on a quiet machine: the numbers in BENCHMARKS.md come from this script. Each run is a
fresh process (so peak RSS is this conversion's own); the page cache is warm after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import peak_rss_mb  # noqa: E402

from recsys_core.convert import COMPRESSIONS, DEFAULT_COMPRESSION, run_conversion  # noqa: E402
from recsys_core.convert.netflix import DEFAULT_BATCH_MB  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION)
    parser.add_argument("--batch-mb", type=float, default=DEFAULT_BATCH_MB)
    args = parser.parse_args()
    os.environ.setdefault("RECSYS_PROGRESS", "0")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    report = run_conversion(args.src, args.out_dir, compression=args.compression, batch_mb=args.batch_mb)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    size = (args.out_dir / "ratings.parquet").stat().st_size
    result = {
        "src": str(args.src), "compression": args.compression, "batch_mb": args.batch_mb,
        "ratings": report.meta["ratings"], "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "ratings_per_s": round(report.meta["ratings"] / wall), "input_MB": round(report.input_bytes / 1e6),
        "MB_per_s": round(report.input_bytes / 1e6 / wall), "phase_thread_s": report.timings.as_dict(),
        "peak_rss_MB": round(peak_rss_mb()), "ratings_parquet_MB": round(size / 1e6, 1),
        "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
