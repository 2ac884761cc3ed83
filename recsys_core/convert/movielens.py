"""MovieLens -> Parquet: 100K (``u.data`` + ``u.item``), 1M (``ratings.dat`` + ``movies.dat``) and
the csv releases 20M/25M/32M/latest (``ratings.csv`` + ``movies.csv``).

The ratings file is parsed in one go by polars with an explicit schema and checked with vectorised
operations; only when a check fails is the file rescanned line by line to name the first bad line.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from recsys_core.convert.common import (
    END_SECOND,
    FIRST_SECOND,
    HALF_STARS,
    PERIOD,
    UTF8_BOM,
    WHOLE_STARS,
    RatingScale,
    RatingsSink,
    Timings,
    ascii_int,
    check_text_bytes,
    decode_latin1_or_utf8,
    ratings_table,
    strip_trailing_blank_lines,
    text_lines,
    trailing_blank_start,
    write_catalogue,
    year_from_title,
)
from recsys_core.errors import InputError

# The 19 genres of ML-100K's u.item flags, in column order (as listed in u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
CSV_RATINGS_HEADER = "userId,movieId,rating,timestamp"
CSV_MOVIES_HEADER = ["movieId", "title", "genres"]
NO_GENRES = "(no genres listed)"
_INT32_MAX = 2**31 - 1
_RELEASE_DATE = re.compile(r"\d{1,2}-[A-Za-z]{3}-(\d{4})")


@dataclass(frozen=True)
class MovieLensFormat:
    source: str  # meta.json "source"
    ratings_name: str
    items_name: str
    scale: RatingScale
    header_lines: int  # lines before the first rating
    split_line: Callable[[str], list[str]]  # a ratings line -> its 4 fields
    read_items: Callable[[bytes, str], tuple[list, list, list, list]]


def _read_ml100k_items(data: bytes, label: str):
    text = decode_latin1_or_utf8(data, label)
    ids, titles, years, genres = [], [], [], []
    for number, line in enumerate(text_lines(text), start=1):
        fields = line.split("|")
        if len(fields) < 5 + len(ML100K_GENRES):
            raise InputError(label, f"expected 24 '|'-separated fields (id, title, release date, video release "
                                    f"date, IMDb URL, 19 genre flags) but found {len(fields)}", number)
        flags = fields[5:5 + len(ML100K_GENRES)]
        if any(flag not in ("0", "1") for flag in flags):
            raise InputError(label, "the 19 genre flags must each be 0 or 1", number)
        title = fields[1]
        release = _RELEASE_DATE.fullmatch(fields[2].strip())
        ids.append(_item_id(fields[0], label, number))
        titles.append(title)
        years.append(int(release.group(1)) if release else year_from_title(title))
        genres.append([name for name, flag in zip(ML100K_GENRES, flags) if flag == "1"])
    return ids, titles, years, genres


def _read_ml1m_items(data: bytes, label: str):
    text = decode_latin1_or_utf8(data, label)
    ids, titles, years, genres = [], [], [], []
    for number, line in enumerate(text_lines(text), start=1):
        fields = line.split("::")
        if len(fields) < 3:
            raise InputError(label, f"expected 'MovieID::Title::Genres' (3 fields) but found {len(fields)}", number)
        title = "::".join(fields[1:-1])
        ids.append(_item_id(fields[0], label, number))
        titles.append(title)
        years.append(year_from_title(title))
        genres.append(_genre_list(fields[-1]))
    return ids, titles, years, genres


def _read_csv_items(data: bytes, label: str):
    text = strip_trailing_blank_lines(check_text_bytes(data, label, "UTF-8"))
    reader = csv.reader(io.StringIO(text, newline=""))
    ids, titles, years, genres = [], [], [], []
    header = next(reader, None)
    if header != CSV_MOVIES_HEADER:
        raise InputError(label, f"the header must be {','.join(CSV_MOVIES_HEADER)!r}, found {header!r}", 1)
    try:
        for fields in reader:
            number = reader.line_num
            if len(fields) != 3:
                raise InputError(label, f"expected 3 fields (movieId,title,genres) but found {len(fields)}", number)
            ids.append(_item_id(fields[0], label, number))
            titles.append(fields[1])
            years.append(year_from_title(fields[1]))
            genres.append(_genre_list(fields[2]))
    except csv.Error as err:
        raise InputError(label, f"is not valid CSV ({err})", reader.line_num) from None
    return ids, titles, years, genres


def _genre_list(field: str) -> list[str]:
    field = field.strip()
    if field in ("", NO_GENRES):
        return []
    return field.split("|")


def _item_id(field: str, label: str, number: int) -> int:
    value = ascii_int(field)
    if value is None or not 0 < value <= _INT32_MAX:
        raise InputError(label, f"the movie id {field.strip()!r} is not a positive 32-bit integer", number)
    return value


FORMATS = {
    "u.data": MovieLensFormat("movielens-100k", "u.data", "u.item", WHOLE_STARS, 0,
                              lambda line: line.split("\t"), _read_ml100k_items),
    "ratings.dat": MovieLensFormat("movielens-1m", "ratings.dat", "movies.dat", WHOLE_STARS, 0,
                                   lambda line: line.split("::"), _read_ml1m_items),
    "ratings.csv": MovieLensFormat("movielens-csv", "ratings.csv", "movies.csv", HALF_STARS, 1,
                                   lambda line: line.split(","), _read_csv_items),
}


def find_format(folder: Path) -> MovieLensFormat | None:
    if not folder.is_dir():
        return None
    for name, fmt in FORMATS.items():
        if (folder / name).is_file():
            return fmt
    return None


# ----------------------------------------------------------------------------------------------
# Ratings


def _read_frame(path: Path, fmt: MovieLensFormat) -> pl.DataFrame:
    """Parse the whole ratings file into columns user, item, rating, timestamp (raises on a bad line)."""
    if fmt.source == "movielens-100k":
        schema = {"user": pl.Int32, "item": pl.Int32, "rating": pl.Int8, "timestamp": pl.Int64}
        return _read_csv(path, "\t", schema)
    if fmt.source == "movielens-1m":
        # '::' separated: read with ':' as separator, the empty fields between must stay empty.
        schema = {"user": pl.Int32, "gap1": pl.String, "item": pl.Int32, "gap2": pl.String, "rating": pl.Int8,
                  "gap3": pl.String, "timestamp": pl.Int64}
        frame = _read_csv(path, ":", schema)
        if frame.select(pl.any_horizontal(pl.col("gap1", "gap2", "gap3").is_not_null()).any()).item():
            raise ValueError("a field separator is not '::'")
        return frame.drop("gap1", "gap2", "gap3")
    schema = {"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64, "timestamp": pl.Int64}
    return _read_csv(path, ",", schema, skip_rows=1)


def _read_csv(path: Path, separator: str, schema: dict, skip_rows: int = 0) -> pl.DataFrame:
    return pl.read_csv(path, separator=separator, schema=schema, skip_rows=skip_rows, has_header=False,
                       quote_char=None, raise_if_empty=False)


def _line_problem(line: str, fmt: MovieLensFormat) -> str | None:
    fields = fmt.split_line(line.rstrip("\r"))
    expected = {"movielens-100k": "'user<TAB>item<TAB>rating<TAB>timestamp'",
                "movielens-1m": "'UserID::MovieID::Rating::Timestamp'",
                "movielens-csv": "'userId,movieId,rating,timestamp'"}[fmt.source]
    if len(fields) != 4:
        return f"cannot parse {line[:60]!r}: expected {expected}"
    try:
        user, item, timestamp = int(fields[0]), int(fields[1]), int(fields[3])
        rating = float(fields[2]) if fmt.scale.step != 1 else int(fields[2])
    except ValueError:
        return f"cannot parse {line[:60]!r}: expected {expected}"
    for what, value in (("user id", user), ("movie id", item)):
        if not 0 < value <= _INT32_MAX:
            return f"the {what} {value} is not a positive 32-bit integer"
    if not math.isfinite(rating):
        return f"rating {fields[2].strip()!r} is not a number on the {fmt.source} scale {fmt.scale.describe()}"
    steps = (rating - fmt.scale.minimum) / fmt.scale.step
    if not (fmt.scale.minimum <= rating <= fmt.scale.maximum and steps == int(steps)):
        return f"rating {fields[2]} is outside the {fmt.source} scale {fmt.scale.describe()}"
    if not FIRST_SECOND <= timestamp < END_SECOND:
        hint = " (milliseconds? the format counts seconds)" if FIRST_SECOND <= timestamp // 1000 < END_SECOND else ""
        return (f"timestamp {timestamp} ({_describe_second(timestamp)}) lies outside the accepted period "
                f"{PERIOD}{hint}")
    return None


def _describe_second(second: int) -> str:
    try:
        return dt.datetime.fromtimestamp(second, tz=dt.timezone.utc).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return f"about the year {1970 + round(second / 31_556_952):,}"


def _locate_problem(path: Path, fmt: MovieLensFormat, fast_path_says: str) -> InputError:
    """Rescan the ratings file line by line for the first bad line (blank lines at its end are fine)."""
    first_blank = None  # a blank line is a problem only when a line with something on it follows
    with open(path, encoding="utf-8-sig", errors="replace", newline="\n") as handle:
        lines = itertools.islice(handle, fmt.header_lines, None)
        for number, line in enumerate(lines, start=fmt.header_lines + 1):
            line = line.rstrip("\n")
            if not line.strip():
                first_blank = first_blank or number
                continue
            if first_blank is not None:
                return InputError(path, "is a blank line; a rating follows it", first_blank)
            problem = _line_problem(line, fmt)
            if problem is not None:
                return InputError(path, problem, number)
    return InputError(path, f"could not be parsed ({fast_path_says.splitlines()[0]})")


def _trailing_blank_lines(path: Path) -> int:
    """How many blank (whitespace-only) lines end the file."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - (1 << 16)))
        tail = handle.read()
    blank = tail[trailing_blank_start(tail):]
    return blank.count(b"\n") + (1 if blank and not blank.endswith(b"\n") else 0)


