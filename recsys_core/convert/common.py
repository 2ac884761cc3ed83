"""Pieces shared by the Netflix and MovieLens converters: the streaming ratings writer with its
running statistics, the catalogue writer, meta.json, and checks of text files."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.errors import InputError, RecsysError
from recsys_core.idset import IdSet
from recsys_core.io import write_json
from recsys_core.schema import ITEMS_SCHEMA, RATINGS_SCHEMA

log = logging.getLogger("recsys_core")

SCHEMA_VERSION = 1
COMPRESSIONS = ("zstd", "snappy", "lz4", "none")
# zstd level 1: 15% smaller than the others, ~1-2 s more on the full Netflix set (BENCHMARKS.md);
# snappy/lz4 gain nothing over "none" once the dictionary encoding has done its work.
DEFAULT_COMPRESSION = "zstd"

# Rows per Parquet row group at most (a Netflix batch of 128 MB is ~6.5M rows, one group).
_ROW_GROUP_ROWS = 1 << 23

# The period a rating's date must lie in (UTC). The Netflix Prize's dates are 1999-2005, MovieLens' 1995-2023;
# a date before the Unix epoch or after 2099 is a corrupted field (0001-01-01, 9999-12-31, a timestamp in
# milliseconds), refused with its line rather than stored, where it would stretch every time split.
FIRST_DAY = dt.date(1970, 1, 1)
LAST_DAY = dt.date(2099, 12, 31)
PERIOD = f"{FIRST_DAY.isoformat()}..{LAST_DAY.isoformat()}"
FIRST_SECOND = 0
END_SECOND = int(dt.datetime(LAST_DAY.year + 1, 1, 1, tzinfo=dt.timezone.utc).timestamp())  # exclusive
END_DAY = END_SECOND // 86400  # days since the epoch, exclusive
UTF8_BOM = b"\xef\xbb\xbf"

_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")
# Bytes that never occur in a text file: C0 controls except tab, line feed and carriage return.
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class RatingScale:
    minimum: float
    maximum: float
    step: float

    def describe(self) -> str:
        if self.step == 1:
            return f"{self.minimum:g}..{self.maximum:g} (whole stars)"
        return f"{self.minimum:g}..{self.maximum:g} in steps of {self.step:g}"


WHOLE_STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)


@dataclass
class Timings:
    """Seconds spent per phase, summed over threads (so they can exceed the wall time)."""

    read: float = 0.0
    parse: float = 0.0
    validate: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            setattr(self, phase, getattr(self, phase) + seconds)

    def as_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 3) for k in ("read", "parse", "validate", "write", "wall")}


class RatingsSink:
    """Streams ratings tables (RATINGS_SCHEMA) into one Parquet file, one row group per table,
    and keeps what meta.json needs: counts, distinct users and items, date range."""

    def __init__(self, path: Path, compression: str = DEFAULT_COMPRESSION, label: str | Path | None = None):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
        self.path = path
        self.label = label or path  # how messages name the file (its final name, not the temporary's)
        with writing(self.label):
            self._writer = pq.ParquetWriter(path, RATINGS_SCHEMA, compression=compression, use_dictionary=True,
                                            compression_level=1 if compression == "zstd" else None)
        self.ratings = 0
        self.users = IdSet()
        self.items = IdSet()
        self.first_second: int | None = None
        self.last_second: int | None = None

    def write(self, table: pa.Table, timings: Timings | None = None) -> None:
        start = time.perf_counter()
        if table.num_rows:
            with writing(self.label):
                self._writer.write_table(table, row_group_size=_ROW_GROUP_ROWS)
            self.ratings += table.num_rows
            self.users.add(table.column("user_id").to_numpy())
            self.items.add(table.column("item_id").to_numpy())
            seconds = table.column("timestamp").cast(pa.int64()).to_numpy()
            low, high = int(seconds.min()), int(seconds.max())
            self.first_second = low if self.first_second is None else min(self.first_second, low)
            self.last_second = high if self.last_second is None else max(self.last_second, high)
        if timings is not None:
            timings.add("write", time.perf_counter() - start)

    def close(self) -> None:
        with writing(self.label):
            self._writer.close()


def describe_os_error(err: OSError) -> str:
    """The reason of an OSError in words (pyarrow's own errors carry the errno only in their text)."""
    if err.errno:
        return os.strerror(err.errno)
    return str(err).split(". Detail:")[-1].strip() or type(err).__name__


@contextlib.contextmanager
def writing(dest: str | Path):
    """Turn an OSError raised while writing ``dest`` (full disk, quota, read-only or vanished folder)
    into one sentence naming ``dest``, the OUTPUT, not whatever input was being read at the time."""
    try:
        yield
    except OSError as err:
        raise RecsysError(f"could not write {dest}: {describe_os_error(err)}; the previous output, if any, "
                          "is unchanged") from None


def ratings_table(user_ids: np.ndarray, item_ids: np.ndarray, ratings: np.ndarray, seconds: np.ndarray) -> pa.Table:
    """Build a RATINGS_SCHEMA table from numpy columns (seconds since the epoch, UTC)."""
    return pa.Table.from_arrays(
        [
            pa.array(user_ids.astype(np.int32, copy=False)),
            pa.array(item_ids.astype(np.int32, copy=False)),
            pa.array(ratings.astype(np.float32, copy=False)),
            pa.array(seconds.astype(np.int64, copy=False)).view(pa.timestamp("s", tz="UTC")),
        ],
        schema=RATINGS_SCHEMA,
    )


def write_catalogue(path: Path, item_ids: list[int], titles: list[str | None], years: list[int | None],
                    genres: list[list[str] | None], rated_ids: np.ndarray, titles_label: str,
                    label: str | Path | None = None) -> int:
    """Write ITEMS_SCHEMA sorted by id; rated items the catalogue lacks are added without a title
    (with a warning) so that every rated item has a row. Returns the number of rows."""
    missing = sorted(set(rated_ids.tolist()) - set(item_ids))
    if missing:
        log.warning("%d rated items have no line in %s (first: %d); catalogued without a title",
                    len(missing), titles_label, missing[0])
        item_ids = item_ids + missing
        pad = [None] * len(missing)
        titles, years, genres = titles + pad, years + pad, genres + pad
    order = np.argsort(np.array(item_ids, dtype=np.int64), kind="stable").tolist()
    table = pa.Table.from_arrays(
        [
            pa.array([item_ids[i] for i in order], type=pa.int32()),
            pa.array([titles[i] for i in order], type=pa.string()),
            pa.array([years[i] for i in order], type=pa.int16()),
            pa.array([genres[i] for i in order], type=pa.list_(pa.string())),
        ],
        schema=ITEMS_SCHEMA,
    )
    with writing(label or path):
        pq.write_table(table, path, compression="zstd")
    return table.num_rows


def _date_of(second: int | None) -> str | None:
    if second is None:
        return None
    return dt.datetime.fromtimestamp(second, tz=dt.timezone.utc).date().isoformat()


def write_meta(out_dir: Path, source: str, sink: RatingsSink, catalog_items: int, scale: RatingScale,
               label: str | Path | None = None) -> dict:
    meta = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "ratings": sink.ratings,
        "users": len(sink.users),
        "items": len(sink.items),
        "catalog_items": catalog_items,
        "first_date": _date_of(sink.first_second),
        "last_date": _date_of(sink.last_second),
        "rating_min": scale.minimum,
        "rating_max": scale.maximum,
        "rating_step": scale.step,
    }
    with writing(label or out_dir / "meta.json"):
        write_json(out_dir / "meta.json", meta)
    return meta


