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
    last: dict[str, np.ndarray] = {}

    def in_probe(t, users, items) -> np.ndarray:
        if last.get("users") is not users:  # train_mask and heldout_mask of one batch share the look-up
            query = prize.pair_keys(items, users)  # movie-major like the ratings: the search walks forward
            position = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
            hit = keys[position] == query if len(keys) else np.zeros(len(query), dtype=bool)
            found[position[hit]] = True
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
