"""Small generated split folders in the stage-3 layout (CONTRACTS.md), for the training tests and bench.

Ratings come from a known model: score = mu + b_u + b_i + p_u . q_i, rating = clip(round(score + noise), 1, 5)
with Gaussian noise. Observed pairs follow heavy-ish tails (log-normal user activity, Zipf-like item
popularity). Because the model is known, the Bayes-optimal prediction E[rating | score] and its RMSE on
the test part (the floor any model can reach) are returned with the folder.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.special import ndtr

from recsys_core.io import write_json

RATING_MIN, RATING_MAX = 1.0, 5.0


@dataclass
class GeneratedSplit:
    path: Path
    oracle_test_rmse: float
    n_users: int
    n_items: int


def expected_rating(score: np.ndarray, noise: float) -> np.ndarray:
    """E[clip(round(score + N(0, noise^2)), 1, 5)]: the Bayes-optimal prediction given the score."""
    levels = np.arange(RATING_MIN, RATING_MAX + 1)
    upper = np.append(levels[:-1] + 0.5, np.inf)
    lower = np.insert(levels[1:] - 0.5, 0, -np.inf)
    s = score[:, None]
    probs = ndtr((upper - s) / noise) - ndtr((lower - s) / noise)
    return probs @ levels


def _sample_pairs(rng, n_users, n_items, n_ratings):
    """Distinct (user, item) pairs with log-normal user activity and Zipf-like item popularity."""
    activity = rng.lognormal(0.0, 0.8, n_users)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    keys = np.empty(0, np.int64)
    while keys.size < n_ratings:
        want = int((n_ratings - keys.size) * 1.3) + 16
        users = rng.choice(n_users, want, p=activity / activity.sum())
        items = rng.choice(n_items, want, p=popularity / popularity.sum())
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_items + items]))
    keys = rng.permutation(keys)[:n_ratings]
    return (keys // n_items).astype(np.int32), (keys % n_items).astype(np.int32)


def _csr(rows, cols, vals, shape) -> sp.csr_matrix:
    m = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    m.indices = m.indices.astype(np.int32)
    m.indptr = m.indptr.astype(np.int32) if m.nnz < 2**31 else m.indptr
    return m


def write_split_folder(out_dir, train, valid, test, user_ids, item_ids, titles, name, protocol,
                       negatives=None) -> Path:
    """Write one folder in the stage-3 layout of CONTRACTS.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for part, m in (("train", train), ("valid", valid), ("test", test)):
        sp.save_npz(out / f"{part}.npz", m, compressed=False)
    by_item = train.T.tocsr()
    by_item.sort_indices()
    sp.save_npz(out / "train_by_item.npz", by_item, compressed=False)
    pl.DataFrame({"row": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids.astype(np.int32)}
                 ).write_parquet(out / "users.parquet")
    pl.DataFrame({"col": np.arange(len(item_ids), dtype=np.int32), "item_id": item_ids.astype(np.int32),
                  "title": titles, "year": pl.Series([2000 + int(i) % 6 for i in item_ids], dtype=pl.Int16)}
                 ).write_parquet(out / "items.parquet")
    if negatives is not None:
        np.savez(out / "negatives.npz", rows=negatives[0].astype(np.int32), items=negatives[1].astype(np.int32))
    write_json(out / "meta.json", {
        "split": name, "protocol": protocol, "n_users": int(train.shape[0]), "n_items": int(train.shape[1]),
        "nnz": {"train": int(train.nnz), "valid": int(valid.nnz), "test": int(test.nnz)},
        "rating_min": RATING_MIN, "rating_max": RATING_MAX, "rating_step": 1.0})
    return out


def _latent_model(rng, n_users, n_items, rank):
    mu = 3.6
    user_bias = rng.normal(0, 0.35, n_users)
    item_bias = rng.normal(0, 0.45, n_items)
    p = rng.normal(0, 1.0 / math.sqrt(math.sqrt(rank)), (n_users, rank)) * 0.9
    q = rng.normal(0, 1.0 / math.sqrt(math.sqrt(rank)), (n_items, rank)) * 0.9
    return lambda u, i: mu + user_bias[u] + item_bias[i] + np.einsum("nk,nk->n", p[u], q[i])


