"""Benchmark the Netflix Prize protocol: the netflix-probe split beside the four netflix-time splits, and the
qualifying pass (``recsys qualify``). Each command measures one process: wall and CPU seconds, peak RSS
(VmHWM). Run the two splits one after the other on the same machine and compare (the issue's bar: the probe
split costs no more than the four netflix-time splits together).

    python bench/bench_prize.py split data/converted /tmp/s-probe --protocol netflix-probe --source data/raw
    python bench/bench_prize.py split data/converted /tmp/s-time --protocol netflix-time
    python bench/bench_prize.py make-qualifying data/converted /tmp/q --lines 2817131
    python bench/bench_prize.py qualify RUN_DIR --source /tmp/q --out /tmp/q/predictions.txt

``make-qualifying`` writes a ``qualifying.txt`` of the real file's length (2,817,131 lines) from pairs of a
converted set (customers and movies it holds, movie blocks ascending, seeded), so the qualifying pass can be
timed at the real length on a smaller generated set.
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


def _report(what: str, wall: float, cpu: float, extra: str = "") -> None:
    load = os.getloadavg()[0]
    print(f"{what}: wall {wall:.2f} s  cpu {cpu:.2f} s  peak RSS {peak_rss_mb():.0f} MB  load average {load:.1f}"
          f"{'  ' + extra if extra else ''}")


def split(args) -> None:
    from recsys_core import split as split_mod

    options = {"source": args.source} if args.protocol == "netflix-probe" else {"splits": ["N3M", "N6M", "N1Y", "NF"]}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stats = split_mod.split(args.ratings_dir, args.out_dir, args.protocol, seed=0, **options)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rows = sum(s["train"]["ratings"] + s["valid"]["ratings"] + s["test"]["ratings"] for s in stats.values())
    _report(f"split {args.protocol}", wall, cpu, f"{rows:,} rows written; phases (s) {split_mod.last_phases}")


def make_qualifying(args) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(Path(args.ratings_dir) / "ratings.parquet", columns=["user_id", "item_id"])
    users, items = table.column(0).to_numpy(), table.column(1).to_numpy()
    rng = np.random.default_rng(0)
    pick = np.sort(rng.integers(0, len(users), args.lines))  # the file is movie-major: rows are too
    users, items = users[pick], items[pick]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    starts = np.flatnonzero(np.diff(items, prepend=-1))
    bounds = np.append(starts, len(items))
    with open(out / "qualifying.txt", "w") as sink:
        for a, b in zip(bounds[:-1], bounds[1:]):
            sink.write(f"{items[a]}:\n")
            sink.write("".join(f"{u},2005-12-{1 + u % 28:02d}\n" for u in users[a:b].tolist()))
    print(f"wrote {out / 'qualifying.txt'}: {args.lines:,} lines under {len(starts):,} movie headers")


def qualify(args) -> None:
    from recsys_core.qualify import write_qualifying

    cpu0, wall0 = time.process_time(), time.perf_counter()
    report = write_qualifying(args.run_dir, args.source, args.out)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    _report("qualify", wall, cpu, f"{report.lines:,} predictions of {report.model}, {report.lines / wall / 1e6:.2f}M/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("ratings_dir")
    p.add_argument("out_dir")
    p.add_argument("--protocol", choices=["netflix-probe", "netflix-time"], required=True)
    p.add_argument("--source", help="netflix-probe: the raw source holding probe.txt")
    p.set_defaults(func=split)
    p = sub.add_parser("make-qualifying")
    p.add_argument("ratings_dir")
    p.add_argument("out_dir")
    p.add_argument("--lines", type=int, default=2_817_131)
    p.set_defaults(func=make_qualifying)
    p = sub.add_parser("qualify")
    p.add_argument("run_dir")
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=qualify)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
