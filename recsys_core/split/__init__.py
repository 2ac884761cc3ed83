"""Stage 2: split a stage-1 ratings folder into train / valid / test parts.

``split(ratings_dir, out_dir, protocol, **options) -> {split name: stats}``; every protocol carves a
valid set by default, so early stopping and model choice never need test:

* ``netflix-time`` (time_splits.py): the four time splits of arXiv 1708.01715 (N3M, N6M, N1Y, NF), all
  dates inclusive. Test-period ratings are kept only for users and items with a train rating in that
  split; each kept rating goes to valid with probability ``valid_share`` (default 1/2, the paper's rule).
* ``time`` (time_splits.py): one split by dates or by a quantile of time; valid is the period just before
  the test period, as long as it (dates) or holding as many ratings (quantile), unless ``valid_share``.
* ``leave-one-out`` (leave_one_out.py): per user the latest interaction is test and the one before valid
  (``valid=False``: none), plus sampled negatives (NCF protocol).
* ``random`` (random_split.py): each rating held out as test (``fraction``, 0.1) or valid
  (``valid_fraction``, 0.05) by a seeded hash.
* ``chrono`` (chrono.py): per user, ratings by time: the oldest ``train_share`` (0.8) to train, the next
  ``valid_share`` (0.1) to valid, the latest to test.

The time-based and random protocols stream over the input once (engine.py); hashing.py holds the
seeded per-rating coin, stats.py the statistics, reading.py and writing.py the file handling.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from recsys_core.errors import RecsysError
from recsys_core.split.chrono import check_chrono_options, split_chrono
from recsys_core.split.engine import check_share, last_phases
from recsys_core.split.hashing import SALT_RANDOM_HOLDOUT, SALT_VALID_TEST, hash_unit, hash_unit_scalar
from recsys_core.split.leave_one_out import split_leave_one_out
from recsys_core.split.random_split import check_random_options, split_random
from recsys_core.split.stats import part_stats, stats_table
from recsys_core.split.time_splits import (
    NETFLIX_SPLITS,
    TimeSplit,
    check_time_options,
    split_netflix_time,
    split_time,
)

PROTOCOL_FUNCS = {
    "netflix-time": split_netflix_time,
    "time": split_time,
    "leave-one-out": split_leave_one_out,
    "random": split_random,
    "chrono": split_chrono,
}
PROTOCOLS = tuple(PROTOCOL_FUNCS)


def protocol_options(protocol: str) -> dict[str, inspect.Parameter]:
    """The options ``split`` accepts for ``protocol`` (name -> parameter with its default)."""
    params = inspect.signature(PROTOCOL_FUNCS[protocol]).parameters
    return {k: p for k, p in params.items() if k not in ("ratings_dir", "out_dir")}


def _type_ok(value, parameter: inspect.Parameter) -> bool:
    """Whether ``value`` fits the annotation of a protocol's option (``float | None``, ``int``, ``bool``...)."""
    kinds = {k.strip() for k in str(parameter.annotation).split("|")} - {"None"}
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int) and ("int" in kinds or "float" in kinds):
        return True
    return ((isinstance(value, float) and "float" in kinds) or (isinstance(value, str) and "str" in kinds)
            or (isinstance(value, list) and any(k.startswith("list") for k in kinds)))


def check_options(protocol: str, options: dict) -> dict:
    """``options`` for ``protocol`` checked without reading any data (names, types, values: one sentence per
    mistake), as the flow does before its first stage; returns them without the ones given as None."""
    if protocol not in PROTOCOL_FUNCS:
        raise RecsysError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    accepted = protocol_options(protocol)
    wrong = sorted(k for k, v in options.items() if k not in accepted and v is not None)
    if wrong:
        raise RecsysError(f"option(s) {', '.join(wrong)} do not apply to protocol {protocol} "
                          f"(it takes {', '.join(sorted(accepted))})")
    options = {k: v for k, v in options.items() if k in accepted and v is not None}
    for name, value in options.items():
        if name == "splits":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RecsysError(f"split option splits must be a list of split names, got {value!r}")
            unknown = [v for v in value if v not in NETFLIX_SPLITS]
            if unknown:
                raise RecsysError(f"unknown Netflix split(s) {', '.join(unknown)}; choose from "
                                  f"{', '.join(NETFLIX_SPLITS)}")
        elif not _type_ok(value, accepted[name]):
            raise RecsysError(f"split option {name} of protocol {protocol} must be "
                              f"{str(accepted[name].annotation).replace(' | None', '')}, got {value!r}")
    for name in ("valid_share", "train_share", "fraction", "valid_fraction"):
        if name in options:
            check_share(name, options[name])
    if protocol == "time":
        check_time_options(**options)
    elif protocol == "chrono":
        check_chrono_options(**options)
    elif protocol == "random":
        check_random_options(**options)
    return options


def split(ratings_dir: str | Path, out_dir: str | Path, protocol: str, **options) -> dict[str, dict]:
    """Split a stage-1 folder with ``protocol``; returns {split name: stats}. Options are those of the protocol
    (an option given as None takes its default)."""
    options = check_options(protocol, options)
    return PROTOCOL_FUNCS[protocol](Path(ratings_dir), Path(out_dir), **options)


__all__ = [
    "NETFLIX_SPLITS", "PROTOCOLS", "PROTOCOL_FUNCS", "SALT_RANDOM_HOLDOUT", "SALT_VALID_TEST", "TimeSplit",
    "check_options", "hash_unit", "hash_unit_scalar", "last_phases", "part_stats", "protocol_options", "split",
    "split_chrono", "split_leave_one_out", "split_netflix_time", "split_random", "split_time", "stats_table",
]

