"""The ``netflix-probe`` protocol: the Netflix Prize's own split.

Train is every rating whose (movie, customer) pair is not in the Prize's ``probe.txt``; the probe ratings are
the held-out part, each sent to valid or test by the same seeded hash of (seed, user_id, item_id) as the
netflix-time splits (``valid_share``, default 1/2; 0 puts all of probe in test, the Prize papers' convention,
and leaves no valid part, said loudly). ``probe.txt`` is read from the raw source (``source``, any layout the
converter reads, see recsys_core/prize.py) without extracting anything. Every probe pair must be a training
rating: the first one that is not is refused with its line of probe.txt. One streaming pass, one folder
``probe``; held-out ratings of customers or movies absent from train are dropped and counted, as for every
protocol (none on the real data).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recsys_core import prize
from recsys_core.errors import InputError
from recsys_core.split.engine import Route, check_share, heldout_finish, stream_split
from recsys_core.split.hashing import SALT_VALID_TEST, hash_unit
from recsys_core.split.reading import check_columns, ratings_path

log = logging.getLogger("recsys_core")

SPLIT_NAME = "probe"
# Slots of the filter in front of the sorted search (16 MB): a binary search of every row in the 1.4M probe
# pairs cost as much as the four netflix-time splits' routing together at full scale (49 s of 70 s at load ~29).
_FILTER_BITS = 24
_FILTER_SLOTS = 1 << _FILTER_BITS


def _slot(keys: np.ndarray) -> np.ndarray:
    """Fibonacci hashing of the pair keys onto the filter's slots."""
    return ((keys.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - _FILTER_BITS)).astype(np.intp)


def split_netflix_probe(ratings_dir: Path, out_dir: Path, source: str | None = None, seed: int = 0,
                        valid_share: float = 0.5) -> dict[str, dict]:
    """Split the stage-1 ratings of a Netflix source by its ``probe.txt`` (found in ``source``)."""
    check_share("valid_share", valid_share)
    path = ratings_path(ratings_dir)
    check_columns(path)
    probe_file = prize.require_prize_file(source, prize.PROBE, "protocol netflix-probe")
    probe = prize.read_probe(probe_file)
    keys = probe.keys
    found = np.zeros(len(keys), dtype=bool)
    maybe = np.zeros(_FILTER_SLOTS, dtype=bool)  # a one-hash filter: which rows can be probe pairs at all
    maybe[_slot(keys)] = True
    last: dict[str, np.ndarray] = {}

    def in_probe(t, users, items) -> np.ndarray:
        if last.get("users") is not users:  # train_mask and heldout_mask of one batch share the look-up
            query = prize.pair_keys(items, users)
            rows = np.flatnonzero(maybe[_slot(query)])  # ~1.4% + ~8% false positives at full scale
            hit = np.zeros(len(query), dtype=bool)
            if len(rows) and len(keys):
                candidates = query[rows]
                position = np.minimum(np.searchsorted(keys, candidates), len(keys) - 1)
                match = keys[position] == candidates
                found[position[match]] = True
                hit[rows[match]] = True
            last["users"], last["hit"] = users, hit
        return last["hit"]

    to_valid = heldout_finish(lambda held, u, i: hash_unit(seed, SALT_VALID_TEST, u, i) < valid_share,
                              require_item=True, require_user=True)

    def finish(held, train_users, train_items):
        if not found.all():
            missing = np.flatnonzero(~found)
            first = missing[np.argmin(probe.lines[missing])]
            movie, customer = int(keys[first] >> 32), int(keys[first] & 0xFFFFFFFF)
            raise InputError(probe.label, f"customer {customer} has no rating of movie {movie} in the training set "
                                          f"{path} ({len(missing):,} probe pair(s) are not; every probe pair must be a "
                                          "training rating: is this the probe file of this data set?)",
                             int(probe.lines[first]))
        valid, test, extra = to_valid(held, train_users, train_items)
        extra["probe"] = {"file": probe.name, "pairs": int(len(keys))}
        return valid, test, extra

    if valid_share == 0:
        log.warning("netflix-probe with valid_share 0: NO VALID PART. All %d probe ratings are test (the Prize "
                    "papers' convention); training on this split has nothing to stop early or choose on, and "
                    "choosing anything on test makes its RMSE optimistic", len(keys))
    route = Route(name=SPLIT_NAME, train_mask=lambda t, u, i: ~in_probe(t, u, i), heldout_mask=in_probe,
                  finish=finish, params={"seed": seed, "valid_share": valid_share, "probe_file": probe.name})
    return stream_split(ratings_dir, out_dir, "netflix-probe", lambda per_second: [route])
