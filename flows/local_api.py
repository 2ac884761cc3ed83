"""The Prefect API of a local run: ``python flows/full.py`` without PREFECT_API_URL.

Left alone, Prefect starts a temporary API server (uvicorn) at the flow's first API call and
- waits 20 s for it: on a busy machine that fails the command (measured: load ~8 on 2 cores,
  ``Timed out while attempting to connect to ephemeral Prefect API server``);
- keeps analytics on: offline, an ``ERROR ... Failed to send telemetry`` line per run, and once a 66 s
  stall on ``database is locked`` while the server inserted its telemetry session into sqlite;
- starts it only after every module is imported, so the two costs add up;
- leaves it running forever when the flow process is SIGKILLed (a plain child: nothing tells it).

Here the same app (``create_app(ephemeral=True)``: the REST API without UI or background services, on the
sqlite database of PREFECT_HOME) runs in a child process that
- starts first thing (``start_early``), so it boots while the pipeline's modules import;
- serves a socket the parent bound (no port race; connections made before it is up wait in the backlog);
- gets a generous start-up wait, unless the user set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS;
- dies with its parent: PR_SET_PDEATHSIG on Linux (delivered even on SIGKILL), a watch of its parent
  process id elsewhere; the parent stops it on a normal exit.

This module imports neither Prefect nor the pipeline: the parent side must cost nothing before the
child is on its way.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request

# Prefect settings a local run gets unless the user set them. Analytics: the server's telemetry service
# and the client's SDK events (DO_NOT_TRACK is Prefect's client-side switch; it is read at `import prefect`).
LOCAL_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Generous: a fresh PREFECT_HOME migrates its database first; measured 5-7 s on a quiet 2-core machine and
# over 20 s at load ~8. A child that dies is noticed at once, so a long wait only costs time when it hangs.
DEFAULT_STARTUP_TIMEOUT_S = 600
PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """The temporary API server could not start (one sentence)."""


def apply_local_defaults(environ=os.environ) -> None:
    """The settings above, and the generous start-up wait for Prefect's own temporary server (used when a
    flow is called from Python rather than from the command line), unless set already."""
    for name, value in {**LOCAL_DEFAULTS, STARTUP_TIMEOUT_ENV: str(DEFAULT_STARTUP_TIMEOUT_S)}.items():
        environ.setdefault(name, value)


def startup_timeout(environ=os.environ) -> float:
    value = environ.get(STARTUP_TIMEOUT_ENV)
    try:
        return float(value) if value else float(DEFAULT_STARTUP_TIMEOUT_S)
    except ValueError:
        return float(DEFAULT_STARTUP_TIMEOUT_S)


class LocalAPI:
    """A temporary Prefect API server in a child process tied to this one."""

    def __init__(self, environ: dict | None = None):
        env = dict(os.environ if environ is None else environ)
        apply_local_defaults(env)
        env.pop("PREFECT_API_URL", None)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve", str(listener.fileno()), str(os.getpid())],
            pass_fds=[listener.fileno()], env=env, stdin=subprocess.DEVNULL)
        listener.close()  # the child holds it now
        atexit.register(self.stop)

    def wait_healthy(self, timeout: float | None = None) -> str:
        """Block until the server answers /health; returns the API URL. One sentence if it cannot start."""
        timeout = startup_timeout() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise StartupError(f"the temporary Prefect API server exited with status {self.process.returncode} "
                                   "before it was ready (its errors are printed above)")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=min(10.0, timeout)) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise StartupError(f"the temporary Prefect API server did not answer within {timeout:g} s; on a busy "
                                   f"machine set {STARTUP_TIMEOUT_ENV} higher, or run a server and set PREFECT_API_URL")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_started: LocalAPI | None = None


def start_early() -> None:
    """At the top of the command, before anything heavy imports: start the server when the run will need
    one (no PREFECT_API_URL in the environment or the Prefect profile), set the local defaults."""
    global _started
    apply_local_defaults()
    if _started is None and not os.environ.get("PREFECT_API_URL") and not _profile_has_api_url():
        _started = LocalAPI()


def _profile_has_api_url() -> bool:
    """Whether the active Prefect profile (profiles.toml) sets PREFECT_API_URL; read without importing Prefect."""
    home = os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")
    path = os.environ.get("PREFECT_PROFILES_PATH") or os.path.join(home, "profiles.toml")
    try:
        with open(path, "rb") as fh:
            profiles = tomllib.load(fh)
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def take_started() -> LocalAPI | None:
    """The server ``start_early`` started, if any (handed over once)."""
    global _started
    server, _started = _started, None
    return server


# --------------------------------------------------------------------------- the child


def _die_with(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (Linux); elsewhere, watch the parent's pid."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
        watched = False
    except (OSError, AttributeError):
        watched = True
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(0)
    if watched:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()


def _serve(fd: int, parent: int) -> None:
    _die_with(parent)
    # Prefect's server app (~3 s): the child alone needs it; the parent side imports no Prefect (see above)
    import uvicorn
    from prefect.server.api.server import create_app

    listener = socket.socket(fileno=fd)
    config = uvicorn.Config(create_app(ephemeral=True, final=True), log_level="error", lifespan="on",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    _serve(int(sys.argv[2]), int(sys.argv[3]))
