"""What the HTTP service answers, without HTTP: the champion it holds, how it swaps to a new one, and the
recommendation / similar-items / fold-in answers (``recsys_core.serving.app`` maps them onto routes).

The swap: a ``Champion`` is an immutable snapshot (registry pointer + a fully loaded ``ServableModel``).
``ChampionHolder.current`` is the ONE reference requests read; each request reads it once at its start and
uses that snapshot to the end. A reload loads and warms the new champion completely (off the event loop,
while the old one keeps answering), checks its weights against the pointer's sha256, and only then
assigns ``current`` (one reference assignment, atomic in Python). In-flight requests finish on the
snapshot they hold; the old model is freed when the last of them drops it. A reload that fails keeps the
old champion serving and is reported by ``/health``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys_core.errors import RecsysError
from recsys_core.evaluation import top_k
from recsys_core.registry import POINTER, Registry, file_sha256
from recsys_core.serving.model_access import FoldInUnsupported, ItemVectorsUnsupported, ServableModel

log = logging.getLogger("recsys_core.serving")

MAX_K = 1000


class NotFound(RecsysError):
    """A user or item the served model does not know (HTTP 404)."""


class BadRequest(RecsysError):
    """A request the served model cannot answer as asked (HTTP 422 for bad values)."""


class Unsupported(RecsysError):
    """The served model lacks the capability (HTTP 409: another champion may have it)."""


class NoChampion(RecsysError):
    """The registry model has no champion yet (HTTP 503)."""


@dataclass(frozen=True)
class Champion:
    name: str
    pointer: dict
    model: ServableModel
    loaded_at: str
    load_seconds: float

    @property
    def version(self) -> int:
        return int(self.pointer["version"])

    def describe(self) -> dict:
        p, m = self.pointer, self.model
        return {"model": self.name, "version": self.version, "run_dir": p["run_dir"], "model_type": m.model_name,
                "rating_model": m.rating_model, "can_fold_in": m.can_fold_in,
                "has_item_vectors": m.has_item_vectors, "n_users": m.n_users,
                "n_items": m.n_items, "primary_metric": p.get("primary_metric"), "metrics": p.get("metrics"),
                "trained_on": p.get("trained_on"), "data_key": p.get("data_key"), "code_key": p.get("code_key"),
                "promoted_at": p.get("promoted_at"), "reason": p.get("reason"), "loaded_at": self.loaded_at,
                "load_seconds": self.load_seconds}

    # --- answers ------------------------------------------------------------------------------------------
    def _items(self, cols: np.ndarray, scores: np.ndarray) -> list[dict]:
        titles = self.model.titles
        return [{"rank": rank, "item_id": int(self.model.item_ids[c]), "title": titles[c], "score": float(s)}
                for rank, (c, s) in enumerate(zip(cols.tolist(), scores.tolist()), 1)]

    def _top(self, scores: np.ndarray, k: int) -> list[dict]:
        cols = top_k(scores[None, :], k)[0]
        picked = scores[cols]
        keep = picked > -np.inf  # fewer than k left when the user rated (nearly) everything
        return self._items(cols[keep], picked[keep])

    def _head(self) -> dict:
        return {"model": self.name, "version": self.version}

    def recommend_user(self, user_id: int, k: int) -> dict:
        row = int(self.model.rows_of([user_id])[0])
        if row < 0:
            raise NotFound(f"user {user_id} is not known to {self.name} version {self.version}; "
                           "POST their ratings to /recommendations instead")
        scores = self.model.score_row(row)
        scores[self.model.seen_cols(row)] = -np.inf
        return {**self._head(), "user_id": user_id, "items": self._top(scores, k)}

    def recommend_ratings(self, ratings: dict[int, float], k: int) -> dict:
        model = self.model
        if not ratings:
            raise BadRequest("ratings must hold at least one item_id: rating pair")
        huge = [i for i in ratings if not -2**31 <= i < 2**31]  # beyond any raw id (int32)
        if huge:
            raise NotFound(f"item id(s) {', '.join(map(str, huge[:10]))} are not in the catalogue of "
                           f"{self.name} version {self.version}")
        ids = np.fromiter(ratings.keys(), np.int64, len(ratings))
        values = np.fromiter(ratings.values(), np.float64, len(ratings))
        low, high = model.clip
        bad = [f"{i}: {v}" for i, v in zip(ids.tolist(), values.tolist()) if not low <= v <= high]
        if bad:
            raise BadRequest(f"ratings must lie in {low:g}..{high:g}; got {', '.join(bad[:5])}")
        cols = model.cols_of(ids)
        if (cols < 0).any():
            unknown = ids[cols < 0].tolist()
            raise NotFound(f"item id(s) {', '.join(map(str, unknown[:10]))} are not in the catalogue of "
                           f"{self.name} version {self.version}")
        try:
            scores = model.fold_in(cols, values.astype(np.float32))
        except FoldInUnsupported as err:
            raise Unsupported(str(err)) from None
        scores[cols] = -np.inf
        return {**self._head(), "items": self._top(scores, k)}

    def similar_items(self, item_id: int, k: int) -> dict:
        col = int(self.model.cols_of([item_id])[0])
        if col < 0:
            raise NotFound(f"item {item_id} is not in the catalogue of {self.name} version {self.version}")
        if self.model.has_item_similarities:  # a neighbourhood model's own similarities (knn-item)
            scores = self.model.item_similarities(col)
        else:
            try:
                vectors = self.model.item_vectors()
            except ItemVectorsUnsupported as err:
                raise Unsupported(str(err)) from None
            scores = vectors @ vectors[col]
        scores[col] = -np.inf
        return {**self._head(), "item_id": item_id, "title": self.model.titles[col],
                "items": self._top(scores, k)}


def load_champion(registry: Registry, name: str, pointer: dict, device: str = "cpu") -> Champion:
    """Load the run a pointer names, completely: weights checked against the pointer, item vectors
    computed, one scoring pass run (so the first request pays no lazy start-up)."""
    started = time.perf_counter()
    run_dir = Path(pointer["run_dir"])
    model_file = run_dir / "model.pt"
    if not model_file.is_file():
        raise RecsysError(f"{model_file} (version {pointer.get('version')} of {name}) does not exist")
    expected = pointer.get("model_sha256")
    if expected and file_sha256(model_file) != expected:
        raise RecsysError(f"{model_file} changed since version {pointer.get('version')} of {name} was promoted")
    model = ServableModel(run_dir, device)
    model.prepare_fast_scoring()
    if model.has_item_vectors:
        model.item_vectors()
    if model.n_users:
        model.score_rows([0])
    return Champion(name, pointer, model, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    round(time.perf_counter() - started, 3))


@dataclass
class ChampionHolder:
    """Holds the champion of one registry model and swaps it when the pointer changes."""

    registry: Registry
    name: str
    device: str = "cpu"
    current: Champion | None = None
    last_error: str | None = None
    last_check: str | None = None
    _signature: tuple | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    def require(self) -> Champion:
        champion = self.current
        if champion is None:
            raise NoChampion(self.last_error or f"registry model {self.name} has no champion yet; "
                                                "the service picks one up as soon as it is promoted")
        return champion

    def _pointer_signature(self) -> tuple | None:
        try:
            st = os.stat(self.registry.folder(self.name) / POINTER)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        """Cheap check (one stat) whether the pointer file was replaced since the last reload."""
        return self._pointer_signature() != self._signature

    def reload(self) -> dict:
        """Read the pointer; when it names another version or run than the one served, load it fully and
        swap. Blocking (run it off the event loop); one reload at a time. Returns what happened."""
        with self._reload_lock:
            self.last_check = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            signature = self._pointer_signature()
            try:
                pointer = self.registry.champion(self.name)
            except RecsysError as err:
                self.last_error = str(err)
                raise
            old = self.current
            if pointer is None:
                self._signature = signature
                return {"changed": False, "version": None, "detail": f"{self.name} has no champion yet"}
            same = old is not None and (old.version, old.pointer["run_dir"], old.pointer.get("model_sha256")) == (
                pointer["version"], pointer["run_dir"], pointer.get("model_sha256"))
            if same:
                self._signature = signature
                self.last_error = None
                return {"changed": False, "version": old.version}
            try:
                champion = load_champion(self.registry, self.name, pointer, self.device)
            except Exception as err:  # a broken run: keep serving the old champion, say why
                self.last_error = (f"cannot load version {pointer.get('version')} of {self.name}: {err}; "
                                   + (f"still serving version {old.version}" if old else "serving nothing"))
                self._signature = signature  # do not retry a broken pointer on every poll
                log.error(self.last_error)
                raise RecsysError(self.last_error) from None
            self.current = champion  # the swap: one reference assignment
            self._signature = signature
            self.last_error = None
            # Park what is loaded outside the cyclic GC: a full collection walks every tracked object
            # (~230K with the full-scale N3M autoencoder loaded: 0.1-0.8 s with the GIL held), and requests
            # allocate enough to trigger one now and then. The collection here walks only what was made
            # since the last freeze. A champion holds no reference cycle (a test checks it), so the old
            # one, frozen or not, is freed by reference counting when its last request drops it.
            gc.collect()
            gc.freeze()
            log.info("serving %s version %s (%s) loaded in %.2f s", self.name, champion.version,
                     champion.pointer["run_dir"], champion.load_seconds)
            return {"changed": True, "version": champion.version,
                    "previous_version": old.version if old else None, "load_seconds": champion.load_seconds}

    def health(self) -> dict:
        champion = self.current
        return {"status": "ok" if champion else "no champion", "model": self.name,
                "version": champion.version if champion else None,
                "run_dir": champion.pointer["run_dir"] if champion else None,
                "last_reload_error": self.last_error, "last_check": self.last_check}
