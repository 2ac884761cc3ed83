"""Deployment end to end, without Docker: the commands of docker-compose.yml against a real server.

A real ``prefect server start`` (SQLite in a temporary PREFECT_HOME, a free port on 127.0.0.1), the
compose file's ``pool`` and ``deploy`` commands (``prefect deploy --all`` of prefect.yaml), its
``worker``; then ``prefect deployment run`` of the sample deployment, waited for until Completed, and
its artifacts checked. Bounded: every wait has a deadline, and everything started is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.flow_support import ROOT, all_manifests_verify

PREFECT = str(Path(sys.executable).with_name("prefect"))
COMPOSE_ORDER = ("server", "pool", "deploy", "worker")


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


def _latest_artifact(api: str, key: str) -> dict:
    """Straight from the REST API (the 3.8.8 CLI sends null filters the pinned server rejects)."""
    body = json.dumps({"artifacts": {"key": {"any_": [key]}}, "limit": 1, "sort": "CREATED_DESC"}).encode()
    request = urllib.request.Request(api + "/artifacts/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        found = json.loads(response.read())
    assert found, f"no artifact {key}"
    return found[0]


def _scheduled_runs(api: str, deployment: str) -> list[dict]:
    body = json.dumps({"deployments": {"name": {"any_": [deployment]}},
                       "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 10}).encode()
    request = urllib.request.Request(api + "/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


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
    assert commands["deploy"] == ["python", "flows/deploy.py", "--all"]  # prefect deploy --all, see the script
    assert commands["worker"][:3] == ["prefect", "worker", "start"]
    pool = commands["pool"][3]
    assert commands["worker"][commands["worker"].index("--pool") + 1] == pool
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {pool}
    assert {d["entrypoint"] for d in deployments} == {"flows/full.py:full_pipeline"}
    # The worker builds from the project's image and keeps the data dir on a volume.
    assert services["worker"]["image"] == services["server"]["image"]
    assert any(str(v).endswith(":/app/data") for v in services["worker"]["volumes"])
    # No secret in the compose file: the password comes from the env file.
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD" in text and "change-me" not in text
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(example)


def test_prefect_yaml_has_sample_netflix_and_weekly_retraining():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert deployments["sample"]["parameters"]["source"] == "sample"
    assert deployments["netflix"]["parameters"]["source"] != "sample"
    schedules = deployments["weekly-retrain"]["schedules"]
    assert len(schedules) == 1 and len(schedules[0]["cron"].split()) == 5 and schedules[0]["cron"].split()[4] != "*"


@pytest.mark.slow
def test_deployment_runs_on_a_real_server_and_worker(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", RECSYS_PROGRESS="0", PREFECT_CLI_PROMPT="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    env.pop("PREFECT_API_KEY", None)
    commands = {name: local_command(cmd, port) for name, cmd in compose_commands().items()}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "worker")}
    started: list[subprocess.Popen] = []
    deadline = time.time() + 180

    def run(name: str, *extra: str, timeout: float = 60) -> str:
        done = subprocess.run([*commands.get(name, [PREFECT]), *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=min(timeout, max(1, deadline - time.time())))
        assert done.returncode == 0, f"{name}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    try:
        server = subprocess.Popen(commands["server"], cwd=tmp_path, env=env, stdout=logs["server"],
                                  stderr=subprocess.STDOUT, start_new_session=True)
        started.append(server)
        _wait_healthy(api, server, time.time() + 60)
        run("pool")
        run("deploy")
        worker = subprocess.Popen(commands["worker"], cwd=ROOT, env=env, stdout=logs["worker"],
                                  stderr=subprocess.STDOUT, start_new_session=True)
        started.append(worker)

        data = tmp_path / "data"
        out = run("run", "deployment", "run", "recsys-full-pipeline/sample",
                  "-p", f"data_dir={data}", "-p", "sample_scale=0.001",
                  "-p", 'model_options={"autoencoder": {"epochs": 1}}',
                  "--watch", "--watch-timeout", str(int(max(10, deadline - time.time() - 20))),
                  timeout=deadline - time.time())
        assert "Completed" in out, out[-3000:]

        metrics = json.loads(_latest_artifact(api, "recsys-metrics")["data"])
        assert {row["model"] for row in metrics} >= {"autoencoder", "global_mean", "user_item_bias"}
        assert "Test metrics" in _latest_artifact(api, "recsys-summary")["data"]
        assert _latest_artifact(api, "recsys-split-stats")["type"] == "table"
        assert len(all_manifests_verify(data)) == 5
        runs = list(data.glob("runs/*/*/N3M/autoencoder-*/recommendations.parquet"))
        assert len(runs) == 1

        # The server's scheduler turns the weekly cron into scheduled runs (it did not with SQLAlchemy 2.1,
        # whose bulk-update rules break Prefect 3.8.8's scheduler: requirements.lock pins 2.0).
        while not _scheduled_runs(api, "weekly-retrain") and time.time() < deadline:
            time.sleep(1)
        scheduled = _scheduled_runs(api, "weekly-retrain")
        assert scheduled, "the scheduler created no run of the weekly-retrain deployment"
        assert all(run["state_type"] == "SCHEDULED" for run in scheduled)
        assert "Can't evaluate bulk DML" not in (tmp_path / "server.log").read_text()
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
