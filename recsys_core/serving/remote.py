"""A champion loaded in a child process: the serving process never builds the training estimator.

Loading a run through ``recsys_core.train.load_run`` builds the training estimator: statistics over every
training rating (row offsets, the output-bias start, the encoder's input rows), numpy calls that hold the
GIL for tens to hundreds of milliseconds at full scale and so stall the event loop that keeps answering
during a swap. Here that work runs in a child process (``python -m recsys_core.serving.remote``): it
loads the run, takes the fast path's arrays (every user's vector, the output layer, its bias, the row
offsets: ``LinearScores``), the unit item vectors, the ids, titles and each user's seen items, and writes
them as ``.npy`` files that the service reads (``np.load``: file reads, no model math). The child then
stays alive, holding the estimator, to answer fold-ins (``POST /recommendations``) over a socket pair; it
ends when the champion is dropped (or the service exits). Models without ``LinearScores`` (MLP, NCF,
I-AutoRec, EASE) score through their estimator per request, so they keep loading in process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.cli.serve import single_threaded_blas
from recsys_core.errors import RecsysError
from recsys_core.runs import RunConfig

ARRAYS = ("user_ids", "item_ids", "known_indptr", "known_indices", "users", "weight", "bias", "offset")


class NotLinear(Exception):
    """The run's model has no ``LinearScores``: load it in process."""


def _child(fd: int, run_dir: str, device: str, out_dir: str) -> int:
    """The child's life: load, write the arrays, answer fold-ins until the parent closes the socket."""
    conn = Connection(fd)
    try:
        from recsys_core.serving.model_access import ServableModel  # import cycle: model_access imports this module

        torch.set_num_threads(1)
        single_threaded_blas()
        model = ServableModel(run_dir, device)
        linear = model._linear if model.prepare_fast_scoring() else None
        if linear is None:
            conn.send(("not_linear", None))
            return 0
        users, weight, bias, offset = linear
        arrays = {"user_ids": model.user_ids, "item_ids": model.item_ids, "known_indptr": model.known.indptr,
                  "known_indices": model.known.indices, "users": users, "weight": weight, "bias": bias,
                  "offset": offset}
        if model.has_item_vectors:
            arrays["item_vectors"] = model.item_vectors()
        for name, array in arrays.items():
            np.save(Path(out_dir) / f"{name}.npy", np.ascontiguousarray(array))
        meta = {"config": model.config.to_json(), "rating_model": model.rating_model, "clip": list(model.clip),
                "titles": model.titles, "global_mean": model.global_mean, "can_fold_in": model.can_fold_in,
                "has_item_vectors": model.has_item_vectors}
        json.dumps(meta)  # fail here, in the child, on anything that does not travel
        np.save(Path(out_dir) / "popularity.npy", model.popularity)
        conn.send(("ready", meta))
    except BaseException as err:  # every failure goes back to the service as one sentence
        conn.send(("error", str(err) if isinstance(err, RecsysError) else f"{type(err).__name__}: {err}"))
        return 1
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return 0
        try:
            conn.send(("ok", model.fold_in(*request)))
        except RecsysError as err:
            conn.send(("recsys", str(err)))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


def _stop(conn: Connection, process: subprocess.Popen) -> None:
    """End a child whose champion was dropped: closing its socket ends its loop; kill if it lingers."""
    try:
        conn.close()
    except OSError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class FoldInWorker:
    """The parent's end of the child: ``fold_in`` sends the ratings and waits for the scores (~the model's
    own time plus ~0.1 ms of copying 17.7K floats). One call at a time: the handlers run on one event loop."""

    def __init__(self, conn: Connection, process: subprocess.Popen):
        self.conn, self.process = conn, process

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        try:
            self.conn.send((cols, values))
            kind, answer = self.conn.recv()
        except (EOFError, OSError):
            raise RecsysError("the champion's fold-in process has stopped; POST /reload or promote again "
                              "to restart it") from None
        if kind == "ok":
            return answer
        raise RecsysError(answer)


def load_in_child(model, run_dir: Path, device: str, timeout_s: float = 3600.0) -> bool:
    """Fill ``model`` (a bare ``ServableModel``) from a child process; False when the model is not linear
    (nothing filled: load it in process). RecsysError with the child's sentence when loading fails."""
    parent_end, child_end = socket.socketpair()
    out_dir = Path(tempfile.mkdtemp(prefix="recsys-serve-"))
    env = {**os.environ, "RECSYS_PROGRESS": "0"}
    try:
        process = subprocess.Popen([sys.executable, "-m", "recsys_core.serving.remote", str(child_end.fileno()),
                                    str(run_dir), device, str(out_dir)], pass_fds=(child_end.fileno(),), env=env,
                                   stdin=subprocess.DEVNULL)
        child_end.close()
        conn = Connection(parent_end.detach())
        deadline = time.monotonic() + timeout_s
        while not conn.poll(0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(conn, process)
                raise RecsysError(f"the process loading {run_dir.name} ended without an answer "
                                  f"(exit status {process.returncode})")
        try:
            kind, meta = conn.recv()
        except (EOFError, OSError):
            _stop(conn, process)
            raise RecsysError(f"the process loading {run_dir.name} ended without an answer") from None
        if kind != "ready":
            _stop(conn, process)
            if kind == "not_linear":
                return False
            raise RecsysError(meta)
        arrays = {name: np.load(out_dir / f"{name}.npy") for name in (*ARRAYS, "popularity")}
        item_vectors = out_dir / "item_vectors.npy"
        model._item_vectors = np.load(item_vectors) if item_vectors.exists() else None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    model.config, model.data, model.estimator = RunConfig.from_json(meta["config"]), None, None
    model.model_name, model.rating_model = meta["config"]["model"], bool(meta["rating_model"])
    model.clip = tuple(meta["clip"])
    model.user_ids, model.item_ids = arrays["user_ids"], arrays["item_ids"]
    model.n_users, model.n_items = len(model.user_ids), len(model.item_ids)
    model.titles = meta["titles"]
    indices = arrays["known_indices"]
    model.known = sp.csr_matrix((np.ones(len(indices), np.int8), indices, arrays["known_indptr"]),
                                shape=(model.n_users, model.n_items))
    model.global_mean = float(meta["global_mean"])
    model.popularity = arrays["popularity"]
    model.can_fold_in, model.has_item_vectors = bool(meta["can_fold_in"]), bool(meta["has_item_vectors"])
    # a model loaded here has linear scores; a neighbourhood model's own similarities (knn-item) are not linear
    # scores, so such a model is always loaded in the service's process
    model.has_item_similarities = False
    model._linear = (arrays["users"], arrays["weight"], arrays["bias"], arrays["offset"])
    model._remote = FoldInWorker(conn, process)
    weakref.finalize(model, _stop, conn, process)
    return True


if __name__ == "__main__":
    fd, run, dev, out = sys.argv[1:5]
    sys.exit(_child(int(fd), run, dev, out))
