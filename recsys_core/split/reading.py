"""Reading a stage-1 folder for the split: checks, the working schema, batches and timestamps."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.errors import InputError
from recsys_core.schema import RATINGS_SCHEMA

RATING_COLUMNS = tuple(RATINGS_SCHEMA.names)
SECONDS_PER_DAY = 86400
READ_BATCH_ROWS = 1 << 22
TICKS_PER_SECOND = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}


def ratings_path(ratings_dir: Path) -> Path:
    path = Path(ratings_dir) / "ratings.parquet"
    if not path.is_file():
        raise InputError(path, "not found; give a stage-1 folder holding ratings.parquet "
                               "(python -m recsys_core convert)")
    return path


def items_path(ratings_dir: Path) -> Path:
    path = Path(ratings_dir) / "items.parquet"
    if not path.is_file():
        raise InputError(path, "not found; a stage-1 folder holds items.parquet beside ratings.parquet")
    return path


def check_columns(path: Path) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, f"not a readable Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    missing = [c for c in RATING_COLUMNS if c not in names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; "
                               f"a ratings file needs {', '.join(RATING_COLUMNS)}")
    kind = parquet.schema_arrow.field("timestamp").type
    if not pa.types.is_timestamp(kind):
        raise InputError(path, f"column timestamp has type {kind}, expected a timestamp")
    return parquet


def working_schema(parquet: pq.ParquetFile) -> pa.Schema:
    """RATINGS_SCHEMA with the timestamp unit found in the file.

    Parquet has no seconds unit (timestamp[s] is stored as ms), so keeping the file's unit saves a
    division per row on reading and a multiplication on writing; the values are the same instants.
    """
    unit = parquet.schema_arrow.field("timestamp").type.unit
    return RATINGS_SCHEMA.set(3, pa.field("timestamp", pa.timestamp(unit, tz="UTC"), nullable=False))


def ticks_per_second(schema: pa.Schema) -> int:
    return TICKS_PER_SECOND[schema.field("timestamp").type.unit]


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


def iter_batches(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    parquet = check_columns(path)
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=list(RATING_COLUMNS), use_threads=True):
        yield _to_schema(batch, path, schema)


def read_all(path: Path) -> pa.Table:
    parquet = check_columns(path)
    schema = working_schema(parquet)
    table = parquet.read(columns=list(RATING_COLUMNS), use_threads=True)
    return pa.Table.from_batches([_to_schema(b, path, schema) for b in table.to_batches()], schema=schema)


def ticks(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The int64 values of a timestamp column (zero copy where possible)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return np.asarray(column.to_numpy(zero_copy_only=False)).view(np.int64)


def time_range(parquet_path: Path) -> tuple[int, int] | None:
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


def timestamp_quantiles(path: Path, qs: list[float]) -> tuple[list[int], int]:
    """(the qs-quantiles of the timestamps in file ticks, numpy ``method="lower"``; ticks per second)."""
    parquet = check_columns(path)
    column = parquet.read(columns=["timestamp"]).column(0)
    values = ticks(column)
    if len(values) == 0:
        raise InputError(path, "holds no ratings")
    cuts = np.quantile(values, qs, method="lower")
    return [int(c) for c in cuts], TICKS_PER_SECOND[column.type.unit]


def day_seconds(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * SECONDS_PER_DAY


def iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).date().isoformat()


def iso_ticks(value: int, per_second: int) -> str:
    return iso(int(value) // per_second)
