"""Build one stage's output unless it is already complete: verify, lock, build, manifest last.

``build_stage(spec, memo, make)`` is the whole protocol, with or without an orchestrator: under the stage's
lock (an ``flock`` on ``.<folder>.lock`` beside the output, so concurrent runs of one stage wait for each other
and then reuse) it verifies the output against its manifest; a complete output is reused, anything else is
removed (the manifest first) and ``make(out_dir)`` builds it, then every output file is hashed into the
manifest. The Prefect tasks (tasks/stages.py) call it with their cache record's name; a script calls it alone.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from recsys_core.artifacts.hashing import HashMemo
from recsys_core.artifacts.locks import file_lock
from recsys_core.artifacts.manifest import (
    StageSpec,
    invalidate,
    read_manifest,
    record_cache_key,
    verify,
    write_manifest,
)
from recsys_core.records import StageResult

log = logging.getLogger("recsys_core.cache")

# Name pattern of the temporaries of recsys_core.io (".<name>.tmp-<pid>-<hex>").
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
BUILT, REUSED = "built", "reused"


def stage_lock(spec: StageSpec) -> contextlib.AbstractContextManager:
    """The lock every writer of ``spec``'s output holds (a file beside the output folder)."""
    return file_lock(spec.path.parent / f".{spec.path.name}.lock")


def remove_temporaries(spec: StageSpec) -> list[Path]:
    """Delete temporaries (``.<name>.tmp-<pid>-<hex>``) of this output left by a killed run.

    Called only while holding the stage lock: every writer of this output holds it too, so any
    temporary present belongs to a writer that died.
    """
    removed = []
    candidates = list(spec.path.parent.glob(f".{spec.path.name}.tmp-*"))
    if spec.path.is_dir():
        candidates += [p for p in spec.path.rglob(".*.tmp-*")]
    for entry in candidates:
        if not _TEMP_RE.match(entry.name):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def build_stage(spec: StageSpec, memo: HashMemo, make: Callable[[Path], Any], keep_partial: bool = False,
                cache_key: str | None = None) -> StageResult:
    """Make ``spec``'s output complete: reuse it when it verifies, else build it with ``make(out_dir)``.

    Returns a ``StageResult`` (a reused output reports the seconds of its build). ``keep_partial``: leave an
    unverified folder in place for ``make`` (training resumes from its checkpoint); otherwise it is removed
    first so no stale file can slip into the manifest.
    ``cache_key``: the orchestrator's record of this run, written into the manifest (see ``write_manifest``).
    The memo is saved after a build.
    """
    with stage_lock(spec):
        if verify(spec, memo) is None:
            log.info("%s: reusing %s (complete: built by a concurrent or an earlier run)", spec.stage, spec.out_dir)
            if cache_key:  # name this run's record, so the next run is reported cached
                record_cache_key(spec, cache_key)
            manifest = read_manifest(spec)
            return StageResult(spec.stage, spec.key, REUSED, manifest.elapsed_s if manifest is not None else None)
        invalidate(spec)
        remove_temporaries(spec)
        if not keep_partial and spec.path.exists():
            shutil.rmtree(spec.path)
        log.info("%s: building %s", spec.stage, spec.out_dir)
        started = time.perf_counter()
        result = make(spec.path)
        elapsed = time.perf_counter() - started
        write_manifest(spec, memo, elapsed, result=_jsonable(result), cache_key=cache_key)
        memo.save()
        log.info("%s: done in %.1f s", spec.stage, elapsed)
        return StageResult(spec.stage, spec.key, BUILT, round(elapsed, 3))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)
