"""The seeded per-rating coin of the split: a splitmix64 hash of (seed, salt, user_id, item_id)."""

from __future__ import annotations

import numpy as np

# Salts that make the hash streams of different decisions independent of each other.
SALT_VALID_TEST = 1
SALT_RANDOM_HOLDOUT = 2
SALT_CHRONO_TIES = 3

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
