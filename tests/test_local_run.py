"""``python flows/full.py`` without a Prefect server: the temporary API of flows/local_api.py.

The main command on a machine whose cores are all busy, offline analytics off, and a flow process killed
with SIGKILL not leaving its API server behind. Each test starts its own processes and stops them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import local_api
from tests.flow_support import ROOT, TINY, cli_args, model_options, statuses

# Heavy (flows/full.py as users run it, with its temporary Prefect API): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow


def _local_env(home: Path) -> dict:
    """A user's environment: no server configured, a fresh Prefect home, no analytics settings of ours."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k not in ("DO_NOT_TRACK", "MLFLOW_TRACKING_URI")}
    env.update(PREFECT_HOME=str(home), RECSYS_PROGRESS="0")
    return env


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _server_of(pid: int, deadline: float) -> int:
    while time.time() < deadline:
        for child in _children(pid):
            try:
                if b"local_api.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError("the command started no temporary API server")


def test_local_defaults_leave_the_users_settings_alone():
    env = {"DO_NOT_TRACK": "0", local_api.STARTUP_TIMEOUT_ENV: "45"}
    local_api.apply_local_defaults(env)
    assert env["DO_NOT_TRACK"] == "0" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert local_api.startup_timeout(env) == 45
    assert local_api.startup_timeout({}) == local_api.DEFAULT_STARTUP_TIMEOUT_S >= 300


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_main_command_passes_with_every_core_busy(tmp_path):
    """Other processes keep every core busy (the failure seen: load ~8 on 2 cores, Prefect's 20 s wait)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        report = tmp_path / "report.json"
        params = {"data_dir": str(tmp_path / "data"), **TINY, **model_options(epochs=1, patience=0)}
        done = subprocess.run([sys.executable, "flows/full.py", *cli_args(params), "--report-json", str(report)],
                              cwd=ROOT, env=_local_env(tmp_path / "prefect-home"), capture_output=True, text=True,
                              timeout=900)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert set(statuses(json.loads(report.read_text())).values()) == {"built"}
    # Offline and quiet: no analytics (no "Failed to send telemetry"), no dead "View at <UI link>", no traceback.
    for unwanted in ("telemetry", "View at", "Traceback", "| ERROR"):
        assert unwanted not in output, output[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkilled_command_does_not_orphan_its_api_server(tmp_path):
    driver = tmp_path / "driver.py"  # the command, stopped inside the first stage until it is killed
    driver.write_text(
        "import runpy, sys, time\n"
        "from pathlib import Path\n"
        "import recsys_core.synth as synth\n"
        "marker = Path(sys.argv.pop(1))\n"
        "def stuck(*args, **kwargs):\n"
        "    marker.write_text('in stage')\n"
        "    time.sleep(300)\n"
        "synth.generate_netflix = stuck\n"
        "sys.argv[0] = 'flows/full.py'\n"
        "runpy.run_path('flows/full.py', run_name='__main__')\n")
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(driver), str(marker), "--data-dir", str(tmp_path / "data")],
                            cwd=ROOT, env=_local_env(tmp_path / "prefect-home"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        server = _server_of(proc.pid, time.time() + 120)
        deadline = time.time() + 300
        while not marker.exists():  # the flow runs on that server: it was up and answering
            assert proc.poll() is None, "the command ended before reaching its first stage"
            assert time.time() < deadline, "the command did not reach its first stage"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the flow process only, not its process group
        proc.wait(30)
        gone_by = time.time() + 30
        while _alive(server) and time.time() < gone_by:
            time.sleep(0.2)
        assert not _alive(server), "the temporary API server outlived the killed command"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)
