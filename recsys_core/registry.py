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
import os
import re
import time
from pathlib import Path
from typing import Iterator

from recsys_core.artifacts.hashing import file_sha256
from recsys_core.artifacts.locks import file_lock
from recsys_core.errors import RecsysError
from recsys_core.io import read_json, write_json
from recsys_core.records import ChampionPointer, HistoryEntry, PromotionSummary, RunFacts, TrainedOn
from recsys_core.runs import RunFolder

POINTER = "champion.json"
HISTORY = "history.jsonl"
LOCK = ".lock"
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


def verify_run(run_dir: str | Path, split_stats: str | Path | None = None) -> RunFacts:
    """Check a run folder is complete; returns what a registry entry records about it.

    Raises RecsysError (one sentence naming the file) when a required file is missing or a file listed in
    the run's manifest changed size or content.
    """
    run = RunFolder(Path(run_dir).resolve())
    manifest = run.verify()
    config, metrics = run.config(), run.metrics()
    made_from = manifest.made_from if manifest is not None else {}
    split_dir = config.split_dir
    return RunFacts(
        run_dir=str(run.path), model=config.model, split_dir=split_dir, model_sha256=file_sha256(run.model_file),
        metrics={part: values for part, values in (("valid", metrics.valid), ("test", metrics.test))
                 if values is not None},
        # content keys: the flow's manifest names what the run was made from; a run trained by hand has
        # no manifest, so its data key is hashed from its split folder and its code key is unknown
        data_key=(made_from.get("inputs") or {}).get("matrices") or _split_key(split_dir),
        code_key=(made_from.get("code") or {}).get("source_sha256"),
        trained_on=trained_on(split_stats) or trained_on(split_dir))


