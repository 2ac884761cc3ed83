"""Benchmark the synthetic Netflix generator: wall, CPU, peak RSS, ratings, bytes, per-phase seconds.

    flock /tmp/heavy.lock .venv/bin/python bench/bench_synth.py --scale 1.0 --out data/netflix-1.0 --tar --ready
    flock /tmp/heavy.lock .venv/bin/python bench/bench_synth.py --scale 1.0 --out data/kaggle-1.0 --layout kaggle --zip

Run it under the shared lock: scale 1.0 takes a couple of minutes of both cores and several GB.
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

from recsys_core.synth import generate_netflix  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1, help="data scale (1.0 = real Netflix shape)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tar", action="store_true", help="also write training_set.tar")
    parser.add_argument("--layout", choices=("netflix", "kaggle"), default="netflix", help="file layout")
    parser.add_argument("--zip", action="store_true", help="kaggle layout: also write netflix-prize-data.zip")
    parser.add_argument("--ready", action="store_true", help="write OUT/READY when done (for shared data)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    ready = out / "READY"
    if ready.exists():
        ready.unlink()  # readers must not use a folder being rewritten
    cpu0, wall0 = time.process_time(), time.perf_counter()
    meta = generate_netflix(out, scale=args.scale, seed=args.seed, tar=args.tar, layout=args.layout,
                            zip_archive=args.zip)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tar_bytes = (out / "training_set.tar").stat().st_size if args.tar else 0
    zip_bytes = (out / "netflix-prize-data.zip").stat().st_size if args.zip else 0
    result = {
        "scale": args.scale,
        "seed": args.seed,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "ratings": meta["ratings"],
        "movies": meta["movies"],
        "customers": meta["customers"],
        "training_set_bytes": meta["training_set_bytes"],
        "layout": args.layout,
        "tar_bytes": tar_bytes,
        "zip_bytes": zip_bytes,
        "ratings_per_s": round(meta["ratings"] / wall),
        "oracle_rmse": round(meta["oracle_rmse"], 4),
        "phase_seconds": meta["phase_seconds"],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.ready:
        ready.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
