"""Optional MLflow tracking of the pipeline's training runs (``recsys_core.tracking`` as a Prefect task).

On when the flow's ``mlflow_tracking_uri`` parameter or the MLFLOW_TRACKING_URI variable is set. After each
stage-4 run (built, reused or Cached) the flow calls ``track_task``: one MLflow run per run folder, in one
experiment per data set and split (``<source>/<split>``, e.g. ``netflix/N3M``, ``sample/N3M``,
``ml-1m/leave-one-out``), tagged with the run folder's content key, so a cached run, a rerun or a second data
dir with the same content logs nothing twice, and turning tracking on later logs the runs made before.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys_core.tracking import log_run

log = logging.getLogger("recsys_core.flow")

_KEYED = re.compile(r"^(?P<name>.+)-[0-9a-f]{10}$")  # "<name>-<short content key>" folders (artifacts.layout)


def tracking_uri(parameter: str | None) -> str | None:
    """The tracking URI in force: the flow parameter, else MLFLOW_TRACKING_URI, else None (tracking off)."""
    return parameter or os.environ.get("MLFLOW_TRACKING_URI") or None


def experiment_name(run_dir: Path) -> str:
    """``<source>/<split>`` from ``runs/<source>-<key>/<protocol>-<key>/<split>/<model>-<key>``."""
    split = run_dir.parent.name
    source = run_dir.parent.parent.parent.name
    match = _KEYED.match(source)
    return f"{match.group('name') if match else source}/{split}"


@task(name="track", cache_policy=NO_CACHE, task_run_name="track {label}")
def track_task(run_dir: str, key: str, uri: str, label: str) -> str:
    """Log one finished run folder to MLflow unless its key is logged already; returns the MLflow run id."""
    path = Path(run_dir)
    data_key = _KEYED.match(path.parent.parent.parent.name)
    tags = {"recsys.data": path.parent.parent.parent.name, "recsys.protocol": path.parent.parent.name,
            **({"recsys.data_key": data_key.group(0)[-10:]} if data_key else {})}
    run_id, new = log_run(path, experiment_name(path), key=key, tracking_uri=uri, run_name=label, tags=tags)
    log.info("MLflow: %s run %s of %s (%s)", "logged" if new else "already has", run_id, label, uri)
    return run_id
