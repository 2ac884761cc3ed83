"""Errors the user sees as one sentence (the CLI and the flows print ``str(err)``, never a traceback)."""

from __future__ import annotations

from pathlib import Path


class RecsysError(Exception):
    """Any error caused by the user's input or environment, worded as one clear sentence."""


class InputError(RecsysError):
    """Bad input data: names the file, the line (1-based, when there is one) and what was wrong."""

    def __init__(self, path: str | Path, what: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.what = what
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {what}")
