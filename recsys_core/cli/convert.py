"""``recsys convert``: stage 1 (``recsys_core.convert``)."""

from __future__ import annotations

from pathlib import Path

from recsys_core.convert import (
    COMPRESSIONS,
    DEFAULT_BATCH_MB,
    DEFAULT_COMPRESSION,
    RECOGNISED,
    run_conversion,
)


def add(subparsers, name: str, summary: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=("Convert raw ratings to OUT_DIR/ratings.parquet (user_id, item_id, rating, timestamp), "
                     "OUT_DIR/items.parquet (item_id, title, year, genres) and OUT_DIR/meta.json. The input form "
                     f"is recognised by itself: {RECOGNISED}. Archives are read in place, never extracted. "
                     "OUT_DIR is replaced as a whole only when everything succeeded."),
    )
    parser.add_argument("src", metavar="SRC", type=Path, help=f"the raw data: {RECOGNISED}")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                        help="output folder (created, or replaced as a whole on success)")
    parser.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION,
                        help=f"Parquet compression of ratings.parquet (default: {DEFAULT_COMPRESSION}, level 1: about "
                             "15%% smaller than the others on Netflix and a little slower to write; snappy, "
                             "lz4 and none are equally fast and equally large here)")
    parser.add_argument("--batch-mb", type=float, default=DEFAULT_BATCH_MB, metavar="MB",
                        help=f"Netflix: megabytes of rating text parsed per batch and written per Parquet row "
                             f"group; memory grows about 4x this (default: {DEFAULT_BATCH_MB})")
    parser.set_defaults(func=run)


def run(args) -> int:
    report = run_conversion(args.src, args.out_dir, compression=args.compression, batch_mb=args.batch_mb)
    print(f"wrote {args.out_dir}/ratings.parquet, items.parquet, meta.json: {report.summary()}")
    return 0
