"""Deployment end to end, without Docker: the commands of docker-compose.yml against a real server.

A real ``prefect server start`` (SQLite in a temporary PREFECT_HOME, a free port on 127.0.0.1, the API auth
string on as in the compose file), the compose file's ``pool`` and ``deploy`` commands (the stock
``prefect --no-prompt deploy --all`` of prefect.yaml), its ``worker``; then ``prefect deployment run`` of the
sample deployment until Completed, the everyday list/inspect commands, and a scheduled weekly-retrain run
before any raw data exists (Skipped, not Failed). Bounded: every wait has a deadline, and everything started
is stopped.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.flow_support import ROOT, all_manifests_verify

# Heavy (a real Prefect server with deployments and workers): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow


PREFECT = str(Path(sys.executable).with_name("prefect"))
COMPOSE_ORDER = ("server", "pool", "deploy", "worker")
AUTH = "e2e:secret/with@odd:chars"
DEPLOYMENTS = ("recsys-full-pipeline/sample", "recsys-full-pipeline/netflix", "recsys-full-pipeline/weekly-retrain")


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: list(services[name]["command"]) for name in COMPOSE_ORDER}


def local_command(command: list[str], port: int) -> list[str]:
    """A compose command as run here: this venv's prefect / python; the server on 127.0.0.1:<port>."""
    program = {"prefect": PREFECT, "python": sys.executable}[command[0]]
    replaced = {"0.0.0.0": "127.0.0.1", "4200": str(port)}
    return [program, *(replaced.get(arg, arg) for arg in command[1:])]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, deadline: float) -> None:
    while time.time() < deadline:
        assert server.poll() is None, "prefect server exited"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("prefect server did not become healthy in time")


