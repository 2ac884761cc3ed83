"""Scheduled runs on a fresh install: no raw data yet is a state to show, not a failure.

The weekly-retrain deployment is active from the first deploy; before anyone has put the Netflix Prize
files in place, its runs would fail every week. A run created by a schedule whose source is missing (or an
empty folder, as a bind mount of a folder not yet filled is) ends Completed, named ``Skipped``, with a
message saying what to put where. A run someone started by hand still fails with the usual one-sentence error.
"""

from __future__ import annotations

from pathlib import Path

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.states import Completed

SKIPPED = "Skipped"


def no_data_yet(source: Path) -> bool:
    return not source.exists() or (source.is_dir() and not any(source.iterdir()))


def created_by_schedule() -> bool:
    """Whether the current flow run was created by a deployment's schedule (not by a person or a script)."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.auto_scheduled)


def waiting_for(source: Path) -> str:
    return (f"No raw data yet at {source}: put the Netflix Prize data there (a folder holding training_set/ "
            "and movie_titles.txt; with docker compose, in the host folder RAW_DATA_DIR of .env, mounted "
            "read-only at /app/data/raw/netflix) or give the deployment another source. "
            "Skipped; the next scheduled run looks again.")


def skip_without_data(source: Path):
    """A ``Skipped`` (Completed) state for a scheduled run whose source is not there yet, else None."""
    if not (no_data_yet(source) and created_by_schedule()):
        return None
    message = waiting_for(source)
    get_run_logger().warning(message)
    return Completed(name=SKIPPED, message=message)
