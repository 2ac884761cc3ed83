"""The model registry: named models, each with a champion pointer and an append-only history.

Layout (under the data dir the flow and the service share, by default ``<data_dir>/registry``)::

    registry/<name>/champion.json   the pointer: which run folder serves, as what version, with what metrics
    registry/<name>/history.jsonl   one JSON object per line, appended, never rewritten: every promotion,
                                    rejection and rollback (when, which run, its metrics, the data's and
                                    the code's content keys, why)
    registry/<name>/.lock           writers hold an exclusive flock on it

A reader never sees a half-written pointer: ``champion.json`` is written under a temporary name and
renamed over the old one (``os.replace``, atomic on one filesystem). History lines are appended with one
``write`` under the writers' lock; a reader skips a last line that has no newline yet. Only writers lock.

A pointer names a *verified* run folder: it holds ``model.pt``, ``config.json`` and ``metrics.json`` and,
when the flow built it, every file its ``manifest.json`` lists still has the recorded size and sha256. The
pointer records ``model.pt``'s sha256, so the service refuses weights that changed after promotion.

Versions count promotions (1, 2, ...); a rollback moves the pointer back to an earlier version without
creating one. The champion chain (the versions a rollback walks back through) is replayed from history.
The history alone determines the champion (its last promotion or rollback): a writer that finds
``champion.json`` missing, unreadable or not a pointer rewrites it from there and records a
``pointer_rebuilt`` event, so a damaged pointer never needs a hand edit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Iterator

from recsys_core.artifacts.hashing import HashMemo, file_sha256
from recsys_core.artifacts.locks import file_lock
from recsys_core.artifacts.manifest import MANIFEST_NAME, changed_file, load_manifest
from recsys_core.errors import RecsysError
from recsys_core.io import read_json, write_json

POINTER = "champion.json"
HISTORY = "history.jsonl"
LOCK = ".lock"
RUN_FILES = ("model.pt", "config.json", "metrics.json")
LOCK_TIMEOUT_S = 600.0
# \A...\Z, not ^...$: "$" also matches before a final newline, which let "name\n" through as a folder name
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RecsysError(f"registry model name {name!r} must be 1-100 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit), e.g. netflix-N3M")
    return name


# --------------------------------------------------------------------------- run folders


def verify_run(run_dir: str | Path, split_stats: str | Path | None = None) -> dict:
    """Check a run folder is complete; returns what a registry entry records about it.

    Raises RecsysError (one sentence naming the file) when a required file is missing or a file listed in
    the run's manifest changed size or content.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise RecsysError(f"{run_dir}: no such run folder")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise RecsysError(f"{run_dir} is not a finished run folder (missing {', '.join(missing)}); train it first")
    try:
        manifest = load_manifest(run_dir)
    except ValueError as err:
        raise RecsysError(f"{run_dir / MANIFEST_NAME}: {err}; the run folder is damaged") from None
    if manifest is not None:
        changed = changed_file(run_dir, manifest.files, HashMemo(None))
        if changed is not None:
            path, what = run_dir / changed[0], changed[1]
            if what == "is missing":
                raise RecsysError(f"{path}: listed in the run's manifest but missing; the run folder is damaged")
            raise RecsysError(f"{path}: changed since the run's manifest was written; the run folder is damaged")
    config = read_json(run_dir / "config.json")
    metrics = read_json(run_dir / "metrics.json")
    made_from = manifest.made_from if manifest is not None else {}
    split_dir = config.get("split_dir")
    return {
        "run_dir": str(run_dir),
        "model": config.get("model"),
        "split_dir": split_dir,
        "model_sha256": file_sha256(run_dir / "model.pt"),
        "metrics": {part: metrics.get(part) for part in ("valid", "test") if metrics.get(part) is not None},
        # content keys: the flow's manifest names what the run was made from; a run trained by hand has
        # no manifest, so its data key is hashed from its split folder and its code key is unknown
        "data_key": (made_from.get("inputs") or {}).get("matrices") or _split_key(split_dir),
        "code_key": (made_from.get("code") or {}).get("source_sha256"),
        "trained_on": trained_on(split_stats) or trained_on(split_dir),
    }