def year_from_title(title: str) -> int | None:
    """The year of a MovieLens-style title ``"Heat (1995)"`` (a range ``(2006-2007)`` gives its start)."""
    match = _YEAR_IN_TITLE.search(title)
    return int(match.group(1)) if match else None


def line_of_offset(data: bytes, offset: int) -> int:
    """1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def ascii_int(text: str) -> int | None:
    """The value of a field of ASCII digits (surrounding spaces allowed), else None. (``str.isdigit``
    also accepts '²' and other digits that ``int`` refuses: the byte 0xB2 of an ISO-8859-1 file.)"""
    text = text.strip()
    return int(text) if _ASCII_DIGITS.fullmatch(text) else None


def check_text_bytes(data: bytes, label: str, encoding: str) -> str:
    """Decode a text file, refusing control bytes and (for UTF-8) invalid sequences, with the line.
    A UTF-8 byte-order mark at the start is dropped."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    control = _CONTROL_BYTES.search(data)
    if control:
        raise InputError(label, f"holds the control byte 0x{control.group()[0]:02x}, so it is not {encoding} text",
                         line_of_offset(data, control.start()))
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise InputError(label, f"is not valid {encoding} text (byte 0x{data[err.start]:02x} cannot be decoded)",
                         line_of_offset(data, err.start)) from None


def decode_latin1_or_utf8(data: bytes, label: str) -> str:
    """Decode a file that should be ISO-8859-1 (the Netflix and MovieLens 100K/1M catalogues). A file an
    editor saved as UTF-8 (it starts with a byte-order mark, or it is valid UTF-8 holding multi-byte
    sequences, which ISO-8859-1 text practically never is: 'AmÃ©lie') is decoded as UTF-8, with a warning,
    instead of turning every accented letter into two."""
    bom = data.startswith(UTF8_BOM)
    if bom or not data.isascii():
        try:
            text = check_text_bytes(data, label, "UTF-8")
        except InputError:
            if bom:
                raise
        else:
            if not text.isascii():
                log.warning("%s is UTF-8, not ISO-8859-1 as the format says: decoded as UTF-8", label)
            return text
    return check_text_bytes(data, label, "ISO-8859-1")


def text_lines(text: str) -> list[str]:
    """Lines of a text file without their endings; blank lines at the end of the file are dropped (a final
    line ending adds no empty line, and editors leave blank lines at the end)."""
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def strip_trailing_blank_lines(text: str) -> str:
    """``text`` without the blank (whitespace-only) lines that end it."""
    content = len(text.rstrip())
    if content == len(text):
        return text
    newline = text.find("\n", content)
    return text if newline < 0 else text[:newline + 1]


def trailing_blank_start(data, end: int | None = None, start: int = 0) -> int:
    """Offset in ``data[start:end]`` where its trailing blank lines (whitespace only) begin: just after the
    line end of its last line holding anything else (``start`` if there is none). A last line without
    a line end keeps its trailing spaces."""
    end = len(data) if end is None else end
    last = end
    while last > start and data[last - 1] in b" \t\r\n\f\v":
        last -= 1
    if last == start:
        return start
    newline = data.find(b"\n", last, end)
    return end if newline < 0 else newline + 1
