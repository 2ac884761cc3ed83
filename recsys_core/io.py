"""Atomic file and folder writes: a reader never sees a half-written artifact.

Everything is written under a temporary name in the destination's own folder (same filesystem, so
the final ``os.replace`` is atomic) and renamed into place only when complete. On any error the
temporary is removed and whatever was at the destination before stays untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator


def _temp_sibling(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces the folder ``dest`` as a whole.

    The old folder (if any) is first moved aside and deleted only after the new one is in place,
    so an interruption leaves either the old or the new complete folder at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dest)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if dest.exists():
            old = _temp_sibling(dest)
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(dest: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