def make_rating_split(out_dir, n_users=1000, n_items=200, n_ratings=100_000, rank=2, noise=0.8,
                      valid_frac=0.08, test_frac=0.08, seed=0, name="N3M") -> GeneratedSplit:
    """A rating split (random held-out pairs) with its oracle test RMSE."""
    rng = np.random.default_rng(seed)
    score_fn = _latent_model(rng, n_users, n_items, rank)
    users, items = _sample_pairs(rng, n_users, n_items, n_ratings)
    score = score_fn(users, items)
    ratings = np.clip(np.rint(score + rng.normal(0, noise, score.size)), RATING_MIN, RATING_MAX)
    part = rng.random(users.size)
    is_test = part < test_frac
    is_valid = (part >= test_frac) & (part < test_frac + valid_frac)
    is_train = ~(is_test | is_valid)
    shape = (n_users, n_items)
    train, valid, test = (_csr(users[m], items[m], ratings[m], shape) for m in (is_train, is_valid, is_test))
    oracle = expected_rating(score[is_test], noise)
    oracle_rmse = float(np.sqrt(np.mean((oracle - ratings[is_test]) ** 2)))
    # Raw ids with gaps, sorted like the real index (rows/cols sorted by raw id).
    user_ids = np.arange(n_users, dtype=np.int32) * 3 + 7
    item_ids = np.arange(n_items, dtype=np.int32) + 1
    titles = [f"Movie {i}" for i in item_ids]
    path = write_split_folder(out_dir, train, valid, test, user_ids, item_ids, titles, name, "netflix-time")
    return GeneratedSplit(path, oracle_rmse, n_users, n_items)


def make_leave_one_out_split(out_dir, n_users=400, n_items=300, mean_per_user=50, rank=6, affinity=2.0,
                             n_negatives=99, seed=0) -> GeneratedSplit:
    """Leave-one-out: one random interaction per user is the test item; `negatives.npz` has N unrated items.

    Which items a user interacts with depends on popularity AND on a low-rank user-item affinity
    (weights popularity_i * exp(affinity * p_u . q_i), drawn without replacement by Gumbel top-n), so a
    personalized model can beat most-popular.
    """
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1 / math.sqrt(rank), (n_users, rank))
    q = rng.normal(0, 1, (n_items, rank))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.6
    logits = np.log(popularity[rng.permutation(n_items)])[None, :] + affinity * p @ q.T
    keys = logits + rng.gumbel(size=logits.shape)
    counts = np.clip(rng.lognormal(math.log(mean_per_user), 0.5, n_users).astype(int), 5, n_items - n_negatives - 1)
    order = np.argsort(-keys, axis=1)
    users = np.repeat(np.arange(n_users, dtype=np.int32), counts)
    items = np.concatenate([order[u, :c] for u, c in enumerate(counts)]).astype(np.int32)
    ratings = np.clip(np.rint(3.5 + (p[users] * q[items]).sum(1) + rng.normal(0, 0.5, users.size)),
                      RATING_MIN, RATING_MAX)
    # the held-out interaction: a random one of each user's
    first = np.r_[0, np.cumsum(counts)[:-1]]
    held = first + (rng.random(n_users) * counts).astype(int)
    last = np.zeros(users.size, bool)
    last[held] = True
    shape = (n_users, n_items)
    train = _csr(users[~last], items[~last], ratings[~last], shape)
    test = _csr(users[last], items[last], ratings[last], shape)
    valid = _csr(np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0), shape)
    neg_rows = users[last]
    neg_items = np.empty((neg_rows.size, n_negatives), np.int32)
    rated = (train + test).tolil().rows
    for k, u in enumerate(neg_rows):
        pool = np.setdiff1d(np.arange(n_items), rated[u])
        neg_items[k] = rng.choice(pool, n_negatives, replace=False)
    user_ids = np.arange(n_users, dtype=np.int32) + 1
    item_ids = np.arange(n_items, dtype=np.int32) + 1
    titles = [f"Film {i}" for i in item_ids]
    path = write_split_folder(out_dir, train, valid, test, user_ids, item_ids, titles, "leave-one-out",
                              "leave-one-out", negatives=(neg_rows, neg_items))
    return GeneratedSplit(path, float("nan"), n_users, n_items)


PAUSE_HOOK = Path(__file__).resolve().parent / "pause_after_checkpoint"


def pause_after_first_checkpoint(env: dict, marker: Path) -> dict:
    """``env`` for a training process that, once its first checkpoint is wholly on disk, writes ``marker`` and
    sleeps (tests/pause_after_checkpoint/sitecustomize.py, in every process it starts too)."""
    path = os.pathsep.join(p for p in (str(PAUSE_HOOK), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "RECSYS_TEST_PAUSE_MARKER": str(marker)}


def sigkill_at_first_checkpoint(process: subprocess.Popen, marker: Path, timeout: float = 600.0,
                                while_waiting=lambda: None) -> None:
    """SIGKILL the training ``process`` (started with ``pause_after_first_checkpoint``'s env) once it has written
    ``marker``: its first checkpoint is on disk and it waits there, so the kill always lands between two epochs,
    never racing the run's end. ``while_waiting()`` is called at every poll before that; fail when the process ends
    first or no marker comes within ``timeout`` (a hang guard, not a measurement)."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert process.poll() is None, f"training ended before its first checkpoint: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            while_waiting()
            time.sleep(0.005)
        while_waiting()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
