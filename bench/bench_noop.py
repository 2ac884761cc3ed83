"""Wall time of the all-cached run of the main command (every stage Cached), three ways.

    .venv/bin/python bench/bench_noop.py [--repeat 3] [--scale 0.01]

- ``server``: ``python flows/full.py`` against a running ``prefect server start`` (PREFECT_API_URL set);
- ``temporary API``: ``python flows/full.py`` alone (flows/local_api.py's API server, started at once);
- ``Prefect's own``: the flow called from Python, ``full_pipeline()``, on Prefect's own temporary server
  (what the command did before; analytics off so the offline telemetry stall does not decide it).

Each run is a fresh process, as a user's command is; the data dir is built once first; the three ways take
turns. Prints wall and CPU seconds (user + system, the process and its children) per run and the median per
way, and the load average around the runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], env: dict) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or "cached" not in done.stdout or "built" in done.stdout:
        sys.exit(f"run failed or not all cached:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - wall, _cpu() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.01, help="sample scale (0.01 = the embedded default)")
    args = p.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(PREFECT_HOME=str(work / "prefect-home"), RECSYS_PROGRESS="0")
    data = str(work / "data")
    command = [sys.executable, "flows/full.py", "--data-dir", data, "--sample-scale", str(args.scale)]
    from_python = [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); from flows.full import full_pipeline; "
                   f"r = full_pipeline(data_dir={data!r}, sample_scale={args.scale}); "
                   "print(' '.join(s['status'] for s in r['stages']))"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)],
                              env={**base, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api"
        for _ in range(600):
            try:
                urllib.request.urlopen(api + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        subprocess.run(command, cwd=ROOT, env=base, check=True, capture_output=True)  # the first run builds
        ways = {"server": (command, {**base, "PREFECT_API_URL": api}),
                "temporary API": (command, base),
                "Prefect's own": (from_python, {**base, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})}
        results = {name: [] for name in ways}
        for _ in range(args.repeat):  # interleaved, so a change of the machine's load touches every way alike
            for name, (cmd, env) in ways.items():
                results[name].append(timed(cmd, env))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average (1 min) before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"{'way':<15} {'wall s (each run)':<26} {'median wall s':>13} {'median CPU s':>12}")
    for name, runs in results.items():
        walls = " ".join(f"{w:.1f}" for w, _ in runs)
        print(f"{name:<15} {walls:<26} {statistics.median(w for w, _ in runs):>13.1f} "
              f"{statistics.median(c for _, c in runs):>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
