"""``recsys split``: stage 2 (``recsys_core.split.split``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsys_core.errors import RecsysError

# Options that belong to one protocol only (each is refused with the others).
PROTOCOL_OPTIONS = {
    "netflix-time": ("splits", "valid_share"),
    "time": ("train_start", "train_end", "test_start", "test_end", "quantile", "valid_share"),
    "leave-one-out": ("valid", "negatives", "min_interactions"),
    "random": ("fraction", "valid_fraction", "keep_unseen"),
}


def add(subparsers, name: str, summary: str) -> None:
    from recsys_core.split import PROTOCOLS

    p = subparsers.add_parser(
        name,
        help=summary,
        description=(
            "Split RATINGS_DIR (a stage-1 folder: ratings.parquet, items.parquet, meta.json) into one folder "
            "per split under OUT_DIR, each holding train.parquet, valid.parquet, test.parquet, items.parquet, "
            "stats.json, stats.md and split.json (leave-one-out also negatives.parquet). All decisions are "
            "seeded and reproducible; a failed run writes nothing and leaves older output intact."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ratings_dir", metavar="RATINGS_DIR", type=Path, help="stage-1 folder (output of convert)")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder that receives one sub-folder per split")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS,
                   help="netflix-time: the N3M/N6M/N1Y/NF splits of arXiv 1708.01715; time: one split by dates "
                        "or a time quantile; leave-one-out: latest rating per user is test (NCF); random: a "
                        "seeded random fraction is test")
    p.add_argument("--seed", type=int, default=0, help="seed of every random decision (valid/test halving, "
                   "random hold-out, negative sampling; default 0)")
    g = p.add_argument_group("netflix-time and time")
    g.add_argument("--splits", default=None, help="netflix-time: comma-separated subset of N3M,N6M,N1Y,NF "
                   "(default: all four)")
    g.add_argument("--valid-share", type=float, default=None, help="share of the kept test-period ratings that go "
                   "to valid instead of test, decided per rating by a hash of (seed, user_id, item_id) "
                   "(default 0.5, the paper's halving; 0 puts all in test)")
    g.add_argument("--train-start", default=None, help="time: first train day, YYYY-MM-DD (inclusive, UTC)")
    g.add_argument("--train-end", default=None, help="time: last train day, YYYY-MM-DD (inclusive)")
    g.add_argument("--test-start", default=None, help="time: first day of the test period (inclusive)")
    g.add_argument("--test-end", default=None, help="time: last day of the test period (inclusive)")
    g.add_argument("--quantile", type=float, default=None, help="time: instead of dates, cut at this quantile q "
                   "of the timestamps: ratings before the cut are train, the rest the test period")
    g = p.add_argument_group("leave-one-out")
    g.add_argument("--valid", action="store_true", help="also hold out each user's second-latest rating as valid")
    g.add_argument("--negatives", type=int, default=None, help="items never rated by the user sampled per test "
                   "user into negatives.parquet (default 99)")
    g.add_argument("--min-interactions", type=int, default=None, help="users with fewer ratings stay in train "
                   "only and get no test rating; they are counted in stats.json (default 2, or 3 with --valid)")
    g = p.add_argument_group("random")
    g.add_argument("--fraction", type=float, default=None, help="probability that a rating is held out as test "
                   "(default 0.1)")
    g.add_argument("--valid-fraction", type=float, default=None, help="probability that a rating is held out "
                   "as valid (default 0)")
    g.add_argument("--keep-unseen", action="store_true", help="keep held-out ratings of users or items that have "
                   "no train rating (by default they are dropped and counted in stats.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from recsys_core.split import split, stats_table

    given = {name for names in PROTOCOL_OPTIONS.values() for name in names
             if getattr(args, name) not in (None, False)}
    foreign = sorted(given - set(PROTOCOL_OPTIONS[args.protocol]))
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        plural = len(foreign) > 1
        raise RecsysError(f"option{'s' if plural else ''} {flags} {'do' if plural else 'does'} not apply to "
                          f"--protocol {args.protocol}")
    options = {"seed": args.seed, **{name: getattr(args, name) for name in PROTOCOL_OPTIONS[args.protocol]}}
    if args.protocol == "netflix-time" and args.splits:
        options["splits"] = [n.strip() for n in args.splits.split(",") if n.strip()]
    started = time.perf_counter()
    all_stats = split(args.ratings_dir, args.out_dir, args.protocol, **options)
    print(stats_table(all_stats), end="")
    print(f"wrote {', '.join(str(Path(args.out_dir) / n) for n in all_stats)} in {time.perf_counter() - started:.1f} s")
    return 0