def _api(api: str, method: str, path: str, body: dict | None = None, auth: str | None = AUTH) -> object:
    """One call of the REST API (Basic auth with the API auth string, as Prefect's clients send it)."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(api + path, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


def _scheduled_runs(api: str, deployment: str) -> list[dict]:
    return _api(api, "POST", "/flow_runs/filter", {"deployments": {"name": {"any_": [deployment]}},
                                                   "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                                                   "limit": 10})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def test_compose_services_run_the_commands_of_this_test():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(COMPOSE_ORDER) | {"postgres"} <= set(services)
    commands = compose_commands()
    assert commands["server"][:3] == ["prefect", "server", "start"]
    assert commands["pool"][:3] == ["prefect", "work-pool", "create"]
    assert commands["deploy"] == ["prefect", "--no-prompt", "deploy", "--all"]  # the stock CLI, no wrapper
    assert commands["worker"][:3] == ["prefect", "worker", "start"]
    pool = commands["pool"][3]
    assert commands["worker"][commands["worker"].index("--pool") + 1] == pool
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {pool}
    assert {d["entrypoint"] for d in deployments} == {"flows/full.py:full_pipeline"}


def test_prefect_yaml_has_sample_netflix_and_weekly_retraining():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert deployments["sample"]["parameters"]["source"] == "sample"
    assert deployments["netflix"]["parameters"]["source"] != "sample"
    schedules = deployments["weekly-retrain"]["schedules"]
    assert len(schedules) == 1 and len(schedules[0]["cron"].split()) == 5 and schedules[0]["cron"].split()[4] != "*"
    # Both read the folder docker-compose.yml mounts the host's raw data on (relative to the working dir /app).
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    mounts = [v for v in worker["volumes"] if isinstance(v, dict) and v.get("type") == "bind"]
    for name in ("netflix", "weekly-retrain"):
        assert "/app/" + deployments[name]["parameters"]["source"] in {m["target"] for m in mounts}


@pytest.mark.slow
def test_deployment_runs_on_a_real_server_and_worker(tmp_path):
    port, worker_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", RECSYS_PROGRESS="0",
               PREFECT_CLI_PROMPT="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_WEBSERVER_PORT=str(worker_port),
               PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1", COLUMNS="250",  # rich tables of the CLI: no truncation
               # as docker-compose.yml: the server demands the auth string, every client sends it
               PREFECT_SERVER_API_AUTH_STRING=AUTH, PREFECT_API_AUTH_STRING=AUTH)
    env.pop("PREFECT_API_KEY", None)
    commands = {name: local_command(cmd, port) for name, cmd in compose_commands().items()}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "worker")}
    started: list[subprocess.Popen] = []
    deadline = time.time() + 300

    def run(name: str, *extra: str, timeout: float = 60) -> str:
        done = subprocess.run([*commands.get(name, [PREFECT]), *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=min(timeout, max(1, deadline - time.time())))
        assert done.returncode == 0, f"{name} {extra}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    try:
        server = subprocess.Popen(commands["server"], cwd=tmp_path, env=env, stdout=logs["server"],
                                  stderr=subprocess.STDOUT, start_new_session=True)
        started.append(server)
        _wait_healthy(api, server, time.time() + 90)
        with pytest.raises(urllib.error.HTTPError) as refused:  # no auth string, no API
            _api(api, "POST", "/flows/filter", {}, auth=None)
        assert refused.value.code == 401
        run("pool")
        run("deploy")
        worker = subprocess.Popen(commands["worker"], cwd=ROOT, env=env, stdout=logs["worker"],
                                  stderr=subprocess.STDOUT, start_new_session=True)
        started.append(worker)

        data = tmp_path / "data"
        out = run("run", "deployment", "run", "recsys-full-pipeline/sample",
                  "-p", f"data_dir={data}", "-p", "sample_scale=0.001",
                  "-p", 'model_options={"autoencoder": {"epochs": 1}}',
                  "--watch", "--watch-timeout", str(int(max(10, deadline - time.time() - 60))),
                  timeout=deadline - time.time())
        assert "Completed" in out, out[-3000:]
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        assert len(all_manifests_verify(data)) == 5
        assert len(list(data.glob("runs/*/*/N3M/autoencoder-*/recommendations.parquet"))) == 1

        # The everyday commands of the stock CLI answer (they failed with HTTP 422 on Prefect 3.8.8).
        listed = run("run", "deployment", "ls")
        assert all(name in listed for name in DEPLOYMENTS), listed
        assert "recsys" in run("run", "work-pool", "ls")
        assert "recsys-full-pipeline" in run("run", "flow", "ls")
        flow_run = _api(api, "GET", f"/flow_runs/{flow_run_id}")
        assert flow_run["name"] in run("run", "flow-run", "ls")
        run_logs = run("run", "flow-run", "logs", flow_run_id)
        assert "Finished in state Completed()" in run_logs and "train: done in" in run_logs, run_logs[-2000:]
        artifacts = run("run", "artifact", "ls")
        assert all(key in artifacts for key in ("recsys-metrics", "recsys-summary", "recsys-runs")), artifacts
        inspected = json.loads(run("run", "artifact", "inspect", "recsys-metrics", "--output", "json"))
        metrics = json.loads(inspected[0]["data"])
        assert {row["model"] for row in metrics} >= {"autoencoder", "global_mean", "user_item_bias"}
        summary = json.loads(run("run", "artifact", "inspect", "recsys-summary", "--output", "json"))
        assert "Test metrics" in summary[0]["data"]
        # The compose file's worker healthcheck asks the worker's own health server.
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/health", timeout=10) as response:
            assert response.status == 200

        # The scheduler turns the weekly cron into scheduled runs. Fresh install: no raw data yet. One of
        # them, moved to now (and to this test's folders), ends Skipped, saying what to put where.
        while not _scheduled_runs(api, "weekly-retrain") and time.time() < deadline:
            time.sleep(1)
        scheduled = _scheduled_runs(api, "weekly-retrain")
        assert scheduled, "the scheduler created no run of the weekly-retrain deployment"
        weekly = scheduled[0]
        assert weekly["auto_scheduled"] and weekly["parameters"]["source"] == "data/raw/netflix"
        missing = tmp_path / "raw" / "netflix"
        _api(api, "PATCH", f"/flow_runs/{weekly['id']}",
             {"parameters": {**weekly["parameters"], "source": str(missing), "data_dir": str(tmp_path / "weekly")}})
        _api(api, "POST", f"/flow_runs/{weekly['id']}/set_state",
             {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": _utc_now()}}, "force": True})
        while time.time() < deadline:
            state = _api(api, "GET", f"/flow_runs/{weekly['id']}")["state"]
            if state["type"] not in ("SCHEDULED", "PENDING", "RUNNING"):
                break
            time.sleep(1)
        assert (state["type"], state["name"]) == ("COMPLETED", "Skipped"), state
        assert f"No raw data yet at {missing}" in state["message"] and "RAW_DATA_DIR" in state["message"]
        assert not (tmp_path / "weekly").exists()  # nothing written for a run that had nothing to do
    except BaseException:
        for name, handle in logs.items():
            handle.flush()
            print(f"----- {name} log -----\n" + (tmp_path / f"{name}.log").read_text()[-4000:])
        raise
    finally:
        for proc in reversed(started):
            _stop(proc)
        for handle in logs.values():
            handle.close()


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()
