"""Library logs into Prefect runs, and user errors as one sentence on the terminal."""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

from recsys_core.errors import RecsysError

LIBRARY_LOGGER = "recsys_core"


def _inside_a_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _RunsOnly(logging.Filter):
    """Library calls outside any flow (the CLI, tests, notebooks) log to the console only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _inside_a_run()


def forward_library_logs(level: int = logging.INFO) -> None:
    """Send the ``recsys_core`` logger's records to the Prefect run they happen in (and the console).

    Prefect's API handler attaches each record to the current flow or task run; the console handler of
    the root logger prints it. Idempotent.
    """
    library = logging.getLogger(LIBRARY_LOGGER)
    library.setLevel(level)
    if not any(isinstance(h, APILogHandler) for h in library.handlers):
        handler = APILogHandler()
        handler.addFilter(_RunsOnly())
        library.addHandler(handler)


class _DropUserErrorTraceback(logging.Filter):
    """A RecsysError is the user's to fix: show its sentence, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RecsysError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_error_tracebacks() -> None:
    """Strip tracebacks of RecsysError from the terminal's log lines (the API keeps them)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _DropUserErrorTraceback) for f in handler.filters
        ):
            handler.addFilter(_DropUserErrorTraceback())
