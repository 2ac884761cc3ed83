"""docker-compose.yml, docker-compose.gpu.yml, Dockerfile and .env.example, without a Docker engine.

A real compose implementation (podman-compose, from PyPI; ``config --dry-run`` needs no engine) resolves
the files with an .env as a user writes it; the resolved model and the files themselves are then checked
for what makes the deployment safe and able to reach its data.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.flow_support import ROOT

# Heavy for its size (podman-compose resolving the files: ~9 s of CPU): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow

PODMAN_COMPOSE = Path(sys.executable).with_name("podman-compose")
CLIENTS = ("pool", "deploy", "worker", "dask-worker-1", "dask-worker-2")  # every service calling the Prefect API
PASSWORD = "p@ss/w:rd#1?&x%20"  # a URL would break on each of these characters
AUTH = "admin:s3cr$t"
API_KEY = "Kq9-_recsys-api-key-0123456789abcdef"


def _env_file(folder: Path, **changes: str) -> Path:
    values = {"POSTGRES_PASSWORD": PASSWORD, "PREFECT_API_AUTH_STRING": AUTH, "RAW_DATA_DIR": "./raw-data/netflix",
              "RECSYS_API_KEY": API_KEY, **changes}
    path = folder / ".env"
    # compose's .env syntax: single quotes keep $, # and the rest literal
    path.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    return path


def compose_config(tmp_path: Path, *files: str, **env: str) -> subprocess.CompletedProcess:
    """``podman-compose config`` of a copy of the project's compose files with an .env in tmp_path."""
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    _env_file(tmp_path, **env)
    args = [str(PODMAN_COMPOSE), "--dry-run", "--podman-path", "/bin/true", "--env-file", str(tmp_path / ".env")]
    for name in files or ("docker-compose.yml",):
        args += ["-f", str(tmp_path / name)]
    return subprocess.run([*args, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    if not PODMAN_COMPOSE.exists():
        pytest.skip("podman-compose is not installed (requirements-extras.lock installs it)")
    done = compose_config(tmp_path_factory.mktemp("compose"), "docker-compose.yml", "docker-compose.gpu.yml")
    assert done.returncode == 0, done.stderr[-2000:]
    return yaml.safe_load(done.stdout)["services"]


def _environment(service: dict) -> dict:
    env = service.get("environment") or {}
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else env


def test_compose_resolves_and_publishes_only_on_loopback(resolved):
    assert set(resolved) == {"postgres", "server", "pool", "deploy", "worker", "api", "dask-scheduler",
                             "dask-worker-1", "dask-worker-2"}
    published = sorted(port for service in resolved.values() for port in service.get("ports", []))
    assert published == ["127.0.0.1:4200:4200", "127.0.0.1:8000:8000"]


def test_api_serves_the_weekly_retrains_champion_from_the_workers_data_dir(resolved):
    """The api service's command parses with this project's serve sub-command, reads the registry the
    worker's flows write (the data volume + prefect.yaml's data_dir) and serves the registry model the
    weekly retrain promotes."""
    from recsys_core.cli import build_parser

    api = resolved["api"]
    command = api["command"]
    assert command[:3] == ["python", "-m", "recsys_core"]
    args = build_parser("serve").parse_args(command[3:])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.port == 8000
    assert api["image"] == resolved["server"]["image"]  # the CPU image even with the GPU override
    assert {"type": "volume", "source": "recsys-data", "target": "/app/data", "read_only": True} in api["volumes"]
    assert "recsys-data:/app/data" in resolved["worker"]["volumes"]
    weekly = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    params = weekly["weekly-retrain"]["parameters"]
    assert args.registry == f"/app/{params['data_dir']}/registry"  # the flow's DATA_DIR/registry, working dir /app
    assert params["registry_model"].replace("{split}", params["splits"][0]) == args.model
    assert "8000/health" in " ".join(api["healthcheck"]["test"])
    assert AUTH not in yaml.safe_dump(api)  # it calls no Prefect API


def test_the_dask_deployment_trains_on_the_compose_dask_cluster_which_sees_the_workers_data(resolved):
    """netflix-dask's dask_address is the scheduler service's; two workers from the project's image connect to
    it and mount the data volume and the raw data where the flow's worker does; nothing of it is published."""
    from flows.full import build_parser

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    params = deployments["netflix-dask"]["parameters"]
    assert params["task_runner"] == "dask"
    scheduler = resolved["dask-scheduler"]
    command = scheduler["command"]
    assert command[:2] == ["dask", "scheduler"]
    port = command[command.index("--port") + 1]
    assert params["dask_address"] == f"tcp://dask-scheduler:{port}"
    flow_args = build_parser().parse_args(["--task-runner", "dask", "--dask-address", params["dask_address"]])
    assert flow_args.dask_address == params["dask_address"]
    worker_mounts = resolved["worker"]["volumes"]
    for name in ("dask-worker-1", "dask-worker-2"):
        worker = resolved[name]
        assert worker["image"] == scheduler["image"] == resolved["server"]["image"]  # same code
        assert worker["command"][:3] == ["dask", "worker", params["dask_address"]]
        assert worker["volumes"] == worker_mounts  # the data dir and the raw data at the same paths
    for service in (scheduler, resolved["dask-worker-1"], resolved["dask-worker-2"]):
        assert not service.get("ports")


def test_every_api_call_needs_the_auth_string(resolved):
    assert _environment(resolved["server"])["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
    for name in CLIENTS:
        env = _environment(resolved[name])
        assert env["PREFECT_API_AUTH_STRING"] == AUTH and env["PREFECT_API_URL"] == "http://server:4200/api", name


def test_the_database_password_reaches_only_postgres_and_the_server_and_any_password_works(resolved):
    holders = {name for name, service in resolved.items() if PASSWORD in yaml.safe_dump(service)}
    assert holders == {"postgres", "server"}
    assert not any("env_file" in service for service in resolved.values())
    server = _environment(resolved["server"])
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in server
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in server
    assert _environment(resolved["postgres"])["POSTGRES_PASSWORD"] == PASSWORD

    # Prefect builds the URL from the separate settings and escapes it: the password comes back whole.
    from prefect.settings import Settings
    from sqlalchemy.engine import make_url

    settings = Settings(server={"database": {
        "driver": server["PREFECT_SERVER_DATABASE_DRIVER"], "host": server["PREFECT_SERVER_DATABASE_HOST"],
        "port": int(server["PREFECT_SERVER_DATABASE_PORT"]), "user": server["PREFECT_SERVER_DATABASE_USER"],
        "name": server["PREFECT_SERVER_DATABASE_NAME"], "password": server["PREFECT_SERVER_DATABASE_PASSWORD"]}})
    url = make_url(settings.server.database.connection_url.get_secret_value())
    assert (url.password, url.host, url.database, url.drivername) == (PASSWORD, "postgres", "prefect",
                                                                      "postgresql+asyncpg")


def test_healthchecks_volumes_and_the_read_only_raw_data_mount(resolved):
    for name in ("postgres", "server", "worker"):
        assert resolved[name]["healthcheck"]["test"], name
    worker = resolved["worker"]
    assert "--with-healthcheck" in worker["command"]
    assert "8080/health" in " ".join(worker["healthcheck"]["test"])
    assert _environment(worker)["PREFECT_WORKER_WEBSERVER_PORT"] == "8080"
    volumes = worker["volumes"]
    assert "recsys-data:/app/data" in volumes
    results = _environment(worker)["PREFECT_LOCAL_STORAGE_PATH"]
    assert f"prefect-results:{results}" in volumes  # Prefect's result storage outlives the container
    raw = [v for v in volumes if isinstance(v, dict) and v.get("type") == "bind"]
    assert raw == [{"type": "bind", "source": "./raw-data/netflix", "target": "/app/data/raw/netflix",
                    "read_only": True, "bind": {"create_host_path": True}}]
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    for name in ("netflix", "weekly-retrain"):  # relative to the deployments' working directory, /app
        assert "/app/" + deployments[name]["parameters"]["source"] == raw[0]["target"]


def test_gpu_override_builds_the_cuda_torch_for_the_worker(resolved):
    worker = resolved["worker"]
    assert "TORCH=cuda" in worker["build"]["args"] and worker["image"] != resolved["server"]["image"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_missing_secrets_stop_compose(tmp_path):
    if not PODMAN_COMPOSE.exists():
        pytest.skip("podman-compose is not installed")
    done = compose_config(tmp_path, PREFECT_API_AUTH_STRING="")
    assert done.returncode != 0 and "PREFECT_API_AUTH_STRING" in done.stdout + done.stderr


def test_image_runs_as_a_non_root_user_and_has_the_torch_build_argument():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "ARG TORCH=cpu" in lines
    assert any("cuda)" in line for line in lines)
    assert "DO_NOT_TRACK=1 \\" in lines and "PREFECT_SERVER_ANALYTICS_ENABLED=false \\" in lines


def test_env_example_names_every_variable_the_compose_files_need():
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING", "RAW_DATA_DIR", "PREFECT_BIND", "API_PORT",
            "RECSYS_API_KEY"} <= set(example)
    assert example["RECSYS_API_KEY"] == ""   # no usable default: compose stops until one is generated
    assert example["PREFECT_BIND"] == "127.0.0.1"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and "${POSTGRES_PASSWORD:?" in text


def _networks(service: dict) -> set[str]:
    networks = service.get("networks") or ["default"]
    return set(networks) if isinstance(networks, list) else set(networks)


def test_api_mounts_the_data_read_only_and_the_dask_scheduler_has_its_own_network():
    """Read from the compose file itself (no compose tool needed): the api service can read the registry
    and runs but write nothing; the unauthenticated Dask scheduler is reachable only from the services that
    submit or run work, on an internal network, and publishes nothing."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    api = services["api"]
    for mount in api["volumes"]:
        read_only = mount.get("read_only") if isinstance(mount, dict) else mount.rsplit(":", 1)[-1] == "ro"
        assert read_only, mount
    assert "${RECSYS_API_KEY:?" in api["environment"]["RECSYS_API_KEY"]
    assert compose["networks"]["dask"]["internal"] is True
    on_dask = {name for name, service in services.items() if "dask" in _networks(service)}
    assert on_dask == {"dask-scheduler", "worker", "dask-worker-1", "dask-worker-2"}
    assert _networks(services["dask-scheduler"]) == {"dask"}
    assert "dask" not in _networks(api) and not services["dask-scheduler"].get("ports")


def test_the_api_key_reaches_only_the_api_and_compose_stops_without_it(resolved, tmp_path):
    holders = {name for name, service in resolved.items() if API_KEY in yaml.safe_dump(service)}
    assert holders == {"api"}
    assert _environment(resolved["api"])["RECSYS_API_KEY"] == API_KEY
    assert resolved["api"]["volumes"] == [{"type": "volume", "source": "recsys-data", "target": "/app/data",
                                           "read_only": True}]
    done = compose_config(tmp_path, RECSYS_API_KEY="")
    assert done.returncode != 0 and "RECSYS_API_KEY" in done.stdout + done.stderr
