"""Stage 2: split a stage-1 ratings folder into train / valid / test parts.

Protocols (``split(ratings_dir, out_dir, protocol, **options)``):

* ``netflix-time``: the four time splits of arXiv 1708.01715 (N3M, N6M, N1Y, NF), all dates inclusive.
  Ratings of the test period are kept only for users with a train rating in that split, each kept rating
  goes to valid or to test with probability 1/2 (a hash of (seed, user_id, item_id), so the assignment is
  the same whatever the row order or the set of splits computed), then valid/test ratings of items absent
  from that split's train are dropped.
* ``time``: the same rule for one split given by dates or by a quantile of time.
* ``leave-one-out``: per user the latest interaction is test (and the one before valid with ``valid=True``),
  plus sampled negatives (NCF protocol).
* ``random``: each rating held out with a seeded probability.

Time-based and random splits stream over the input once (one pass for all four Netflix splits): each
input batch is routed to the train files being written while the (small) held-out candidates are kept in
memory; which users/items a train part holds is tracked in bitmaps indexed by raw id. Every split
folder is written through ``atomic_dir``, so an error leaves no partial output and older output intact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsys_core.errors import InputError, RecsysError
from recsys_core.io import atomic_dir, write_json
from recsys_core.progress import progress_bar
from recsys_core.schema import RATINGS_SCHEMA

log = logging.getLogger("recsys_core")

PROTOCOLS = ("netflix-time", "time", "leave-one-out", "random")
RATING_COLUMNS = tuple(RATINGS_SCHEMA.names)
SECONDS_PER_DAY = 86400
# Output Parquet: lz4 is cheap to write; dictionary encoding pays for the few distinct items, ratings
# and days but not for the ~500K user ids (it costs a third of the write time there for nothing).
PARQUET_COMPRESSION = "lz4"
PARQUET_DICTIONARY = ["item_id", "rating", "timestamp"]
READ_BATCH_ROWS = 1 << 22
# Bitmaps indexed by raw id are used up to this id; larger ids go through sorted unique arrays.
MAX_BITMAP_ID = 1 << 28

# Salts that make the hash streams of different decisions independent of each other.
SALT_VALID_TEST = 1
SALT_RANDOM_HOLDOUT = 2


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


# --------------------------------------------------------------------------------------------- hashing

_MASK64 = (1 << 64) - 1


def _mix64_scalar(x: int) -> int:
    """splitmix64 finaliser on a Python int (the reference the vectorised version must match)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hash_unit(seed: int, salt: int, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per (user_id, item_id), a fixed function of (seed, salt, ids).

    It does not depend on row order, on other rows or on which splits are computed, so a rating gets
    the same valid/test decision in every run and every split with the same seed.
    """
    key = (user_ids.astype(np.uint32).astype(np.uint64) << np.uint64(32)) | item_ids.astype(np.uint32).astype(np.uint64)
    key ^= np.uint64(_mix64_scalar(seed * 0x9E3779B97F4A7C15 + salt))
    return (_mix64(key) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def hash_unit_scalar(seed: int, salt: int, user_id: int, item_id: int) -> float:
    """The same as ``hash_unit`` for one rating, in plain Python (used by the reference tests)."""
    key = ((user_id & 0xFFFFFFFF) << 32) | (item_id & 0xFFFFFFFF)
    key ^= _mix64_scalar(seed * 0x9E3779B97F4A7C15 + salt)
    return (_mix64_scalar(key) >> 11) / (1 << 53)


# --------------------------------------------------------------------------------------------- id sets


class IdSet:
    """A growing set of int32 ids: a bitmap indexed by id (fast), or sorted uniques once an id is huge or negative."""

    def __init__(self) -> None:
        self._bits = np.zeros(0, dtype=bool)
        self._sorted: np.ndarray | None = None  # used once an id exceeds MAX_BITMAP_ID

    def add(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        top = int(ids.max())
        if self._sorted is None and top <= MAX_BITMAP_ID and int(ids.min()) >= 0:
            if top >= len(self._bits):
                grown = np.zeros(max(top + 1, 2 * len(self._bits)), dtype=bool)
                grown[: len(self._bits)] = self._bits
                self._bits = grown
            self._bits[ids] = True
            return
        if self._sorted is None:
            self._sorted = np.flatnonzero(self._bits).astype(np.int64)
            self._bits = np.zeros(0, dtype=bool)
        self._sorted = np.union1d(self._sorted, ids.astype(np.int64))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if self._sorted is not None:
            return np.isin(ids, self._sorted)
        inside = (ids >= 0) & (ids < len(self._bits))
        result = np.zeros(len(ids), dtype=bool)
        result[inside] = self._bits[ids[inside]]
        return result

    def __len__(self) -> int:
        return len(self._sorted) if self._sorted is not None else int(np.count_nonzero(self._bits))


# --------------------------------------------------------------------------------------------- input


def _ratings_path(ratings_dir: Path) -> Path:
    path = Path(ratings_dir) / "ratings.parquet"
    if not path.is_file():
        raise InputError(path, "not found; give a stage-1 folder holding ratings.parquet (python -m recsys_core convert)")
    return path


def _check_columns(path: Path) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, f"not a readable Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    missing = [c for c in RATING_COLUMNS if c not in names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a ratings file needs {', '.join(RATING_COLUMNS)}")
    kind = parquet.schema_arrow.field("timestamp").type
    if not pa.types.is_timestamp(kind):
        raise InputError(path, f"column timestamp has type {kind}, expected a timestamp")
    return parquet


_TICKS_PER_SECOND = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}


def working_schema(parquet: pq.ParquetFile) -> pa.Schema:
    """RATINGS_SCHEMA with the timestamp unit found in the file.

    Parquet has no seconds unit (timestamp[s] is stored as ms), so keeping the file's unit saves a
    division per row on reading and a multiplication on writing; the values are the same instants.
    """
    unit = parquet.schema_arrow.field("timestamp").type.unit
    return RATINGS_SCHEMA.set(3, pa.field("timestamp", pa.timestamp(unit, tz="UTC"), nullable=False))


def ticks_per_second(schema: pa.Schema) -> int:
    return _TICKS_PER_SECOND[schema.field("timestamp").type.unit]


def _to_schema(batch: pa.RecordBatch, path: Path, schema: pa.Schema) -> pa.RecordBatch:
    for name in RATING_COLUMNS:
        if batch.column(name).null_count:
            raise InputError(path, f"column {name} holds null values")
    if batch.schema.equals(schema, check_metadata=False):
        return batch
    try:
        return batch.select(list(RATING_COLUMNS)).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise InputError(path, f"columns do not convert to the ratings schema ({err})") from None


def _iter_batches(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    parquet = _check_columns(path)
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=list(RATING_COLUMNS), use_threads=True):
        yield _to_schema(batch, path, schema)


def _read_all(path: Path) -> pa.Table:
    parquet = _check_columns(path)
    schema = working_schema(parquet)
    table = parquet.read(columns=list(RATING_COLUMNS), use_threads=True)
    return pa.Table.from_batches([_to_schema(b, path, schema) for b in table.to_batches()], schema=schema)


def _ticks(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The int64 values of a timestamp column (zero copy where possible)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return np.asarray(column.to_numpy(zero_copy_only=False)).view(np.int64)


def _time_range(parquet_path: Path) -> tuple[int, int] | None:
    """(min, max) epoch seconds from the Parquet statistics, or None where they are missing."""
    meta = pq.ParquetFile(parquet_path).metadata
    index = pq.ParquetFile(parquet_path).schema_arrow.get_field_index("timestamp")
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        column = meta.row_group(g).column(index)
        if meta.row_group(g).num_rows == 0:
            continue
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    if not lows:
        return None
    as_seconds = lambda v: int(v.timestamp()) if isinstance(v, dt.datetime) else int(v)  # noqa: E731
    return min(map(as_seconds, lows)), max(map(as_seconds, highs))


def day_seconds(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * SECONDS_PER_DAY


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).date().isoformat()


def _iso_ticks(value: int, per_second: int) -> str:
    return _iso(int(value) // per_second)


# --------------------------------------------------------------------------------------------- stats


def part_stats(table: pa.Table) -> dict:
    """ratings, users, items, first_date, last_date of one part."""
    if table.num_rows == 0:
        return {"ratings": 0, "users": 0, "items": 0, "first_date": None, "last_date": None}
    low_high = pc.min_max(table.column("timestamp").cast(pa.int64()))
    per_second = ticks_per_second(table.schema)
    return {
        "ratings": table.num_rows,
        "users": len(pc.unique(table.column("user_id"))),
        "items": len(pc.unique(table.column("item_id"))),
        "first_date": _iso_ticks(low_high["min"].as_py(), per_second),
        "last_date": _iso_ticks(low_high["max"].as_py(), per_second),
    }


def stats_table(all_stats: dict[str, dict]) -> str:
    """Markdown table of the stats of several splits, one column per split (layout of the paper's README)."""
    names = list(all_stats)
    rows = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    parts = ["train", "valid", "test"]
    if any("valid+test" in s for s in all_stats.values()):
        parts.append("valid+test")

    def cell(stats: dict, part: str, key: str) -> str:
        p = stats.get(part)
        if p is None:
            return ""
        if key == "range":
            return f"{p['first_date']} to {p['last_date']}" if p["ratings"] else "-"
        return f"{p[key]:,}"

    for part in parts:
        for key, label in (("ratings", "Ratings"), ("users", "Users"), ("items", "Items"), ("range", "Time range")):
            rows.append(f"| {label} {part} | " + " | ".join(cell(all_stats[n], part, key) for n in names) + " |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------- writing


def _write_parquet(table: pa.Table, dest: Path) -> None:
    pq.write_table(table, dest, compression=PARQUET_COMPRESSION, use_dictionary=PARQUET_DICTIONARY)


class _TrainWriter:
    """Appends batches to one train.parquet on its own thread (the Parquet encoder releases the GIL)."""

    def __init__(self, dest: Path, schema: pa.Schema):
        self._writer = pq.ParquetWriter(dest, schema, compression=PARQUET_COMPRESSION,
                                        use_dictionary=PARQUET_DICTIONARY)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-writer")
        self._pending: Future | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        self.wait()
        self._pending = self._pool.submit(self._writer.write_batch, batch)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._writer.close()
            self._pool.shutdown()


def _finish_folder(folder: Path, items_src: Path, name: str, protocol: str, params: dict, stats: dict) -> None:
    shutil.copyfile(items_src, folder / "items.parquet")
    write_json(folder / "split.json", {"split": name, "protocol": protocol, **params})
    write_json(folder / "stats.json", stats)
    (folder / "stats.md").write_text(f"# Split {name} ({protocol})\n\n" + stats_table({name: stats}))


def _items_path(ratings_dir: Path) -> Path:
    path = Path(ratings_dir) / "items.parquet"
    if not path.is_file():
        raise InputError(path, "not found; a stage-1 folder holds items.parquet beside ratings.parquet")
    return path


# --------------------------------------------------------------------------------------------- streaming engine


@dataclass
class _Route:
    """How the streaming engine routes rows for one split.

    ``train_mask(ticks, users, items)`` picks the train rows of a batch and ``heldout_mask`` the
    candidates for valid/test (``ticks``: the timestamps as int64 in the file's unit); routes with the
    same ``heldout_key`` share one copy of their candidates. ``finish(heldout, train_users,
    train_items)`` turns the candidates into (valid, test, extra stats) once train is complete.
    """

    name: str
    train_mask: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    heldout_mask: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    finish: Callable[[pa.Table, IdSet, IdSet], tuple[pa.Table, pa.Table, dict]]
    params: dict
    heldout_key: object = None


def _take(table: pa.Table, mask: np.ndarray) -> pa.Table:
    return table.filter(pa.array(mask, type=pa.bool_()))


class _Phases:
    """Wall seconds per phase of a run, for the log and the benchmarks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._clock, 3)
        self._clock = now


# Phase breakdown of the latest _stream_split run in this process (read by bench/bench_split.py).
last_phases: dict[str, float] = {}


def _stream_split(ratings_dir: Path, out_dir: Path, protocol: str,
                  make_routes: Callable[[int], list[_Route]]) -> dict[str, dict]:
    """One pass over the ratings for all routes; writes one folder per route (all or nothing).

    ``make_routes(ticks_per_second)`` builds the routes for the timestamp unit of the file.
    """
    path = _ratings_path(ratings_dir)
    items_src = _items_path(ratings_dir)
    parquet = _check_columns(path)
    schema = working_schema(parquet)
    per_second = ticks_per_second(schema)
    routes = make_routes(per_second)
    total_rows = parquet.metadata.num_rows
    phases = _Phases()
    with contextlib.ExitStack() as stack:
        folders = {r.name: stack.enter_context(atomic_dir(Path(out_dir) / r.name)) for r in routes}
        writers = {r.name: _TrainWriter(folders[r.name] / "train.parquet", schema) for r in routes}
        for w in writers.values():
            stack.callback(w.close)
        users = {r.name: IdSet() for r in routes}
        items = {r.name: IdSet() for r in routes}
        train_rows = {r.name: 0 for r in routes}
        train_low: dict[str, int | None] = {r.name: None for r in routes}
        train_high: dict[str, int | None] = {r.name: None for r in routes}
        heldout_keys = {r.name: (r.heldout_key if r.heldout_key is not None else ("route", r.name)) for r in routes}
        heldout: dict[object, list[pa.RecordBatch]] = {key: [] for key in heldout_keys.values()}
        phases.lap("open")
        with progress_bar("split: reading ratings", total_rows, "ratings") as bar:
            batches = _iter_batches(path, schema)
            while True:
                batch = next(batches, None)
                phases.lap("read")
                if batch is None:
                    break
                ticks = _ticks(batch.column(3))
                user_ids = batch.column(0).to_numpy()
                item_ids = batch.column(1).to_numpy()
                held_done = set()
                for route in routes:
                    name = route.name
                    mask = route.train_mask(ticks, user_ids, item_ids)
                    kept = int(np.count_nonzero(mask))
                    if kept:
                        part = batch if kept == len(mask) else batch.filter(pa.array(mask))
                        writers[name].write(part)
                        users[name].add(part.column(0).to_numpy())
                        items[name].add(part.column(1).to_numpy())
                        train_rows[name] += kept
                        low_high = pc.min_max(part.column(3).cast(pa.int64()))
                        low, high = low_high["min"].as_py(), low_high["max"].as_py()
                        train_low[name] = low if train_low[name] is None else min(train_low[name], low)
                        train_high[name] = high if train_high[name] is None else max(train_high[name], high)
                    key = heldout_keys[name]
                    if key not in held_done:
                        held_done.add(key)
                        held = route.heldout_mask(ticks, user_ids, item_ids)
                        if held.any():
                            heldout[key].append(batch.filter(pa.array(held)))
                phases.lap("route")
                bar.advance(batch.num_rows)
        for w in writers.values():
            w.wait()
        phases.lap("write_wait")
        all_stats = {}
        for route in routes:
            name = route.name
            if train_rows[name] == 0:
                raise RecsysError(f"{path}: split {name} would have an empty train part; check its dates")
            held_table = pa.Table.from_batches(heldout[heldout_keys[name]], schema=schema)
            valid, test, extra = route.finish(held_table, users[name], items[name])
            if test.num_rows == 0:
                raise RecsysError(f"{path}: split {name} would have an empty test part; check its dates or fractions")
            _write_parquet(valid, folders[name] / "valid.parquet")
            _write_parquet(test, folders[name] / "test.parquet")
            stats = {
                "split": name,
                "protocol": protocol,
                "train": {"ratings": train_rows[name], "users": len(users[name]), "items": len(items[name]),
                          "first_date": _iso_ticks(train_low[name], per_second),
                          "last_date": _iso_ticks(train_high[name], per_second)},
                "valid": part_stats(valid),
                "test": part_stats(test),
                **extra,
            }
            all_stats[name] = stats
            _finish_folder(folders[name], items_src, name, protocol, route.params, stats)
        phases.lap("heldout")
    phases.lap("close")
    last_phases.clear()
    last_phases.update(phases.seconds)
    log.info("split %s: %d ratings, phases (s) %s", protocol, total_rows, phases.seconds)
    return all_stats


def _heldout_finish(seed: int, valid_share: float, require_item: bool, require_user: bool,
                    valid_salt: int = SALT_VALID_TEST, valid_below: Callable[[np.ndarray], np.ndarray] | None = None):
    """Build the ``finish`` step shared by the time and random protocols.

    Drops held-out ratings of users (then items) absent from train, and sends each remaining rating to
    valid where its hash says so.
    """

    def finish(held: pa.Table, train_users: IdSet, train_items: IdSet) -> tuple[pa.Table, pa.Table, dict]:
        user_ids = held.column("user_id").to_numpy()
        item_ids = held.column("item_id").to_numpy()
        dropped_users = dropped_items = 0
        keep = np.ones(held.num_rows, dtype=bool)
        if require_user:
            keep &= train_users.contains(user_ids)
            dropped_users = int(held.num_rows - np.count_nonzero(keep))
        if require_item:
            item_ok = train_items.contains(item_ids)
            dropped_items = int(np.count_nonzero(keep & ~item_ok))
            keep &= item_ok
        u = hash_unit(seed, valid_salt, user_ids, item_ids)
        to_valid = valid_below(u) if valid_below is not None else u < valid_share
        valid = _take(held, keep & to_valid)
        test = _take(held, keep & ~to_valid)
        extra = {
            "valid+test": part_stats(_take(held, keep)),
            "dropped": {"heldout_ratings_of_users_not_in_train": dropped_users,
                        "heldout_ratings_of_items_not_in_train": dropped_items},
        }
        return valid, test, extra

    return finish


def _check_time_split(spec: TimeSplit, data_range: tuple[int, int] | None, path: Path) -> None:
    if spec.train_start > spec.train_end:
        raise RecsysError(f"split {spec.name}: train range {spec.train_start}..{spec.train_end} is reversed")
    if spec.test_start > spec.test_end:
        raise RecsysError(f"split {spec.name}: test range {spec.test_start}..{spec.test_end} is reversed")
    if spec.test_start <= spec.train_end and spec.train_start <= spec.test_end:
        raise RecsysError(f"split {spec.name}: test range {spec.test_start}..{spec.test_end} overlaps "
                          f"train range {spec.train_start}..{spec.train_end}")
    if data_range is not None:
        first, last = _iso(data_range[0]), _iso(data_range[1])
        for part, lo, hi in (("train", spec.train_start, spec.train_end), ("test", spec.test_start, spec.test_end)):
            if hi.isoformat() < first or lo.isoformat() > last:
                raise RecsysError(f"{path}: split {spec.name} {part} range {lo}..{hi} lies outside the data "
                                  f"({first}..{last})")


def _time_route(spec: TimeSplit, seed: int, valid_share: float, params: dict, per_second: int) -> _Route:
    """Route of one date split; bounds are [first day 00:00, day after the last day 00:00) in file ticks."""
    def bounds(first: dt.date, last: dt.date) -> tuple[int, int]:
        return day_seconds(first) * per_second, (day_seconds(last) + SECONDS_PER_DAY) * per_second

    train_lo, train_hi = bounds(spec.train_start, spec.train_end)
    test_lo, test_hi = bounds(spec.test_start, spec.test_end)
    return _Route(
        name=spec.name,
        train_mask=lambda t, u, i: (t >= train_lo) & (t < train_hi),
        heldout_mask=lambda t, u, i: (t >= test_lo) & (t < test_hi),
        finish=_heldout_finish(seed, valid_share, require_item=True, require_user=True),
        params={"train_start": spec.train_start.isoformat(), "train_end": spec.train_end.isoformat(),
                "test_start": spec.test_start.isoformat(), "test_end": spec.test_end.isoformat(), **params},
        heldout_key=("period", test_lo, test_hi),
    )


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise RecsysError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")


def split_netflix_time(ratings_dir: Path, out_dir: Path, splits: list[str] | None = None, seed: int = 0,
                       valid_share: float = 0.5) -> dict[str, dict]:
    """The time splits of arXiv 1708.01715 (any subset of N3M, N6M, N1Y, NF) in one pass."""
    names = list(NETFLIX_SPLITS) if not splits else list(dict.fromkeys(splits))
    unknown = [n for n in names if n not in NETFLIX_SPLITS]
    if unknown:
        raise RecsysError(f"unknown Netflix split(s) {', '.join(unknown)}; choose from {', '.join(NETFLIX_SPLITS)}")
    _check_share("valid_share", valid_share)
    path = _ratings_path(ratings_dir)
    _check_columns(path)
    data_range = _time_range(path)
    for name in names:
        _check_time_split(NETFLIX_SPLITS[name], data_range, path)
    params = {"seed": seed, "valid_share": valid_share}
    return _stream_split(ratings_dir, out_dir, "netflix-time",
                         lambda per_second: [_time_route(NETFLIX_SPLITS[n], seed, valid_share, params, per_second)
                                             for n in names])


def _timestamp_quantile(path: Path, q: float) -> tuple[int, int]:
    """(the q-quantile of the timestamps in file ticks, ticks per second)."""
    parquet = _check_columns(path)
    column = parquet.read(columns=["timestamp"]).column(0)
    ticks = _ticks(column)
    if len(ticks) == 0:
        raise InputError(path, "holds no ratings")
    return int(np.quantile(ticks, q, method="lower")), _TICKS_PER_SECOND[column.type.unit]


def split_time(ratings_dir: Path, out_dir: Path, train_start: str | None = None, train_end: str | None = None,
               test_start: str | None = None, test_end: str | None = None, quantile: float | None = None,
               seed: int = 0, valid_share: float = 0.5) -> dict[str, dict]:
    """One time split named ``time``: by dates (inclusive UTC days) or at the ``quantile`` of time."""
    path = _ratings_path(ratings_dir)
    _check_columns(path)
    _check_share("valid_share", valid_share)
    dates = {"train_start": train_start, "train_end": train_end, "test_start": test_start, "test_end": test_end}
    params = {"seed": seed, "valid_share": valid_share}
    if quantile is not None:
        if any(v is not None for v in dates.values()):
            raise RecsysError("give either --quantile or the four dates, not both")
        if not 0.0 < quantile < 1.0:
            raise RecsysError(f"--quantile must be strictly between 0 and 1, got {quantile}")
        cut, cut_per_second = _timestamp_quantile(path, quantile)

        def routes(per_second: int) -> list[_Route]:
            at = cut * per_second // cut_per_second  # the same instant in the unit the stream reads
            return [_Route(
                name="time",
                train_mask=lambda t, u, i: t < at,
                heldout_mask=lambda t, u, i: t >= at,
                finish=_heldout_finish(seed, valid_share, require_item=True, require_user=True),
                params={"quantile": quantile, **params,
                        "cut": dt.datetime.fromtimestamp(cut / cut_per_second, dt.timezone.utc).isoformat()},
            )]

        return _stream_split(ratings_dir, out_dir, "time", routes)
    missing = [f"--{k.replace('_', '-')}" for k, v in dates.items() if v is None]
    if missing:
        raise RecsysError(f"protocol time needs --quantile or all four dates; missing {', '.join(missing)}")
    try:
        parsed = {k: dt.date.fromisoformat(v) for k, v in dates.items()}
    except ValueError as err:
        raise RecsysError(f"dates must be YYYY-MM-DD ({err})") from None
    spec = TimeSplit("time", **parsed)
    _check_time_split(spec, _time_range(path), path)
    return _stream_split(ratings_dir, out_dir, "time",
                         lambda per_second: [_time_route(spec, seed, valid_share, params, per_second)])


def split_random(ratings_dir: Path, out_dir: Path, fraction: float = 0.1, valid_fraction: float = 0.0,
                 seed: int = 0, keep_unseen: bool = False) -> dict[str, dict]:
    """Each rating goes to test with probability ``fraction`` and to valid with ``valid_fraction``.

    The draw is a hash of (seed, user_id, item_id), independent of row order. Unless ``keep_unseen``,
    held-out ratings of users or items that have no train rating are dropped (and counted).
    """
    _check_share("fraction", fraction)
    _check_share("valid_fraction", valid_fraction)
    if fraction <= 0 or fraction + valid_fraction >= 1:
        raise RecsysError(f"need 0 < --fraction and --fraction + --valid-fraction < 1, got {fraction} + {valid_fraction}")
    held_share = fraction + valid_fraction

    last: dict[str, np.ndarray] = {}

    def held(t, u, i):
        if last.get("users") is not u:  # train_mask and heldout_mask of one batch share the draw
            last["users"], last["held"] = u, hash_unit(seed, SALT_RANDOM_HOLDOUT, u, i) < held_share
        return last["held"]

    route = _Route(
        name="random",
        train_mask=lambda t, u, i: ~held(t, u, i),
        heldout_mask=held,
        # the same hash decides valid (the first valid_fraction of the held-out interval) vs test
        finish=_heldout_finish(seed, 0.0, require_item=not keep_unseen, require_user=not keep_unseen,
                               valid_salt=SALT_RANDOM_HOLDOUT, valid_below=lambda h: h < valid_fraction),
        params={"seed": seed, "fraction": fraction, "valid_fraction": valid_fraction, "keep_unseen": keep_unseen},
    )
    return _stream_split(ratings_dir, out_dir, "random", lambda per_second: [route])


# --------------------------------------------------------------------------------------------- leave-one-out


def _sample_negatives(rng: np.random.Generator, user_codes: np.ndarray, interacted: np.ndarray, n_items: int,
                      count: int, per_user: np.ndarray) -> np.ndarray:
    """``count`` distinct item codes per user that the user never interacted with.

    ``interacted`` holds sorted keys ``user_code * n_items + item_code`` of all interactions and
    ``per_user`` the number of distinct items of each user. Rejection sampling in blocks of bounded
    size (a few rounds, wider for the users still short); users who rated most of the catalogue,
    and any still short after the rounds, get an exact choice from their complement.
    """
    result = np.empty((len(user_codes), count), dtype=np.int64)
    free_share = 1.0 - per_user / n_items
    pending = np.flatnonzero(free_share >= 0.25)
    exact = [np.flatnonzero(free_share < 0.25)]
    for attempt in range(3):
        if len(pending) == 0:
            break
        share = 0.9 if attempt == 0 else max(float(free_share[pending].min()), 0.25)
        width = int(count / share * 1.3) + 8
        block = max(1, (1 << 21) // width)  # bounds the temporaries to a few tens of MB
        short = []
        for start in range(0, len(pending), block):
            rows_here = pending[start:start + block]
            draws = rng.integers(0, n_items, size=(len(rows_here), width))
            keys = user_codes[rows_here, None].astype(np.int64) * n_items + draws
            pos = np.searchsorted(interacted, keys)
            seen = interacted[np.minimum(pos, len(interacted) - 1)] == keys
            # a repeat of an earlier draw in the same row is no new negative
            order = np.argsort(draws, axis=1, kind="stable")
            sorted_draws = np.take_along_axis(draws, order, axis=1)
            repeat_sorted = np.zeros_like(sorted_draws, dtype=bool)
            repeat_sorted[:, 1:] = sorted_draws[:, 1:] == sorted_draws[:, :-1]
            repeat = np.zeros_like(repeat_sorted)
            np.put_along_axis(repeat, order, repeat_sorted, axis=1)
            good = ~seen & ~repeat
            enough = good.sum(axis=1) >= count
            if enough.any():
                picks = np.argsort(~good[enough], axis=1, kind="stable")[:, :count]  # first good draws, in order
                result[rows_here[enough]] = np.take_along_axis(draws[enough], picks, axis=1)
            short.append(rows_here[~enough])
        pending = np.concatenate(short)
    exact.append(pending)
    for row in np.sort(np.concatenate(exact)):
        lo, hi = np.searchsorted(interacted, [user_codes[row] * n_items, (user_codes[row] + 1) * n_items])
        mine = interacted[lo:hi] - user_codes[row] * n_items
        free = np.setdiff1d(np.arange(n_items), mine)
        result[row] = rng.choice(free, count, replace=False)
    return result


def split_leave_one_out(ratings_dir: Path, out_dir: Path, valid: bool = False, negatives: int = 99,
                        min_interactions: int | None = None, seed: int = 0) -> dict[str, dict]:
    """NCF protocol: per user the latest interaction is test (the one before is valid with ``valid``).

    "Latest" orders a user's ratings by timestamp, then by item_id (a larger item_id counts as later
    on equal timestamps). Users with fewer than ``min_interactions`` ratings keep all of them in train
    and get no test rating (counted as ``train_only_users``). Each test user gets ``negatives`` items
    sampled (seeded) among the items of the data set the user never rated in any part; a user with
    fewer unrated items than that also stays in train only (counted as ``users_without_room_for_negatives``).
    """
    import polars as pl

    held_per_user = 2 if valid else 1
    if min_interactions is None:
        min_interactions = held_per_user + 1
    if min_interactions < held_per_user + 1:
        raise RecsysError(f"--min-interactions must be at least {held_per_user + 1} so every test user keeps a train rating")
    if negatives < 0:
        raise RecsysError(f"--negatives must be 0 or more, got {negatives}")
    path = _ratings_path(ratings_dir)
    items_src = _items_path(ratings_dir)
    table = _read_all(path)
    if table.num_rows == 0:
        raise InputError(path, "holds no ratings")
    frame = pl.from_arrow(table)
    # one int64 that orders by (timestamp, item_id): seconds * 2^32 + (item_id + 2^31)
    later = pl.col("timestamp").dt.epoch("s") * (1 << 32) + (pl.col("item_id").cast(pl.Int64) + (1 << 31))
    ranked = frame.with_columns(
        later.rank("ordinal", descending=True).over("user_id").alias("_rank"),
        pl.len().over("user_id").alias("_count"),
    )
    # A test user needs `negatives` items never rated to sample from (ratings are distinct per user and item);
    # a user who rated nearly the whole catalogue keeps everything in train, like a too-short history.
    enough_history = pl.col("_count") >= min_interactions
    room_for_negatives = pl.col("_count") <= frame["item_id"].n_unique() - negatives
    eligible = enough_history & room_for_negatives
    test_f = ranked.filter(eligible & (pl.col("_rank") == 1))
    valid_f = ranked.filter(eligible & (pl.col("_rank") == 2)) if valid else ranked.clear()
    train_f = ranked.filter(~eligible | (pl.col("_rank") > held_per_user))
    to_arrow = lambda f: f.select(RATING_COLUMNS).to_arrow().cast(table.schema)  # noqa: E731
    train_t, valid_t, test_t = to_arrow(train_f), to_arrow(valid_f), to_arrow(test_f)
    if test_t.num_rows == 0:
        raise RecsysError(f"{path}: split leave-one-out would have an empty test part; no user has "
                          f"{min_interactions} or more ratings")
    train_only = ranked.filter(~eligible)
    # negatives: items of the data set the user never rated (in any part)
    item_universe = np.unique(frame["item_id"].to_numpy())
    test_users = np.sort(test_t.column("user_id").to_numpy())
    neg_ids = np.zeros((len(test_users), 0), dtype=np.int32)
    if negatives:
        from recsys_core.matrices import DenseIndex

        raw_users, raw_items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
        user_index, item_index = DenseIndex([raw_users]), DenseIndex([raw_items])
        user_universe = user_index.ids
        # a canonical CSR (C++ counting sort, repeats merged) lists the distinct (user, item) codes in
        # key order: far cheaper than np.unique over all keys
        ratings_csr = sp.csr_matrix(
            (np.ones(len(raw_users), np.float32), (user_index.positions(raw_users), item_index.positions(raw_items))),
            shape=(len(user_universe), len(item_universe)))
        ratings_csr.sum_duplicates()
        per_user = np.diff(ratings_csr.indptr)
        interacted = np.repeat(np.arange(len(user_universe), dtype=np.int64), per_user) * len(item_universe) \
            + ratings_csr.indices
        del ratings_csr
        test_codes = np.searchsorted(user_universe, test_users)
        rng = np.random.default_rng(seed)
        codes = _sample_negatives(rng, test_codes, interacted, len(item_universe), negatives, per_user[test_codes])
        neg_ids = item_universe[codes].astype(np.int32)
    offsets = np.arange(len(test_users) + 1, dtype=np.int32) * negatives
    negatives_table = pa.table({
        "user_id": pa.array(test_users.astype(np.int32)),
        "negatives": pa.ListArray.from_arrays(pa.array(offsets), pa.array(neg_ids.ravel(), type=pa.int32())),
    })
    test_items = np.unique(test_t.column("item_id").to_numpy())
    train_items = np.unique(train_t.column("item_id").to_numpy())
    stats = {
        "split": "leave-one-out",
        "protocol": "leave-one-out",
        "train": part_stats(train_t),
        "valid": part_stats(valid_t),
        "test": part_stats(test_t),
        "train_only_users": train_only["user_id"].n_unique(),
        "train_only_ratings": train_only.height,
        "users_without_room_for_negatives": ranked.filter(enough_history & ~room_for_negatives)["user_id"].n_unique(),
        "test_items_not_in_train": int(np.count_nonzero(~np.isin(test_items, train_items))),
    }
    params = {"seed": seed, "valid": valid, "negatives": negatives, "min_interactions": min_interactions,
              "tie_rule": "latest timestamp, then larger item_id"}
    with atomic_dir(Path(out_dir) / "leave-one-out") as folder:
        _write_parquet(train_t, folder / "train.parquet")
        _write_parquet(valid_t, folder / "valid.parquet")
        _write_parquet(test_t, folder / "test.parquet")
        pq.write_table(negatives_table, folder / "negatives.parquet", compression=PARQUET_COMPRESSION)
        _finish_folder(folder, items_src, "leave-one-out", "leave-one-out", params, stats)
    return {"leave-one-out": stats}


# --------------------------------------------------------------------------------------------- entry points

_PROTOCOL_FUNCS = {
    "netflix-time": split_netflix_time,
    "time": split_time,
    "leave-one-out": split_leave_one_out,
    "random": split_random,
}


def split(ratings_dir: str | Path, out_dir: str | Path, protocol: str, **options) -> dict[str, dict]:
    """Split a stage-1 folder with ``protocol``; returns {split name: stats}. Options are those of the protocol."""
    func = _PROTOCOL_FUNCS.get(protocol)
    if func is None:
        raise RecsysError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    import inspect

    accepted = set(inspect.signature(func).parameters) - {"ratings_dir", "out_dir"}
    wrong = sorted(k for k, v in options.items() if k not in accepted and v is not None)
    if wrong:
        raise RecsysError(f"option(s) {', '.join(wrong)} do not apply to protocol {protocol} "
                          f"(it takes {', '.join(sorted(accepted))})")
    options = {k: v for k, v in options.items() if k in accepted and v is not None}
    return func(Path(ratings_dir), Path(out_dir), **options)


# --------------------------------------------------------------------------------------------- CLI


def _run_cli(args) -> int:
    options = {"seed": args.seed}
    if args.protocol == "netflix-time":
        names = [n.strip() for n in args.splits.split(",") if n.strip()] if args.splits else None
        options.update(splits=names, valid_share=args.valid_share)
    elif args.protocol == "time":
        options.update(train_start=args.train_start, train_end=args.train_end, test_start=args.test_start,
                       test_end=args.test_end, quantile=args.quantile, valid_share=args.valid_share)
    elif args.protocol == "leave-one-out":
        options.update(valid=args.valid, negatives=args.negatives, min_interactions=args.min_interactions)
    else:
        options.update(fraction=args.fraction, valid_fraction=args.valid_fraction, keep_unseen=args.keep_unseen)
    given = {k for k in vars(args) if k in _PROTOCOL_SPECIFIC and getattr(args, k) not in (None, False)}
    foreign = sorted(given - set(options))
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        plural = len(foreign) > 1
        raise RecsysError(f"option{'s' if plural else ''} {flags} {'do' if plural else 'does'} not apply to "
                          f"--protocol {args.protocol}")
    started = time.perf_counter()
    all_stats = split(args.ratings_dir, args.out_dir, args.protocol, **options)
    print(stats_table(all_stats), end="")
    print(f"wrote {', '.join(str(Path(args.out_dir) / n) for n in all_stats)} in {time.perf_counter() - started:.1f} s")
    return 0


_PROTOCOL_SPECIFIC = {"splits", "valid_share", "train_start", "train_end", "test_start", "test_end", "quantile",
                      "valid", "negatives", "min_interactions", "fraction", "valid_fraction", "keep_unseen"}


def add_cli(subparsers) -> None:
    import argparse

    p = subparsers.add_parser(
        "split",
        help="stage 2: split a stage-1 ratings folder into train/valid/test",
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
    p.set_defaults(func=_run_cli)