def _split_key(split_dir: str | None) -> str | None:
    if not split_dir or not Path(split_dir).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(split_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\0")
    return digest.hexdigest()


def trained_on(split_dir: str | Path | None) -> dict | None:
    """First and last date of the training ratings, from a split's ``stats.json`` (``split_dir`` is a split
    folder of stage 2, or a matrices folder holding a copy; None when there is none)."""
    if not split_dir:
        return None
    path = Path(split_dir)
    path = path if path.name == "stats.json" else path / "stats.json"
    try:
        train = read_json(path).get("train") or {}
    except (OSError, ValueError):
        return None
    return {"first_date": train.get("first_date"), "last_date": train.get("last_date"),
            "ratings": train.get("ratings"), "stats": str(path)}


# --------------------------------------------------------------------------- the registry


class Registry:
    """Named models under ``root``; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, name: str) -> Path:
        return self.root / check_name(name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _NAME.match(p.name) and ((p / HISTORY).exists() or (p / POINTER).exists()))

    # --- reading (no lock) ----------------------------------------------------------------------------
    def champion(self, name: str) -> dict | None:
        """The current pointer, or None when the model has no champion (yet). A pointer that cannot be read or
        is not a champion pointer raises RecsysError (``rollback`` and ``promote`` rebuild it from history)."""
        path = self.folder(name) / POINTER
        fix = "`registry rollback` or `registry promote` rebuilds it from history.jsonl"
        try:
            pointer = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise RecsysError(f"{path}: not valid JSON; {fix}") from None
        except OSError as err:
            raise RecsysError(f"{path}: cannot be read ({err.strerror or err}); {fix}") from None
        problem = _pointer_problem(pointer)
        if problem:
            raise RecsysError(f"{path}: not a champion pointer ({problem}); {fix}")
        return pointer
    def history(self, name: str) -> list[dict]:
        path = self.folder(name) / HISTORY
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        complete = lines[:-1]  # the text after the last newline is empty or a line still being written
        events = []
        for number, line in enumerate(complete, 1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    raise RecsysError(f"{path}, line {number}: not a JSON object; the history is damaged") from None
        return events

    def chain(self, name: str) -> list[int]:
        """Versions the champion passed through, oldest first, rollbacks undone (the last is current)."""
        chain: list[int] = []
        for event in self.history(name):
            if event["event"] == "promoted":
                chain.append(event["version"])
            elif event["event"] == "rolled_back":
                to = event["version"]
                chain = chain[:chain.index(to) + 1] if to in chain else chain + [to]
        return chain

    def rebuilt_pointer(self, name: str) -> dict | None:
        """The pointer history.jsonl implies (its last promotion or rollback), or None when there is none."""
        last = None
        for event in self.history(name):
            if event.get("event") in ("promoted", "rolled_back"):
                last = event
        return last

    def repair(self, name: str) -> dict | None:
        """The current pointer; a missing-but-recorded, unreadable or invalid ``champion.json`` is first
        rewritten from history.jsonl (and the rebuild recorded there). None when there was never a champion."""
        with self.lock(name):
            return self._current(name)

    def _current(self, name: str) -> dict | None:
        """``champion``, rebuilt from history when the pointer is damaged or missing (caller holds the lock)."""
        try:
            pointer = self.champion(name)
            error = None if pointer is not None else "missing"
        except RecsysError as err:
            pointer, error = None, str(err)
        if error is None:
            return pointer
        last = self.rebuilt_pointer(name)
        if last is None:
            if pointer is None and error == "missing":
                return None
            raise RecsysError(f"{error}; and {self.folder(name) / HISTORY} records no champion to rebuild it from")
        event = {**last, "time": now_utc(), "event": "pointer_rebuilt", "by": "registry",
                 "reason": f"{POINTER} was {'missing' if error == 'missing' else 'damaged'}; rebuilt from the "
                           f"history's last {last['event']} event (version {last['version']})"}
        for key in ("decision", "from_version", "previous_version"):
            event.pop(key, None)
        self._append(name, _finite(event))
        self._point(name, {**event, "time": last["time"]})
        return self.champion(name)

    def entry(self, name: str, version: int) -> dict:
        for event in self.history(name):
            if event["event"] == "promoted" and event["version"] == version:
                return event
        raise RecsysError(f"registry model {name!r} has no version {version}; see `registry show {name}`")

    # --- writing (under the lock) -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Exclusive writer lock of one model (released by the kernel if the holder dies)."""
        with file_lock(self.folder(name) / LOCK, timeout, what="the registry lock"):
            yield

    def _append(self, name: str, event: dict) -> dict:
        """Append one history line (caller holds the lock)."""
        line = json.dumps(event, default=str, allow_nan=False) + "\n"
        fd = os.open(self.folder(name) / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return event

    def _point(self, name: str, event: dict) -> None:
        pointer = {key: event.get(key) for key in (
            "version", "run_dir", "model", "split_dir", "model_sha256", "primary_metric", "metrics",
            "data_key", "code_key", "trained_on", "reason")}
        pointer.update(name=name, promoted_at=event["time"], updated_at=now_utc(), event=event["event"])
        write_json(self.folder(name) / POINTER, pointer)

    def promote(self, name: str, run_dir: str | Path, reason: str, *, by: str = "cli",
                primary_metric: str | None = None, decision: dict | None = None,
                expected_champion: int | None | bool = False, split_stats: str | Path | None = None) -> dict:
        """Make ``run_dir`` (verified first) the champion of ``name`` as a new version; returns the entry.

        ``expected_champion``: the champion version the caller's decision was taken against (None: no
        champion); when another writer changed the champion meanwhile, nothing is written and a
        RecsysError says so. False (default) promotes whatever the current champion is. ``split_stats``:
        the stage-2 split folder (or its stats.json) the run was trained on, for the training dates."""
        check_name(name)
        run = verify_run(run_dir, split_stats)
        with self.lock(name):
            versions = [e["version"] for e in self.history(name) if e["event"] == "promoted"]
            current = self._current(name)
            if expected_champion is not False and (current or {}).get("version") != expected_champion:
                raise RecsysError(f"the champion of {name} changed to version {(current or {}).get('version')} "
                                  f"while version {expected_champion} was being compared; run the comparison again")
            metric = primary_metric or (current or {}).get("primary_metric") or _metric_of(run["metrics"])
            event = {"time": now_utc(), "event": "promoted", "version": max(versions, default=0) + 1, **run,
                     "primary_metric": metric, "reason": reason, "by": by,
                     "previous_version": (current or {}).get("version")}
            if decision is not None:
                event["decision"] = decision
            self._append(name, _finite(event))
            self._point(name, event)
        return event

    def reject(self, name: str, run_dir: str | Path, reason: str, *, by: str = "flow",
               decision: dict | None = None, split_stats: str | Path | None = None) -> dict:
        """Record that ``run_dir`` was compared and kept out (the champion stays)."""
        check_name(name)
        run = verify_run(run_dir, split_stats)
        with self.lock(name):
            current = self._current(name)
            event = {"time": now_utc(), "event": "rejected", "version": None, **run, "reason": reason, "by": by,
                     "champion_version": (current or {}).get("version")}
            if decision is not None:
                event["decision"] = decision
            return self._append(name, _finite(event))

    def rollback(self, name: str, to_version: int | None = None, reason: str = "", *, by: str = "cli") -> dict:
        """Point the champion back at an earlier version (default: the one before the current)."""
        with self.lock(name):
            current = self._current(name)
            if current is None:
                raise RecsysError(f"registry model {name!r} has no champion to roll back")
            chain = self.chain(name)
            if to_version is None:
                if len(chain) < 2:
                    raise RecsysError(f"registry model {name!r} has no earlier champion than version "
                                      f"{current['version']} to roll back to")
                to_version = chain[-2]
            if to_version == current["version"]:
                raise RecsysError(f"version {to_version} of {name!r} is already the champion")
            target = self.entry(name, to_version)
            run = verify_run(target["run_dir"])
            if run["model_sha256"] != target["model_sha256"]:
                raise RecsysError(f"{target['run_dir']}/model.pt changed since version {to_version} was promoted; "
                                  "cannot roll back to it")
            event = {**target, "time": now_utc(), "event": "rolled_back", "version": to_version,
                     "from_version": current["version"], "by": by,
                     "reason": reason or f"rolled back from version {current['version']}"}
            event.pop("decision", None)
            self._append(name, _finite(event))
            self._point(name, event)
        return event


def _finite(obj):
    """JSON has no NaN: null instead (history lines must stay valid JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pointer_problem(pointer) -> str | None:
    """What makes a parsed ``champion.json`` unusable, or None."""
    if not isinstance(pointer, dict):
        return f"a JSON {type(pointer).__name__}, not an object"
    version = pointer.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"version {version!r} is not a positive integer"
    if not isinstance(pointer.get("run_dir"), str) or not pointer["run_dir"]:
        return f"run_dir {pointer.get('run_dir')!r} is not a folder path"
    return None


def _metric_of(metrics: dict) -> str | None:
    """The primary metric a run's own metrics suggest: RMSE when it predicts ratings, else Recall@K."""
    test = metrics.get("test") or {}
    if "rmse" in test:
        return "rmse"
    return next((name for name in test if name.startswith("recall@")), None)


def default_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / "registry"
