"""Atomic file and folder writes: a reader never sees a half-written artifact.

Everything is written under a temporary name in the destination's own folder (same filesystem, so
the final rename is atomic) and renamed into place only when complete. On any error the temporary is
removed and whatever was at the destination before stays untouched.

A folder replaces an existing one in ONE step where the system allows it (Linux ``renameat2`` with
``RENAME_EXCHANGE``: the old and the new folder trade places); elsewhere the old folder is first moved
aside under ``.<name>.old-<pid>-<hex>``, and a writer killed between the two renames leaves it there, to be
moved back by the next writer of that destination.

Leftovers of killed writers: every writer holds an exclusive ``flock`` (``recsys_core.artifacts.locks``) on
its temporary (and on a folder it moves aside) for as long as it works on it; the kernel drops the lock when
the process dies, however it dies. Each ``atomic_file`` / ``atomic_dir`` first removes the temporaries of
its destination whose lock is free and whose writer's pid no longer runs here (both: the pid guards the
instant between creating a temporary and locking it, the lock guards a reused pid and a writer on another
host sharing the folder), so a ``kill -9`` costs disk space only until the next run, never a live writer's
work. On a filesystem without ``flock`` (some NFS mounts) nothing is removed: a writer on another host could
not be told from a dead one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from recsys_core.artifacts import locks

_TEMP = "tmp"    # a writer's temporary (recsys_core/artifacts/build.py knows this name too)
_ASIDE = "old"   # the previous folder moved aside while its replacement is renamed in
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _sibling(dest: Path, kind: str = _TEMP) -> Path:
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")



# ------------------------------------------------------------------------------------------------
# Liveness of a writer: its lock (locks.try_lock), and its pid.


def _pid_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, under another user
        return True
    except OSError:
        return True
    return True


def _is_dead_leftover(path: Path, pid: int) -> tuple[bool, int | None]:
    """(True, fd holding its lock) when the writer of ``path`` is gone; (False, None) otherwise."""
    if _pid_runs(pid):
        return False, None
    if not locks.SUPPORTED:  # no locks here: the pid alone decides
        return True, None
    # Not lockable: a live writer holds it (on another host sharing the folder, or a pid we cannot see), it is
    # gone, or this filesystem has no such locks (some NFS mounts), so a writer on another host cannot be told
    # from a dead one: leave it.
    fd = locks.try_lock(path)
    return (fd is not None), fd


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(dest: str | Path) -> list[Path]:
    """Remove the temporaries that dead writers left beside ``dest``; move back a folder that a dead
    writer had moved aside when ``dest`` is missing (it was killed between its two renames).
    Returns what was removed or restored. Temporaries of live writers are never touched."""
    dest = Path(dest)
    try:
        entries = os.listdir(dest.parent)
    except FileNotFoundError:
        return []
    prefix = f".{dest.name}."
    touched = []
    # moved-aside folders first: one of them may have to become dest again
    candidates = sorted((entry for entry in entries if entry.startswith(prefix)),
                        key=lambda entry: ".old-" not in entry)
    for entry in candidates:
        match = _LEFTOVER.match(entry)
        if match is None or match.group("name") != dest.name:
            continue
        path = dest.parent / entry
        dead, fd = _is_dead_leftover(path, int(match.group("pid")))
        if not dead:
            continue
        try:
            if match.group("kind") == _ASIDE and not os.path.lexists(dest):
                os.rename(path, dest)
            else:
                _remove(path)
            touched.append(path)
        finally:
            locks.unlock(fd)
    return touched


# ------------------------------------------------------------------------------------------------
# Swapping a folder into place.


def _load_renameat2():
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl: no wrapper
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (both must exist); False where the system or the
    filesystem cannot (the caller then falls back to two renames)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Put the complete folder ``tmp`` at ``dest``, replacing what is there; at no moment is ``dest``
    missing (with RENAME_EXCHANGE), or a moved-aside copy is there to be restored (without)."""
    if not os.path.lexists(dest):
        try:
            os.rename(tmp, dest)
            return
        except OSError as err:  # another writer put its folder there in the meantime: swap with it
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(tmp, dest):
        _remove(tmp)  # now the old folder; if we die here it is a dead writer's temporary
        return
    aside = _sibling(dest, _ASIDE)
    lock = locks.try_lock(dest)
    try:
        os.replace(dest, aside)
        os.replace(tmp, dest)
    finally:
        locks.unlock(lock)
    _remove(aside)


# ------------------------------------------------------------------------------------------------
# The public writers.


@contextlib.contextmanager
def atomic_file(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write (an empty file already exists there); on success it replaces ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest)
    tmp = _sibling(dest)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    lock = locks.try_lock(tmp)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        locks.unlock(lock)
        if os.path.lexists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces the folder ``dest`` as a whole.

    The swap is one ``renameat2(RENAME_EXCHANGE)`` on Linux, so a reader or a kill at any moment
    finds either the old or the new complete folder at ``dest``. Elsewhere the old folder is moved
    aside first and deleted after the new one is in place; a kill in between leaves it aside, and the
    next ``atomic_dir`` / ``atomic_file`` of ``dest`` (or ``clean_leftovers``) moves it back.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest)
    tmp = _sibling(dest)
    tmp.mkdir()
    lock = locks.try_lock(tmp)
    try:
        yield tmp
        _swap_into_place(tmp, dest)
    finally:
        locks.unlock(lock)
        if os.path.lexists(tmp):
            _remove(tmp)


def write_json(dest: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
