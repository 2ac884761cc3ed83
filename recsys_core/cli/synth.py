"""``recsys synth``: generated Netflix-format data (``recsys_core.synth``)."""

from __future__ import annotations

from recsys_core.synth import (
    DEFAULT_PROFILE,
    DISTRIBUTION_TAR_GZ,
    KAGGLE_ZIP,
    LAYOUTS,
    MAX_SCALE,
    MIN_SCALE,
    PROFILES,
    generate_netflix,
)


def add(subparsers, name: str, summary: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=(
            "Write a synthetic data set in exactly the layout of the Netflix Prize training set: "
            "OUT/training_set/mv_0000001.txt ... (one file per movie: a '<movie id>:' line, then "
            "'customer_id,rating,YYYY-MM-DD' lines), OUT/movie_titles.txt (ISO-8859-1 'id,year,title'), "
            "OUT/probe.txt and OUT/qualifying.txt (the Prize's hold-out sets: per customer a few of its most recent "
            "ratings, ~1.4%% of the ratings each; probe inside the training set, qualifying not), "
            "plus OUT/qualifying_truth.txt (the hidden qualifying ratings, 'rating,quiz|test' per qualifying line), "
            "OUT/oracle.npz (the generating model: biases and factors) and OUT/synth.json "
            "(parameters and counts). Ratings follow mean + user bias + item bias + low-rank product "
            "(+ the user's offset for the movie's taste cluster) + Gaussian noise, rounded and clipped to 1..5; "
            "dates span 1999-11-11..2005-12-31 and grow toward 2005 like the real data. --layout kaggle writes "
            "the same ratings in the layout of the Kaggle "
            "'Netflix Prize data' set instead: OUT/combined_data_1.txt .. combined_data_4.txt (the movies' "
            "blocks one after the other), OUT/movie_titles.csv, OUT/probe.txt, OUT/qualifying.txt, OUT/README."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created; files in it are replaced atomically)")
    parser.add_argument(
        "--scale",
        type=float,
        default=0.01,
        help=(
            "size relative to the real data set: movies = round(17770*sqrt(S)), customers = "
            "round(480189*S), ratings ~ 100,480,507*S. 1.0 is the real shape (~2 GB of text, under a minute on two "
            f"cores); 0.01 gives ~1M ratings. Allowed {MIN_SCALE}..{MAX_SCALE} (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--seed", type=int, default=0,
        help="random seed; the same seed and scale give byte-identical files (default: %(default)s)",
    )
    parser.add_argument(
        "--tar", action="store_true",
        help="also write OUT/training_set.tar with members training_set/mv_0000001.txt ..., as distributed",
    )
    parser.add_argument(
        "--tar-gz", action="store_true",
        help=f"also write OUT/{DISTRIBUTION_TAR_GZ}, the Prize's distribution archive (download/training_set.tar, "
             "movie_titles.txt, probe.txt, qualifying.txt, README); implies --tar",
    )
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="netflix",
        help="netflix: the Prize distribution's per-movie files; kaggle: the Kaggle set's combined_data_*.txt "
             "(default: %(default)s)",
    )
    parser.add_argument(
        "--profile", choices=PROFILES, default=DEFAULT_PROFILE,
        help="real: heavy-tailed movie popularity, customers joining over time (many with few ratings before a "
             "test period), taste clusters beyond the low-rank model; plain: the global low-rank model of "
             "earlier versions, byte-identical files for a seed (default: %(default)s)",
    )
    parser.add_argument(
        "--zip", action="store_true",
        help=f"with --layout kaggle: also write OUT/{KAGGLE_ZIP}, the layout's files in one zip archive, as "
             "downloaded from Kaggle",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    meta = generate_netflix(args.out, scale=args.scale, seed=args.seed, tar=args.tar, layout=args.layout,
                            zip_archive=args.zip, profile=args.profile, distribution=args.tar_gz)
    print(
        f"wrote {meta['ratings']:,} ratings of {meta['customers']:,} customers on {meta['movies']:,} movies "
        f"({meta['first_date']} .. {meta['last_date']}) to {args.out}; oracle RMSE {meta['oracle_rmse']:.4f}"
    )
    return 0