def _drop_trailing_blank_rows(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """polars reads a blank line as a row of nulls: drop those that are the blank lines ending the file
    (any other row of nulls stays, and is refused with its line)."""
    if frame.height == 0 or frame.row(-1) != (None,) * frame.width:
        return frame
    empty = frame.select(pl.all_horizontal(pl.all().is_null()))[:, 0]
    full = (~empty).arg_true()
    trailing = frame.height - (int(full[-1]) + 1 if len(full) else 0)
    return frame.head(frame.height - trailing) if trailing <= _trailing_blank_lines(path) else frame


def _check_frame(frame: pl.DataFrame, fmt: MovieLensFormat) -> str | None:
    """Vectorised checks; a short description of the first kind of problem found, or None."""
    if frame.height == 0:
        return None
    if frame.null_count().sum_horizontal().item():
        return "empty fields"
    ratings = frame["rating"].cast(pl.Float64)
    if not ratings.is_finite().all():  # 'nan', 'NaN', 'inf' parse as floats
        return "rating not a number"
    steps = (ratings - fmt.scale.minimum) / fmt.scale.step
    if (ratings < fmt.scale.minimum).any() or (ratings > fmt.scale.maximum).any() or (steps != steps.round()).any():
        return "rating outside the scale"
    if (frame["user"] <= 0).any() or (frame["item"] <= 0).any():
        return "id out of range"
    if (frame["timestamp"] < FIRST_SECOND).any() or (frame["timestamp"] >= END_SECOND).any():
        return "timestamp outside the accepted period"
    return None


def _duplicate_error(frame: pl.DataFrame, path: Path, fmt: MovieLensFormat) -> InputError | None:
    keys = (frame["user"].cast(pl.Int64) * (1 << 32) + frame["item"].cast(pl.Int64)).alias("key")
    repeated = ~keys.is_first_distinct()
    if not repeated.any():
        return None
    second = int(repeated.arg_max() or 0)  # a True exists: arg_max is its index, never None
    first = int((keys == keys[second]).arg_max() or 0)
    user, item = int(frame["user"][second]), int(frame["item"][second])
    return InputError(path, f"user {user} rated movie {item} already on line {first + fmt.header_lines + 1} "
                            "(duplicate rating)", second + fmt.header_lines + 1)


def _check_csv_header(path: Path) -> None:
    with open(path, "rb") as handle:
        first = handle.readline().rstrip(b"\r\n")
    if first.startswith(UTF8_BOM):
        first = first[len(UTF8_BOM):]
    first = first.decode("utf-8", errors="replace")
    if first != CSV_RATINGS_HEADER:
        raise InputError(path, f"the header must be {CSV_RATINGS_HEADER!r}, found {first[:60]!r}", 1)


def convert_movielens(folder: Path, fmt: MovieLensFormat, out_dir: Path, sink: RatingsSink,
                      timings: Timings, label_dir: Path | None = None) -> int:
    """Write the ratings through ``sink`` and ``out_dir/items.parquet``; return the catalogue size."""
    items_path = folder / fmt.items_name
    if not items_path.is_file():
        raise InputError(items_path, f"is missing: {fmt.source} needs it beside {fmt.ratings_name}")
    items = fmt.read_items(items_path.read_bytes(), str(items_path))
    path = folder / fmt.ratings_name
    if fmt.header_lines:
        _check_csv_header(path)
    start = time.perf_counter()
    try:
        frame = _drop_trailing_blank_rows(_read_frame(path, fmt), path)
    except Exception as err:  # polars raises several types; any of them means a bad line
        raise _locate_problem(path, fmt, str(err)) from None
    parsed = time.perf_counter()
    timings.add("parse", parsed - start)
    problem = _check_frame(frame, fmt)
    if problem is not None:
        raise _locate_problem(path, fmt, problem)
    duplicate = _duplicate_error(frame, path, fmt)
    if duplicate is not None:
        raise duplicate
    table = ratings_table(frame["user"].to_numpy(), frame["item"].to_numpy(), frame["rating"].to_numpy(),
                          frame["timestamp"].to_numpy())
    timings.add("validate", time.perf_counter() - parsed)
    sink.write(table, timings)
    ids, titles, years, genres = items
    return write_catalogue(out_dir / "items.parquet", ids, titles, years, genres, sink.items.ids,
                           fmt.items_name, label=(label_dir or out_dir) / "items.parquet")


__all__ = ["FORMATS", "ML100K_GENRES", "MovieLensFormat", "convert_movielens", "find_format"]
