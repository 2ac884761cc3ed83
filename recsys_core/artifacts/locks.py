"""File locks, implemented once (``flock``): the kernel drops a lock when its holder dies, however it dies
(SIGKILL included), so a lock never outlives a crashed writer.

Two uses:

* ``file_lock(path)``: an exclusive lock on a lock file for the length of a ``with`` block; writers of one
  stage output, of the file-hash memo and of one registry model hold it. It waits for the holder (forever, or
  ``timeout`` seconds and then one sentence saying who holds what).
* ``try_lock(path)``: an exclusive lock taken at once or not at all on an existing file or folder; a writer
  holds it on its own temporary as long as it works on it, and a temporary whose lock can be taken belongs
  to a writer that died (``recsys_core.io``).

On a system without ``flock`` (not POSIX) ``SUPPORTED`` is False: ``try_lock`` never locks (a writer is then
judged alive by its pid alone) and ``file_lock`` refuses with one sentence.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from recsys_core.errors import RecsysError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

SUPPORTED = fcntl is not None
POLL_S = 0.05  # how often a lock with a timeout is tried again


class LockTimeout(RecsysError):
    """Another writer held the lock longer than the caller was willing to wait."""


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float | None = None, what: str = "the lock") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created with its folder) for the ``with`` block.

    ``timeout``: None waits as long as the holder works; else seconds, then ``LockTimeout`` naming the file
    and ``what`` (e.g. "the registry lock")."""
    if fcntl is None:
        raise RecsysError(f"{path}: file locks need a POSIX system (fcntl.flock), which this one is not")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        if timeout is None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"{path}: another writer has held {what} for {timeout:.0f} s; try again "
                                          "when it is done") from None
                    time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def try_lock(path: str | Path) -> int | None:
    """Open the existing file or folder ``path`` and lock it exclusively without waiting; the open file
    descriptor (``unlock`` releases it), or None when the lock is held by someone else, ``path`` cannot be
    opened, or the system or filesystem has no such locks (some NFS mounts)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int | None) -> None:
    """Release a lock of ``try_lock`` (None: nothing to release)."""
    if fd is not None:
        os.close(fd)
