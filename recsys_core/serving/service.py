"""What the HTTP service answers, without HTTP: the champion it holds, how it swaps to a new one, and the
recommendation / similar-items / fold-in answers (``recsys_core.serving.app`` maps them onto routes).

The swap: a ``Champion`` is an immutable snapshot (registry pointer + a fully loaded ``ServableModel``).
``ChampionHolder.current`` is the ONE reference requests read; each request reads it once at its start and
uses that snapshot to the end. A reload loads and warms the new champion completely (off the event loop,
while the old one keeps answering), checks its weights against the pointer's sha256, and only then
assigns ``current`` (one reference assignment, atomic in Python). In-flight requests finish on the
snapshot they hold; the old model is freed when the last of them drops it. A reload that fails keeps the
old champion serving and is reported by ``/health``.

The watcher cannot die: ``ChampionHolder.poll`` turns every exception of a look at the pointer (a pointer
that is not a JSON object, has no version, cannot be read; a run folder deleted; a ``model.pt`` torch
cannot unpickle) into ``last_error``, logged once per distinct error, and retries with exponential backoff
(at once when the pointer changes again). While the pointer names something it cannot load, the holder
is ``degraded`` (``/health`` answers 503) and the old champion keeps answering.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys_core.errors import RecsysError
from recsys_core.records import ChampionPointer
from recsys_core.registry import POINTER, Registry, check_name, file_sha256
from recsys_core.serving.model_access import FoldInUnsupported, ItemVectorsUnsupported, ServableModel

log = logging.getLogger("recsys_core.serving")

MAX_K = 1000
MAX_RATINGS = 10_000     # default limit of ratings in one fold-in request
MAX_BACKOFF_S = 60.0     # longest wait between two retries of a pointer that cannot be loaded


class NotFound(RecsysError):
    """A user or item the served model does not know (HTTP 404)."""


class BadRequest(RecsysError):
    """A request the served model cannot answer as asked (HTTP 422 for bad values)."""


class Unsupported(RecsysError):
    """The served model lacks the capability (HTTP 409: another champion may have it)."""


class NoChampion(RecsysError):
    """The registry model has no champion yet (HTTP 503)."""


class TooLarge(RecsysError):
    """A request body over the configured size (HTTP 413)."""


# --------------------------------------------------------------------------- the fold-in request body

class _Pairs(list):
    """A JSON object as its (key, value) pairs in order: duplicate keys stay visible."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


_INT = re.compile(r"\A[+-]?[0-9]+\Z")
_FIELDS = ("ratings", "k")


