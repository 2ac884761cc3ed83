"""The streaming engine of the time-based and random protocols.

One pass over the ratings serves every requested split (one pass for all four Netflix splits): each
input batch is routed to the train files being written while the (small) held-out candidates are kept
in memory; which users/items a train part holds is tracked in ``IdSet`` bitmaps indexed by raw id.
Every split folder is written through ``atomic_dir``, so an error leaves no partial output and older
output intact.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from recsys_core.errors import RecsysError
from recsys_core.idset import IdSet
from recsys_core.io import atomic_dir
from recsys_core.progress import progress_bar
from recsys_core.split.reading import (
    check_columns,
    iso_ticks,
    items_path,
    iter_batches,
    ratings_path,
    ticks,
    ticks_per_second,
    working_schema,
)
from recsys_core.split.stats import part_stats
from recsys_core.split.writing import TrainWriter, finish_folder, write_parquet

log = logging.getLogger("recsys_core")

# Which held-out candidates go to valid: (held-out table, its user ids, its item ids) -> bool mask.
ValidRule = Callable[[pa.Table, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Route:
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


def take(table: pa.Table, mask: np.ndarray) -> pa.Table:
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


# Phase breakdown of the latest stream_split run in this process (read by bench/bench_split.py).
last_phases: dict[str, float] = {}


def stream_split(ratings_dir: Path, out_dir: Path, protocol: str,
                 make_routes: Callable[[int], list[Route]]) -> dict[str, dict]:
    """One pass over the ratings for all routes; writes one folder per route (all or nothing).

    ``make_routes(ticks_per_second)`` builds the routes for the timestamp unit of the file.
    """
    path = ratings_path(ratings_dir)
    items_src = items_path(ratings_dir)
    parquet = check_columns(path)
    schema = working_schema(parquet)
    per_second = ticks_per_second(schema)
    routes = make_routes(per_second)
    total_rows = parquet.metadata.num_rows
    phases = _Phases()
    with contextlib.ExitStack() as stack:
        folders = {r.name: stack.enter_context(atomic_dir(Path(out_dir) / r.name)) for r in routes}
        writers = {r.name: TrainWriter(folders[r.name] / "train.parquet", schema) for r in routes}
        for w in writers.values():
            stack.callback(w.close)
        users = {r.name: IdSet() for r in routes}
        items = {r.name: IdSet() for r in routes}
        train_rows = {r.name: 0 for r in routes}
        # first and last tick of each train part (an empty train part is refused below)
        train_low = {r.name: np.iinfo(np.int64).max for r in routes}
        train_high = {r.name: np.iinfo(np.int64).min for r in routes}
        heldout_keys = {r.name: (r.heldout_key if r.heldout_key is not None else ("route", r.name)) for r in routes}
        heldout: dict[object, list[pa.RecordBatch]] = {key: [] for key in heldout_keys.values()}
        phases.lap("open")
        with progress_bar("split: reading ratings", total_rows, "ratings") as bar:
            batches = iter_batches(path, schema)
            while True:
                batch = next(batches, None)
                phases.lap("read")
                if batch is None:
                    break
                batch_ticks = ticks(batch.column(3))
                user_ids = batch.column(0).to_numpy()
                item_ids = batch.column(1).to_numpy()
                held_done = set()
                for route in routes:
                    name = route.name
                    mask = route.train_mask(batch_ticks, user_ids, item_ids)
                    kept = int(np.count_nonzero(mask))
                    if kept:
                        part = batch if kept == len(mask) else batch.filter(pa.array(mask))
                        writers[name].write(part)
                        users[name].add(part.column(0).to_numpy())
                        items[name].add(part.column(1).to_numpy())
                        train_rows[name] += kept
                        kept_ticks = part.column(3).cast(pa.int64()).to_numpy()
                        train_low[name] = min(train_low[name], int(kept_ticks.min()))
                        train_high[name] = max(train_high[name], int(kept_ticks.max()))
                    key = heldout_keys[name]
                    if key not in held_done:
                        held_done.add(key)
                        held = route.heldout_mask(batch_ticks, user_ids, item_ids)
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
            write_parquet(valid, folders[name] / "valid.parquet")
            write_parquet(test, folders[name] / "test.parquet")
            stats = {
                "split": name,
                "protocol": protocol,
                "train": {"ratings": train_rows[name], "users": len(users[name]), "items": len(items[name]),
                          "first_date": iso_ticks(train_low[name], per_second),
                          "last_date": iso_ticks(train_high[name], per_second)},
                "valid": part_stats(valid),
                "test": part_stats(test),
                **extra,
            }
            all_stats[name] = stats
            finish_folder(folders[name], items_src, name, protocol, route.params, stats)
        phases.lap("heldout")
    phases.lap("close")
    last_phases.clear()
    last_phases.update(phases.seconds)
    log.info("split %s: %d ratings, phases (s) %s", protocol, total_rows, phases.seconds)
    return all_stats


def heldout_finish(to_valid: ValidRule, require_item: bool, require_user: bool):
    """Build the ``finish`` step shared by the time and random protocols.

    Drops held-out ratings of users (then items) absent from train, and sends each remaining rating to
    valid where ``to_valid`` says so, to test otherwise.
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
        valid_side = to_valid(held, user_ids, item_ids)
        valid = take(held, keep & valid_side)
        test = take(held, keep & ~valid_side)
        extra = {
            "valid+test": part_stats(take(held, keep)),
            "dropped": {"heldout_ratings_of_users_not_in_train": dropped_users,
                        "heldout_ratings_of_items_not_in_train": dropped_items},
        }
        return valid, test, extra

    return finish


def check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise RecsysError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
