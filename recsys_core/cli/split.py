"""``recsys split``: stage 2 (``recsys_core.split.split``); which option belongs to which protocol is the library's
``protocol_options``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsys_core.errors import RecsysError
from recsys_core.split import PROTOCOLS, protocol_options, split, stats_table

_FLAGS = {  # option -> (argparse keywords, help)
    "splits": ({}, "netflix-time: comma-separated subset of N3M,N6M,N1Y,NF (default: all four)"),
    "valid_share": ({"type": float}, "netflix-time: share of the kept test-period ratings sent to valid by a hash "
                    "of (seed, user_id, item_id) (default 0.5; 0 = no valid). netflix-probe: the same for the probe "
                    "ratings (0: all of probe is test, the Prize papers' convention). time: use this rule instead of "
                    "the default valid period before the test period. chrono: share of each user's ratings, after "
                    "the train share, that go to valid (default 0.1; 0 = no valid)"),
    "train_share": ({"type": float}, "chrono: share of each user's oldest ratings that go to train (default 0.8; "
                    "the latest 1 - train - valid go to test)"),
    "source": ({}, "netflix-probe: the Netflix Prize source the ratings were converted from, holding probe.txt "
               "(a folder with training_set/, nf_prize_dataset.tar.gz, the Kaggle folder or zip, or probe.txt "
               "itself); read in place, never extracted"),
    "train_start": ({}, "time: first train day, YYYY-MM-DD (inclusive, UTC)"),
    "train_end": ({}, "time: last train day (inclusive); by default its last days, as many as the test period "
                  "has, become valid"),
    "test_start": ({}, "time: first day of the test period (inclusive)"),
    "test_end": ({}, "time: last day of the test period (inclusive)"),
    "quantile": ({"type": float}, "time: cut at this quantile q of the timestamps instead of dates: from it test, "
                 "between the 2q-1 quantile and it valid, before train (default 0.9 when no dates are given)"),
    "valid": ({"action": argparse.BooleanOptionalAction}, "leave-one-out: hold out each user's second-latest "
              "rating as valid (default; --no-valid: none)"),
    "negatives": ({"type": int}, "leave-one-out: distinct never-rated items sampled per test user (default 99)"),
    "min_interactions": ({"type": int}, "leave-one-out: users with fewer ratings stay in train only, counted in "
                         "stats.json (default 3, 2 with --no-valid)"),
    "fraction": ({"type": float}, "random: share of ratings held out as test (default 0.1)"),
    "valid_fraction": ({"type": float}, "random: share of ratings held out as valid (default 0.05; 0 = none)"),
    "keep_unseen": ({"action": "store_true", "default": None}, "random: keep held-out ratings of users or items "
                    "without a train rating (by default dropped and counted)"),
}


def run(args) -> int:
    accepted = set(protocol_options(args.protocol))
    given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    foreign = sorted(set(given) - accepted)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        plural = len(foreign) > 1
        raise RecsysError(f"option{'s' if plural else ''} {flags} {'do' if plural else 'does'} not apply to "
                          f"--protocol {args.protocol}")
    if "splits" in given:
        given["splits"] = [n.strip() for n in given["splits"].split(",") if n.strip()]
    started = time.perf_counter()
    all_stats = split(args.ratings_dir, args.out_dir, args.protocol, seed=args.seed, **given)
    print(stats_table(all_stats), end="")
    for name, stats in all_stats.items():
        if stats["valid"]["ratings"] == 0:
            print(f"NOTE: split {name} has NO VALID PART: training on it stops on nothing and chooses on nothing")
    print(f"wrote {', '.join(str(Path(args.out_dir) / n) for n in all_stats)} in {time.perf_counter() - started:.1f} s")
    return 0


def add(subparsers, name: str, summary: str) -> None:
    p = subparsers.add_parser(
        name, help=summary,
        description="Split RATINGS_DIR (a stage-1 folder) into one folder per split under OUT_DIR (train, valid, "
                    "test, items .parquet, stats.json, stats.md, split.json; leave-one-out also negatives.parquet). "
                    "Every protocol carves a valid set by default. Seeded and reproducible; a failed run writes "
                    "nothing and leaves older output intact. See docs/split-matrices.md.")
    p.add_argument("ratings_dir", metavar="RATINGS_DIR", type=Path, help="stage-1 folder (output of convert)")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder that receives one sub-folder per split")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS, help="netflix-time (arXiv 1708.01715), time "
                   "(one global time cut), chrono (per user by time: oldest 80%% train, next 10%% valid, latest "
                   "10%% test), leave-one-out (NCF), random, or netflix-probe (the Netflix Prize's probe.txt; needs "
                   "--source)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random decision (default 0)")
    for option, (keywords, text) in _FLAGS.items():
        p.add_argument("--" + option.replace("_", "-"), dest=option, help=text, **keywords)
    p.set_defaults(func=run)
