"""Writing split folders: Parquet parts, the threaded train writer, and the files beside the parts."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.io import write_json
from recsys_core.split.stats import stats_table, thin_part_warnings

log = logging.getLogger("recsys_core")

# Output Parquet: lz4 is cheap to write; dictionary encoding pays for the few distinct items, ratings
# and days but not for the ~500K user ids (it costs a third of the write time there for nothing).
PARQUET_COMPRESSION = "lz4"
PARQUET_DICTIONARY = ["item_id", "rating", "timestamp"]
# pyarrow annotates use_dictionary as bool; it also takes (and documents) a list of column names.
_USE_DICTIONARY = cast(bool, PARQUET_DICTIONARY)


def write_parquet(table: pa.Table, dest: Path) -> None:
    pq.write_table(table, dest, compression=PARQUET_COMPRESSION, use_dictionary=_USE_DICTIONARY)


class TrainWriter:
    """Appends batches to one train.parquet on its own thread (the Parquet encoder releases the GIL)."""

    def __init__(self, dest: Path, schema: pa.Schema):
        self._writer = pq.ParquetWriter(dest, schema, compression=PARQUET_COMPRESSION,
                                        use_dictionary=_USE_DICTIONARY)
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


def finish_folder(folder: Path, items_src: Path, name: str, protocol: str, params: dict, stats: dict) -> None:
    """items.parquet (the stage-1 catalogue), split.json, stats.json and stats.md of one split folder. A thin
    held-out part (``thin_part_warnings``) is logged as a warning and listed under ``warnings`` in stats.json
    (``stats`` gets the key too, so the caller's return value carries it)."""
    warnings = thin_part_warnings(name, stats)
    if warnings:
        stats["warnings"] = warnings
        for warning in warnings:
            log.warning("%s", warning)
    shutil.copyfile(items_src, folder / "items.parquet")
    write_json(folder / "split.json", {"split": name, "protocol": protocol, **params})
    write_json(folder / "stats.json", stats)
    notes = "".join(f"\n**Warning:** {w}\n" for w in warnings)
    (folder / "stats.md").write_text(f"# Split {name} ({protocol})\n\n" + stats_table({name: stats}) + notes)