def parse_new_user(body: bytes, max_ratings: int = MAX_RATINGS) -> tuple[dict[int, float], int]:
    """``({item_id: rating}, k)`` from the body of ``POST /recommendations``, or BadRequest (HTTP 422) with
    one sentence: a body that is not UTF-8 or not JSON, unknown fields, ratings that are not an object of
    integer ids to numbers (``true`` is not a rating), an id given twice (``"1"`` and ``"01"`` are one id),
    more than ``max_ratings`` ratings, ``k`` not an integer in 1..MAX_K."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"bad request: the body is not UTF-8 text (at byte offset {err.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_Pairs, parse_constant=_no_constant)
    except ValueError as err:
        raise BadRequest(f"bad request: the body is not JSON ({err})") from None
    if not isinstance(doc, _Pairs):
        raise BadRequest('bad request: the body must be a JSON object {"ratings": {"item_id": rating, ...}, "k": 10}')
    fields: dict = {}
    for key, value in doc:
        if key not in _FIELDS:
            raise BadRequest(f"bad request: unknown field {key!r}; the body holds ratings and k")
        if key in fields:
            raise BadRequest(f"{key}: given twice in the body")
        fields[key] = value
    if "ratings" not in fields:
        raise BadRequest('ratings: missing; give {"ratings": {"item_id": rating, ...}}')
    pairs = fields["ratings"]
    if not isinstance(pairs, _Pairs):
        raise BadRequest('ratings: must be an object {"item_id": rating, ...}')
    if not pairs:
        raise BadRequest("ratings: must hold at least one item_id: rating pair")
    if len(pairs) > max_ratings:
        raise BadRequest(f"ratings: {len(pairs)} ratings, more than the limit of {max_ratings} per request")
    ratings: dict[int, float] = {}
    given: dict[int, str] = {}
    for key, value in pairs:
        if not _INT.match(key):
            raise BadRequest(f"ratings: item id {key!r} is not an integer")
        item = int(key)
        if item in given:
            raise BadRequest(f"ratings: item {item} is given twice ({given[item]!r} and {key!r})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(f"ratings: the rating of item {key} is {json.dumps(value)[:40]}, not a number")
        given[item] = key
        ratings[item] = float(value)
    k = fields.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadRequest(f"k: must be an integer in 1..{MAX_K}, not {json.dumps(k)[:40]}")
    return ratings, k


def top_k_row(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k highest scores of one row, best first, ties by ascending column: the rule and the
    answer of ``recsys_core.ranking.top_k`` (a test checks them equal), in numpy for one row. One
    ``argpartition`` and a sort of k: 0.14 ms against the torch path's 0.38 ms for 17,733 items
    (``bench/bench_serve_parts.py``, generated scores, loaded 2-core machine), the largest part of a
    request's own cost."""
    n = len(scores)
    k = min(k, n)
    if k < n:
        part = np.argpartition(scores, n - k)[n - k:]
        kth = scores[part].min()
        above = part[scores[part] > kth]
        tied = np.flatnonzero(scores == kth)[:k - len(above)]   # the cut-off's ties: lowest columns
        cols = np.concatenate([above, tied])
    else:
        cols = np.arange(n)
    return cols[np.lexsort((cols, -scores[cols]))]


def run_id(data_dir: Path, run_dir: str | Path) -> str:
    """A run folder as ``/health`` and ``/model`` show it: relative to the data dir the registry lives in
    (``runs/...``), else its own name; never an absolute path of the server's disk."""
    path = Path(run_dir)
    try:
        return path.resolve().relative_to(data_dir).as_posix()
    except (ValueError, OSError, RuntimeError):
        return path.name


@dataclass(frozen=True)
class Champion:
    name: str
    pointer: ChampionPointer
    model: ServableModel
    loaded_at: str
    load_seconds: float
    run: str = ""          # the run's id relative to the data dir (``run_id``)

    @property
    def version(self) -> int:
        return self.pointer.version

    def describe(self) -> dict:
        p, m = self.pointer, self.model
        trained_on = p.run.trained_on.to_json() if p.run.trained_on else None
        if trained_on and trained_on["stats"]:
            trained_on["stats"] = Path(trained_on["stats"]).name
        return {"model": self.name, "version": self.version, "run": self.run, "model_type": m.model_name,
                "rating_model": m.rating_model, "can_fold_in": m.can_fold_in,
                "has_item_vectors": m.has_item_vectors, "n_users": m.n_users,
                "n_items": m.n_items, "primary_metric": p.primary_metric, "metrics": p.run.metrics,
                "trained_on": trained_on, "data_key": p.run.data_key, "code_key": p.run.code_key,
                "promoted_at": p.promoted_at, "reason": p.reason, "loaded_at": self.loaded_at,
                "load_seconds": self.load_seconds}

    # --- answers ------------------------------------------------------------------------------------------
    def _items(self, cols: np.ndarray, scores: np.ndarray) -> list[dict]:
        titles = self.model.titles
        return [{"rank": rank, "item_id": int(self.model.item_ids[c]), "title": titles[c], "score": float(s)}
                for rank, (c, s) in enumerate(zip(cols.tolist(), scores.tolist()), 1)]

    def _top(self, scores: np.ndarray, k: int) -> list[dict]:
        cols = top_k_row(scores, k)
        picked = scores[cols]
        keep = picked > -np.inf  # fewer than k left when the user rated (nearly) everything
        return self._items(cols[keep], picked[keep])

    def _head(self) -> dict:
        return {"model": self.name, "version": self.version}

    def recommend_user(self, user_id: int, k: int) -> dict:
        row = self.model.row_of(user_id)
        if row < 0:
            raise NotFound(f"user {user_id} is not known to {self.name} version {self.version}; "
                           "POST their ratings to /recommendations instead")
        listed = self.model.top_list(row, k)
        if listed is not None:  # the run's own top list: a lookup (ServableModel.load_top_lists)
            return {**self._head(), "user_id": user_id, "items": self._items(*listed)}
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
        col = self.model.col_of(item_id)
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


