"""Two stage-3 splits of one growing rating data set, for the registry, promotion and service tests.

The "old" split holds the early ratings of the first users and items; the "new" one holds all ratings,
so it has users and items the old one never saw. Raw ids are the same in both (user u -> 3u + 7,
item i -> i + 1) while each split has its own row/column index, as consecutive real splits do.
Also: ``serving``, a real ``python -m recsys_core serve`` process for the service tests and benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.train_fixtures import RATING_MAX, RATING_MIN, _csr, _latent_model, _sample_pairs, write_split_folder

ROOT = Path(__file__).resolve().parents[1]
OLD_USER_SHARE, OLD_ITEM_SHARE, OLD_TIME_SHARE = 0.8, 0.9, 0.7


def _write(out_dir: Path, users, items, ratings, rng, name: str) -> Path:
    user_index, rows = np.unique(users, return_inverse=True)
    item_index, cols = np.unique(items, return_inverse=True)
    part = rng.random(len(users))
    shape = (len(user_index), len(item_index))
    train, valid, test = (_csr(rows[m], cols[m], ratings[m], shape)
                          for m in (part >= 0.2, (part >= 0.1) & (part < 0.2), part < 0.1))
    item_ids = (item_index + 1).astype(np.int32)
    return write_split_folder(out_dir, train, valid, test, (user_index * 3 + 7).astype(np.int32), item_ids,
                              [f"Movie {i}" for i in item_ids], name, "netflix-time")


def make_growing_splits(root, n_users=500, n_items=150, n_ratings=30_000, seed=0) -> tuple[Path, Path]:
    """(old split folder, new split folder) under ``root``."""
    rng = np.random.default_rng(seed)
    score_fn = _latent_model(rng, n_users, n_items, rank=2)
    users, items = _sample_pairs(rng, n_users, n_items, n_ratings)
    ratings = np.clip(np.rint(score_fn(users, items) + rng.normal(0, 0.8, len(users))), RATING_MIN, RATING_MAX)
    early = rng.random(len(users)) < OLD_TIME_SHARE
    old = early & (users < int(OLD_USER_SHARE * n_users)) & (items < int(OLD_ITEM_SHARE * n_items))
    root = Path(root)
    return (_write(root / "old", users[old], items[old], ratings[old], rng, "N3M"),
            _write(root / "new", users, items, ratings, rng, "N3M"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(registry_dir: Path, name: str, log: Path, watch_interval: float = 0.2, extra: list[str] = (),
            env: dict | None = None):
    """``python -m recsys_core serve`` on a free port of 127.0.0.1 in its own process group, stopped on exit;
    yields (an httpx client bound to it, the server process) once it answers. ``env``: more variables."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k != "RECSYS_API_KEY"}  # a key only where a test sets one
    env = {**inherited, **(env or {}), "RECSYS_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "recsys_core", "serve", "--registry", str(registry_dir),
                                   "--model", name, "--host", "127.0.0.1", "--port", str(port),
                                   "--watch-interval", str(watch_interval), *extra],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the server exited: {log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                client.get("/health")
                break
            assert time.monotonic() < deadline, f"the server did not answer within 120 s: {log.read_text()}"
            time.sleep(0.2)
        yield client, server
    finally:
        client.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
