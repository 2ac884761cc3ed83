"""Progress bars with ETA for long work, shared by every stage.

Bars go to stderr through rich. They are hidden when ``RECSYS_PROGRESS=0`` (tests, CI logs) and,
unless ``RECSYS_PROGRESS=1`` forces them, when stderr is not a terminal. Milestones also go to the
``recsys_core`` logger so that Prefect runs record them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("recsys_core")
T = TypeVar("T")


def bars_enabled() -> bool:
    flag = os.environ.get("RECSYS_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


class _NullBar:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, **fields) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task_id):
        self._progress = progress
        self._task = task_id

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, **fields) -> None:
        """Set extra text fields shown after the bar, e.g. ``bar.update(loss=0.91)``."""
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._progress.update(self._task, info=text)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, unit: str = "") -> Iterator[_Bar | _NullBar]:
    """A bar with ETA; ``total=None`` shows a spinner-like bar without ETA."""
    if not bars_enabled():
        yield _NullBar()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, transient=False, refresh_per_second=4) as progress:
        task_id = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task_id)


def track(iterable: Iterable[T], description: str, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(description, total, unit) as bar:
        for item in iterable:
            yield item
            bar.advance()