def load_champion(registry: Registry, name: str, pointer: ChampionPointer, device: str = "cpu",
                  in_child: bool = True) -> Champion:
    """Load the run a pointer names, completely: weights checked against the pointer, item vectors
    computed, one scoring pass run (so the first request pays no lazy start-up). ``in_child``: a model
    with ``LinearScores`` is loaded by a child process (``ServableModel.for_serving``)."""
    started = time.perf_counter()
    data_dir = registry.root.resolve().parent
    run_dir = Path(pointer.run_dir)
    run = run_id(data_dir, run_dir)
    model_file = run_dir / "model.pt"
    if not model_file.is_file():
        raise RecsysError(f"{run}/model.pt (version {pointer.version} of {name}) does not exist")
    expected = pointer.run.model_sha256
    if expected and file_sha256(model_file) != expected:
        raise RecsysError(f"{run}/model.pt changed since version {pointer.version} of {name} was promoted")
    model = ServableModel.for_serving(run_dir, device, in_child)
    model.prepare_fast_scoring()
    model.load_top_lists()
    if model.has_item_vectors:
        model.item_vectors()
    if model.n_users:
        model.score_rows([0])
    return Champion(name, pointer, model, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    round(time.perf_counter() - started, 3), run)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ChampionHolder:
    """Holds the champion of one registry model and swaps it when the pointer changes.

    ``poll`` (the watcher's step) never raises; ``reload`` (``POST /reload``) raises RecsysError when the
    pointer cannot be read or its run cannot be loaded. Either way the failure is kept in ``last_error``
    and the old champion keeps serving."""

    registry: Registry
    name: str
    device: str = "cpu"
    watch_interval: float = 2.0
    in_child: bool = True             # load models with LinearScores in a child process (load_champion)
    current: Champion | None = None
    last_error: str | None = None
    last_check: str | None = None
    reload_errors: int = 0            # failed loads since start (the metrics' counter)
    failures: int = 0                 # consecutive failed loads (the backoff's exponent)
    retry_at: float = 0.0             # monotonic time of the next retry while failing
    _signature: tuple | None = None
    _logged_error: str | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        check_name(self.name)  # an invalid name (``../demo``) is refused at start, not served as 503s
        self.data_dir = self.registry.root.resolve().parent

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
        except OSError as err:  # unreadable folder: a signature of its own, so a repair is noticed
            return ("error", err.errno)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        """Cheap check (one stat) whether the pointer file was replaced since the last reload."""
        return self._pointer_signature() != self._signature

    def due(self) -> bool:
        """Whether the watcher should reload now: the pointer changed, or a failed load's backoff is over."""
        return self.changed() or (self.last_error is not None and time.monotonic() >= self.retry_at)

    def poll(self) -> dict | None:
        """The watcher's step: reload when due; never raises (a failure is in ``last_error``)."""
        try:
            if not self.due():
                return None
            return self.reload()
        except Exception as err:  # the watcher must outlive anything a bad pointer or run can raise
            if not isinstance(err, RecsysError):  # reload turns what it expects into RecsysError
                self._failed(f"unexpected error reloading {self.name}: {type(err).__name__}: {err}",
                             self._signature, exc_info=True)
            return None

    def _failed(self, message: str, signature, exc_info: bool = False) -> None:
        """Record a failed reload: the error, the backoff, one log line per distinct error."""
        self.last_error = message
        self.reload_errors += 1
        self.failures += 1
        self._signature = signature
        delay = min(max(self.watch_interval, 0.5) * 2 ** (self.failures - 1), MAX_BACKOFF_S)
        self.retry_at = time.monotonic() + delay
        if message != self._logged_error:
            log.error("%s (retrying with backoff, now every %.0f s, and at once when the pointer changes)",
                      message, delay, exc_info=exc_info)
            self._logged_error = message

    def _recovered(self, signature) -> None:
        if self._logged_error is not None:
            log.info("%s: the pointer is readable and served again", self.name)
        self._signature = signature
        self.last_error = self._logged_error = None
        self.failures = 0

    def reload(self) -> dict:
        """Read the pointer; when it names another version or run than the one served, load it fully and
        swap. Blocking (run it off the event loop); one reload at a time. Returns what happened."""
        with self._reload_lock:
            self.last_check = _now()
            signature = self._pointer_signature()
            old = self.current
            still = f"still serving version {old.version}" if old else "serving nothing"
            try:
                pointer = self.registry.champion(self.name)   # validated: an object with a version and run_dir
            except Exception as err:
                detail = str(err) if isinstance(err, RecsysError) else f"{type(err).__name__}: {err}"
                self._failed(f"cannot read the champion pointer of {self.name}: {self._public(detail)}; {still}",
                             signature)
                raise RecsysError(self.last_error) from None
            if pointer is None:
                self._recovered(signature)
                return {"changed": False, "version": old.version if old else None,
                        "detail": f"{self.name} has no champion pointer"}
            same = old is not None and (old.version, old.pointer.run_dir, old.pointer.run.model_sha256) == (
                pointer.version, pointer.run_dir, pointer.run.model_sha256)
            if old is not None and same:
                self._recovered(signature)
                return {"changed": False, "version": old.version}
            try:
                champion = load_champion(self.registry, self.name, pointer, self.device, self.in_child)
            except Exception as err:  # a broken run: keep serving the old champion, say why
                detail = str(err) if isinstance(err, RecsysError) else f"{type(err).__name__}: {err}"
                self._failed(f"cannot load version {pointer.version} of {self.name}: {self._public(detail)}; "
                             f"{still}", signature)
                raise RecsysError(self.last_error) from None
            self.current = champion  # the swap: one reference assignment
            self._recovered(signature)
            # Park what is loaded outside the cyclic GC: a full collection walks every tracked object
            # (~230K with the full-scale N3M autoencoder loaded: 0.1-0.8 s with the GIL held), and requests
            # allocate enough to trigger one now and then. The collection here walks only what was made
            # since the last freeze. A champion holds no reference cycle (a test checks it), so the old
            # one, frozen or not, is freed by reference counting when its last request drops it.
            gc.collect()
            gc.freeze()
            log.info("serving %s version %s (%s) loaded in %.2f s", self.name, champion.version,
                     champion.run, champion.load_seconds)
            return {"changed": True, "version": champion.version,
                    "previous_version": old.version if old else None, "load_seconds": champion.load_seconds}

    def _public(self, text: str) -> str:
        """An error as clients see it: paths under the data dir relative to it."""
        return text.replace(f"{self.data_dir}{os.sep}", "")

    @property
    def status(self) -> str:
        if self.current is None:
            return "no champion"
        return "ok" if self.last_error is None else "degraded"

    def health(self) -> dict:
        champion = self.current
        return {"status": self.status, "model": self.name,
                "version": champion.version if champion else None,
                "run": champion.run if champion else None,
                "last_reload_error": self.last_error, "last_check": self.last_check}