def _split_key(split_dir: str | None) -> str | None:
    if not split_dir or not Path(split_dir).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(split_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\0")
    return digest.hexdigest()


def trained_on(split_dir: str | Path | None) -> TrainedOn | None:
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
    return TrainedOn(train.get("first_date"), train.get("last_date"), train.get("ratings"), str(path))


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
    def champion(self, name: str) -> ChampionPointer | None:
        """The current pointer, or None when the model has no champion (yet). A pointer that cannot be read or
        is not a champion pointer raises RecsysError (``rollback`` and ``promote`` rebuild it from history)."""
        path = self.folder(name) / POINTER
        fix = "`registry rollback` or `registry promote` rebuilds it from history.jsonl"
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise RecsysError(f"{path}: not valid JSON; {fix}") from None
        except OSError as err:
            raise RecsysError(f"{path}: cannot be read ({err.strerror or err}); {fix}") from None
        try:
            return ChampionPointer.from_json(obj)
        except ValueError as problem:
            raise RecsysError(f"{path}: not a champion pointer ({problem}); {fix}") from None

    def history(self, name: str) -> list[HistoryEntry]:
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
                    events.append(HistoryEntry.from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError, AttributeError):
                    raise RecsysError(f"{path}, line {number}: not a JSON object; the history is damaged") from None
        return events

    def chain(self, name: str) -> list[int]:
        """Versions the champion passed through, oldest first, rollbacks undone (the last is current)."""
        chain: list[int] = []
        for event in self.history(name):
            if event.event == "promoted" and event.version is not None:
                chain.append(event.version)
            elif event.event == "rolled_back" and event.version is not None:
                to = event.version
                chain = chain[:chain.index(to) + 1] if to in chain else chain + [to]
        return chain

    def rebuilt_pointer(self, name: str) -> HistoryEntry | None:
        """The history entry history.jsonl's pointer comes from (its last promotion or rollback), or None."""
        last = None
        for event in self.history(name):
            if event.moves_the_champion:
                last = event
        return last

    def repair(self, name: str) -> ChampionPointer | None:
        """The current pointer; a missing-but-recorded, unreadable or invalid ``champion.json`` is first
        rewritten from history.jsonl (and the rebuild recorded there). None when there was never a champion."""
        with self.lock(name):
            return self._current(name)

    def _current(self, name: str) -> ChampionPointer | None:
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
        event = HistoryEntry(
            time=now_utc(), event="pointer_rebuilt", version=last.version, run=last.run, by="registry",
            primary_metric=last.primary_metric,
            reason=f"{POINTER} was {'missing' if error == 'missing' else 'damaged'}; rebuilt from the "
                   f"history's last {last.event} event (version {last.version})")
        self._append(name, event)
        self._point(name, event, promoted_at=last.time)
        return self.champion(name)

    def entry(self, name: str, version: int) -> HistoryEntry:
        for event in self.history(name):
            if event.event == "promoted" and event.version == version:
                return event
        raise RecsysError(f"registry model {name!r} has no version {version}; see `registry show {name}`")

    # --- writing (under the lock) -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Exclusive writer lock of one model (released by the kernel if the holder dies)."""
        with file_lock(self.folder(name) / LOCK, timeout, what="the registry lock"):
            yield

    def _append(self, name: str, event: HistoryEntry) -> HistoryEntry:
        """Append one history line (caller holds the lock)."""
        line = json.dumps(event.to_json(), default=str, allow_nan=False) + "\n"
        fd = os.open(self.folder(name) / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return event

    def _point(self, name: str, event: HistoryEntry, promoted_at: str | None = None) -> None:
        pointer = ChampionPointer.of(name, event, promoted_at or event.time, now_utc())
        write_json(self.folder(name) / POINTER, pointer.to_json())

    def promote(self, name: str, run_dir: str | Path, reason: str, *, by: str = "cli",
                primary_metric: str | None = None, decision: PromotionSummary | None = None,
                expected_champion: int | None | bool = False,
                split_stats: str | Path | None = None) -> HistoryEntry:
        """Make ``run_dir`` (verified first) the champion of ``name`` as a new version; returns the entry.

        ``expected_champion``: the champion version the caller's decision was taken against (None: no
        champion); when another writer changed the champion meanwhile, nothing is written and a
        RecsysError says so. False (default) promotes whatever the current champion is. ``split_stats``:
        the stage-2 split folder (or its stats.json) the run was trained on, for the training dates."""
        check_name(name)
        run = verify_run(run_dir, split_stats)
        with self.lock(name):
            versions = [e.version for e in self.history(name) if e.event == "promoted" and e.version is not None]
            current = self._current(name)
            current_version = current.version if current else None
            if expected_champion is not False and current_version != expected_champion:
                raise RecsysError(f"the champion of {name} changed to version {current_version} "
                                  f"while version {expected_champion} was being compared; run the comparison again")
            metric = primary_metric or (current.primary_metric if current else None) or _metric_of(run.metrics)
            event = HistoryEntry(time=now_utc(), event="promoted", version=max(versions, default=0) + 1, run=run,
                                 primary_metric=metric, reason=reason, by=by, previous_version=current_version,
                                 decision=decision)
            self._append(name, event)
            self._point(name, event)
        return event

    def reject(self, name: str, run_dir: str | Path, reason: str, *, by: str = "flow",
               decision: PromotionSummary | None = None, split_stats: str | Path | None = None) -> HistoryEntry:
        """Record that ``run_dir`` was compared and kept out (the champion stays)."""
        check_name(name)
        run = verify_run(run_dir, split_stats)
        with self.lock(name):
            current = self._current(name)
            event = HistoryEntry(time=now_utc(), event="rejected", version=None, run=run, reason=reason, by=by,
                                 champion_version=current.version if current else None, decision=decision)
            return self._append(name, event)

    def rollback(self, name: str, to_version: int | None = None, reason: str = "", *,
                 by: str = "cli") -> HistoryEntry:
        """Point the champion back at an earlier version (default: the one before the current)."""
        with self.lock(name):
            current = self._current(name)
            if current is None:
                raise RecsysError(f"registry model {name!r} has no champion to roll back")
            chain = self.chain(name)
            if to_version is None:
                if len(chain) < 2:
                    raise RecsysError(f"registry model {name!r} has no earlier champion than version "
                                      f"{current.version} to roll back to")
                to_version = chain[-2]
            if to_version == current.version:
                raise RecsysError(f"version {to_version} of {name!r} is already the champion")
            target = self.entry(name, to_version)
            run = verify_run(target.run_dir)
            if run.model_sha256 != target.run.model_sha256:
                raise RecsysError(f"{target.run_dir}/model.pt changed since version {to_version} was promoted; "
                                  "cannot roll back to it")
            event = HistoryEntry(time=now_utc(), event="rolled_back", version=to_version, run=target.run,
                                 primary_metric=target.primary_metric, from_version=current.version, by=by,
                                 reason=reason or f"rolled back from version {current.version}")
            self._append(name, event)
            self._point(name, event)
        return event


def _metric_of(metrics) -> str | None:
    """The primary metric a run's own metrics suggest: RMSE when it predicts ratings, else Recall@K."""
    test = metrics.get("test") or {}
    if "rmse" in test:
        return "rmse"
    return next((name for name in test if name.startswith("recall@")), None)


def default_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / "registry"
