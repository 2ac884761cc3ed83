"""Shared helpers of the flow tests: a temporary Prefect home + API, tiny pipeline parameters, checks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Small enough for a run of every stage in seconds on 2 cores, big enough for every split to be non-empty.
TINY = dict(sample_scale=0.002, model_options={"autoencoder": {"epochs": 3, "patience": 0}})


def model_options(models=("autoencoder",), **options) -> dict:
    """The flow parameter giving every model in ``models`` the same ``options``."""
    return {"model_options": {model: dict(options) for model in models}}


@contextlib.contextmanager
def prefect_sandbox(home: Path) -> Iterator[str]:
    """A throw-away PREFECT_HOME (results, cache records) and a local test API; yields the API URL.

    Flow-run heartbeats are off, as in a local ``python flows/full.py`` run (see ``local_run_settings``).
    """
    os.environ["RECSYS_PROGRESS"] = "0"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    settings = {PREFECT_HOME: str(home), PREFECT_LOCAL_STORAGE_PATH: str(home / "storage"),
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with temporary_settings(settings):
        # a hang guard, not a measurement: at a load of ~30 on 2 cores the test API took over 180 s to answer
        # (the flow's own temporary API waits up to 600 s too)
        with prefect_test_harness(server_startup_timeout=600):
            yield PREFECT_API_URL.value()


@pytest.fixture(scope="session", name="sandbox")
def sandbox_fixture(tmp_path_factory):
    """The ``sandbox`` fixture of flow tests (import ``sandbox_fixture``): a temporary Prefect home and test
    API, {"api_url", "home"}."""
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_sandbox(home) as api_url:
        yield {"api_url": api_url, "home": home}


def subprocess_env(api_url: str, home: Path) -> dict:
    """Environment of a pipeline run in another process, talking to the same test API."""
    env = dict(os.environ)
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
               RECSYS_PROGRESS="0", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def cli_args(params: dict) -> list[str]:
    """``--name value`` options of flows/full.py for flow parameters (objects as JSON)."""
    args = []
    for name, value in params.items():
        args.append("--" + name.replace("_", "-"))
        if isinstance(value, list):
            args.extend(str(v) for v in value)
        else:
            args.append(json.dumps(value) if isinstance(value, dict) else str(value))
    return args


def start_cli(params: dict, env: dict, report: Path, driver: Path | None = None, **popen) -> subprocess.Popen:
    """``python flows/full.py`` (or a driver script wrapping its main) in a new process group."""
    script = driver or ROOT / "flows" / "full.py"
    return subprocess.Popen([sys.executable, str(script), *cli_args(params), "--report-json", str(report)],
                            cwd=ROOT, env=env, start_new_session=True, **popen)


def statuses(report: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in report["stages"]}


def all_manifests_verify(data_dir: Path) -> list[Path]:
    """Every stage folder under data_dir with a manifest; asserts each verifies. Returns them."""
    from recsys_core.artifacts.hashing import HashMemo
    from recsys_core.artifacts.manifest import verify_tree

    checks = verify_tree(data_dir, HashMemo(None))
    assert [c for c in checks if not c.ok] == []
    return [c.folder for c in checks]
