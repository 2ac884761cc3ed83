"""Time protocols: ``netflix-time`` (the four splits of arXiv 1708.01715) and ``time`` (one split by dates
or by a quantile of time).

Test-period ratings are kept only for users and items with a train rating in that split. Where valid
comes from:

* netflix-time, and time with ``valid_share``: the paper's converter rule, each kept test-period rating
  goes to valid with probability ``valid_share`` (a hash of (seed, user_id, item_id), so the assignment
  is the same whatever the row order or the set of splits computed; 0 = no valid set).
* time by default: valid mirrors the test period, the latest ratings before it. By dates: the last
  ``L`` days of the train range, ``L`` the length of the test period in days (train keeps the days
  before). By quantile ``q``: the ratings between the ``2q - 1`` and the ``q`` quantile of time, the
  same share of ratings as the test period (train keeps those before). Valid ratings of users or items
  absent from train are dropped like test ones.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from recsys_core.errors import RecsysError
from recsys_core.split.engine import Route, ValidRule, check_share, heldout_finish, stream_split
from recsys_core.split.hashing import SALT_VALID_TEST, hash_unit
from recsys_core.split.reading import (
    SECONDS_PER_DAY,
    check_columns,
    day_seconds,
    iso,
    ratings_path,
    ticks,
    time_range,
    timestamp_quantiles,
)

VALID_BEFORE_TEST = "period before test"
VALID_SHARE_OF_TEST = "share of the test period"


@dataclass(frozen=True)
class TimeSplit:
    """One time split: train dates and test-period dates, both inclusive (UTC days)."""

    name: str
    train_start: dt.date
    train_end: dt.date
    test_start: dt.date
    test_end: dt.date


def _d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# The splits of arXiv 1708.01715 (NVIDIA DeepRecommender README), dates inclusive.
NETFLIX_SPLITS: dict[str, TimeSplit] = {
    "N3M": TimeSplit("N3M", _d("2005-09-01"), _d("2005-11-30"), _d("2005-12-01"), _d("2005-12-31")),
    "N6M": TimeSplit("N6M", _d("2005-06-01"), _d("2005-11-30"), _d("2005-12-01"), _d("2005-12-31")),
    "N1Y": TimeSplit("N1Y", _d("2004-06-01"), _d("2005-05-31"), _d("2005-06-01"), _d("2005-06-30")),
    "NF": TimeSplit("NF", _d("1999-12-01"), _d("2005-11-30"), _d("2005-12-01"), _d("2005-12-31")),
}


def check_time_split(spec: TimeSplit, data_range: tuple[int, int] | None, path: Path) -> None:
    if spec.train_start > spec.train_end:
        raise RecsysError(f"split {spec.name}: train range {spec.train_start}..{spec.train_end} is reversed")
    if spec.test_start > spec.test_end:
        raise RecsysError(f"split {spec.name}: test range {spec.test_start}..{spec.test_end} is reversed")
    if spec.test_start <= spec.train_end and spec.train_start <= spec.test_end:
        raise RecsysError(f"split {spec.name}: test range {spec.test_start}..{spec.test_end} overlaps "
                          f"train range {spec.train_start}..{spec.train_end}")
    if data_range is not None:
        first, last = iso(data_range[0]), iso(data_range[1])
        for part, lo, hi in (("train", spec.train_start, spec.train_end), ("test", spec.test_start, spec.test_end)):
            if hi.isoformat() < first or lo.isoformat() > last:
                raise RecsysError(f"{path}: split {spec.name} {part} range {lo}..{hi} lies outside the data "
                                  f"({first}..{last})")


def _hashed_valid(seed: int, valid_share: float) -> ValidRule:
    return lambda held, users, items: hash_unit(seed, SALT_VALID_TEST, users, items) < valid_share


def _before(at: int) -> ValidRule:
    """Valid = the held-out ratings earlier than ``at`` (file ticks): the period before the test period."""
    return lambda held, users, items: ticks(held.column("timestamp")) < at


def _bounds(first: dt.date, last: dt.date, per_second: int) -> tuple[int, int]:
    """[first day 00:00, day after the last day 00:00) in file ticks."""
    return day_seconds(first) * per_second, (day_seconds(last) + SECONDS_PER_DAY) * per_second


def _time_route(spec: TimeSplit, seed: int, valid_share: float, params: dict, per_second: int) -> Route:
    """Route of one date split whose valid part is a hashed share of the test period."""
    train_lo, train_hi = _bounds(spec.train_start, spec.train_end, per_second)
    test_lo, test_hi = _bounds(spec.test_start, spec.test_end, per_second)
    return Route(
        name=spec.name,
        train_mask=lambda t, u, i: (t >= train_lo) & (t < train_hi),
        heldout_mask=lambda t, u, i: (t >= test_lo) & (t < test_hi),
        finish=heldout_finish(_hashed_valid(seed, valid_share), require_item=True, require_user=True),
        params={"train_start": spec.train_start.isoformat(), "train_end": spec.train_end.isoformat(),
                "test_start": spec.test_start.isoformat(), "test_end": spec.test_end.isoformat(), **params},
        heldout_key=("period", test_lo, test_hi),
    )


def split_netflix_time(ratings_dir: Path, out_dir: Path, splits: list[str] | None = None, seed: int = 0,
                       valid_share: float = 0.5) -> dict[str, dict]:
    """The time splits of arXiv 1708.01715 (any subset of N3M, N6M, N1Y, NF) in one pass."""
    names = list(NETFLIX_SPLITS) if not splits else list(dict.fromkeys(splits))
    unknown = [n for n in names if n not in NETFLIX_SPLITS]
    if unknown:
        raise RecsysError(f"unknown Netflix split(s) {', '.join(unknown)}; choose from {', '.join(NETFLIX_SPLITS)}")
    check_share("valid_share", valid_share)
    path = ratings_path(ratings_dir)
    check_columns(path)
    data_range = time_range(path)
    for name in names:
        check_time_split(NETFLIX_SPLITS[name], data_range, path)
    params = {"seed": seed, "valid_share": valid_share}
    return stream_split(ratings_dir, out_dir, "netflix-time",
                        lambda per_second: [_time_route(NETFLIX_SPLITS[n], seed, valid_share, params, per_second)
                                            for n in names])


# With neither dates nor a quantile, ``time`` cuts at the 0.9 quantile of time: the latest 10% of the ratings
# are test and the 10% before them valid (the README's example; 80/10/10 like ``chrono``).
DEFAULT_QUANTILE = 0.9


def check_time_options(train_start: str | None = None, train_end: str | None = None, test_start: str | None = None,
                       test_end: str | None = None, quantile: float | None = None, seed: int = 0,
                       valid_share: float | None = None) -> float | None:
    """The options of ``time`` checked without reading data (one sentence per mistake); returns the quantile
    to cut at (``DEFAULT_QUANTILE`` when neither dates nor a quantile are given), None for dates."""
    if valid_share is not None:
        check_share("valid_share", valid_share)
    dates = {"train_start": train_start, "train_end": train_end, "test_start": test_start, "test_end": test_end}
    given = [k for k, v in dates.items() if v is not None]
    if quantile is None and not given:
        quantile = DEFAULT_QUANTILE
    if quantile is not None:
        if given:
            raise RecsysError("give either --quantile or the four dates, not both")
        if not 0.0 < quantile < 1.0:
            raise RecsysError(f"--quantile must be strictly between 0 and 1, got {quantile}")
        if valid_share is None and quantile <= 0.5:
            raise RecsysError(f"--quantile {quantile} leaves too little train for a valid period before the test "
                              f"period with its share of ratings (needs a quantile above 0.5); give --valid-share "
                              f"(0 for no valid set)")
        return quantile
    missing = [f"--{k.replace('_', '-')}" for k, v in dates.items() if v is None]
    if missing:
        raise RecsysError(f"protocol time needs --quantile or all four dates; missing {', '.join(missing)}")
    try:
        parsed = {k: dt.date.fromisoformat(v) for k, v in dates.items() if v is not None}  # none missing
    except (TypeError, ValueError) as err:
        raise RecsysError(f"dates must be YYYY-MM-DD ({err})") from None
    check_time_split(TimeSplit("time", **parsed), None, Path("."))
    return None


def split_time(ratings_dir: Path, out_dir: Path, train_start: str | None = None, train_end: str | None = None,
               test_start: str | None = None, test_end: str | None = None, quantile: float | None = None,
               seed: int = 0, valid_share: float | None = None) -> dict[str, dict]:
    """One time split named ``time``: by dates (inclusive UTC days) or at the ``quantile`` of time
    (``DEFAULT_QUANTILE``, 0.9, when neither is given).

    Valid is the period just before the test period, as long (dates) or holding as many ratings
    (quantile) as it; with ``valid_share`` it is that share of the test period instead (0: no valid).
    """
    quantile = check_time_options(train_start, train_end, test_start, test_end, quantile, seed, valid_share)
    path = ratings_path(ratings_dir)
    check_columns(path)
    dates = {"train_start": train_start, "train_end": train_end, "test_start": test_start, "test_end": test_end}
    rule = VALID_BEFORE_TEST if valid_share is None else VALID_SHARE_OF_TEST
    params = {"seed": seed, "valid": rule, **({} if valid_share is None else {"valid_share": valid_share})}
    if quantile is not None:
        return _split_time_quantile(ratings_dir, out_dir, path, quantile, seed, valid_share, params)
    # no quantile: check_time_options saw all four dates
    spec = TimeSplit("time", **{k: dt.date.fromisoformat(v) for k, v in dates.items() if v is not None})
    check_time_split(spec, time_range(path), path)
    if valid_share is not None:
        return stream_split(ratings_dir, out_dir, "time",
                            lambda per_second: [_time_route(spec, seed, valid_share, params, per_second)])
    days = (spec.test_end - spec.test_start).days + 1
    valid_start = spec.train_end - dt.timedelta(days=days - 1)
    if valid_start <= spec.train_start:
        raise RecsysError(f"split time: train range {spec.train_start}..{spec.train_end} is too short to give its "
                          f"last {days} days (the test period's length) to valid and keep a train day; start train "
                          f"earlier, or give --valid-share (0 for no valid set)")
    train_last = valid_start - dt.timedelta(days=1)
    params = {"train_start": spec.train_start.isoformat(), "train_end": train_last.isoformat(),
              "valid_start": valid_start.isoformat(), "valid_end": spec.train_end.isoformat(),
              "test_start": spec.test_start.isoformat(), "test_end": spec.test_end.isoformat(), **params}

    def routes(per_second: int) -> list[Route]:
        train_lo, _ = _bounds(spec.train_start, train_last, per_second)
        valid_lo, valid_hi = _bounds(valid_start, spec.train_end, per_second)
        test_lo, test_hi = _bounds(spec.test_start, spec.test_end, per_second)
        return [Route(
            name="time",
            train_mask=lambda t, u, i: (t >= train_lo) & (t < valid_lo),
            heldout_mask=lambda t, u, i: ((t >= valid_lo) & (t < valid_hi)) | ((t >= test_lo) & (t < test_hi)),
            finish=heldout_finish(_before(valid_hi), require_item=True, require_user=True),
            params=params,
        )]

    return stream_split(ratings_dir, out_dir, "time", routes)


def _split_time_quantile(ratings_dir: Path, out_dir: Path, path: Path, quantile: float, seed: int,
                         valid_share: float | None, params: dict) -> dict[str, dict]:
    """Train before the ``quantile`` cut, test from it; valid before it (``2q - 1`` quantile) or a share of test."""
    def instant(value: int, per_second: int) -> str:
        return dt.datetime.fromtimestamp(value / per_second, dt.timezone.utc).isoformat()

    if valid_share is not None:
        (cut,), cut_per_second = timestamp_quantiles(path, [quantile])
        valid_cut = None
        params = {"quantile": quantile, **params, "cut": instant(cut, cut_per_second)}
    else:
        (valid_cut, cut), cut_per_second = timestamp_quantiles(path, [2 * quantile - 1, quantile])
        params = {"quantile": quantile, **params, "valid_cut": instant(valid_cut, cut_per_second),
                  "cut": instant(cut, cut_per_second)}

    def routes(per_second: int) -> list[Route]:
        at = cut * per_second // cut_per_second  # the same instant in the unit the stream reads
        if valid_cut is None:
            assert valid_share is not None  # no valid cut: valid is a share of the test period
            train_mask = lambda t, u, i: t < at  # noqa: E731
            to_valid = _hashed_valid(seed, valid_share)
        else:
            valid_at = valid_cut * per_second // cut_per_second
            train_mask = lambda t, u, i: t < valid_at  # noqa: E731
            to_valid = _before(at)
        return [Route(name="time", train_mask=train_mask, heldout_mask=lambda t, u, i: ~train_mask(t, u, i),
                      finish=heldout_finish(to_valid, require_item=True, require_user=True), params=params)]

    return stream_split(ratings_dir, out_dir, "time", routes)

