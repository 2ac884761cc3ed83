"""Latency, throughput and memory of the recommendation service (GET /users/{id}/recommendations?k=10).

    .venv/bin/python bench/bench_serve.py --run RUN_DIR [--run RUN_DIR ...] [--rate 100] [--requests 3000]
    .venv/bin/python bench/bench_serve.py --registry data/registry --model netflix-N3M

For each run folder: a throw-away registry with that run as champion (``--run``; or the given registry
model), a real ``python -m recsys_core serve`` process on a free port of 127.0.0.1, then from this
process (an asyncio load generator on the same machine, raw keep-alive HTTP/1.1 connections):

1. warm-up: 200 requests;
2. fixed rate: ``--requests`` requests sent open-loop at ``--rate`` per second, each to a random user of
   the champion's split (seeded); a request's latency runs from the moment it was DUE to its response, so
   a stalled server is not hidden by a generator that waits for it (no coordinated omission);
3. maximum throughput: ``--max-requests`` requests from ``--concurrency`` closed-loop clients;
4. with ``--swap-to RUN_DIR`` (last target only): the fixed-rate phase again while that run is promoted
   a quarter of the way in: failed requests, seconds until answers come from the new champion, and the
   latencies of the requests due meanwhile (the new model loads in the server's worker thread).

With ``--floor`` (one target): the service and the *floor* (``bench/floor_server.py``: a minimal FastAPI
app on the same uvicorn with the same settings, answering the same route with a fixed body, a real
answer of the service, so the same bytes) run side by side; at each rate of ``--rates`` (default
100,300,500) the same generator sends the same users to the service, then to the floor. Printed: p50/p99
and the server's CPU per request of each, and their ratios (service / floor); with ``--swap-to``, the
service's p99 during a promotion at the first rate against its steady p99 there.

Prints p50/p90/p99/max latency, achieved requests/s, errors and the server's CPU time per request per
phase, and the server's RSS (now and peak, from /proc); writes everything as JSON (``--out``). The
generator shares the machine's cores with the server, so the maximum-throughput phase measures both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import memory_mb  # noqa: E402

os.environ.setdefault("RECSYS_PROGRESS", "0")


def percentiles(latencies_s: list[float]) -> dict:
    if not latencies_s:
        return {}
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


class Connection:
    """One keep-alive HTTP/1.1 connection over raw asyncio streams: a few microseconds of client CPU per
    request, so the generator takes as little as possible of the cores it shares with the server (httpx
    costs ~0.7 ms of CPU per request here, as much as the server's own work)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Tally:
    """Latencies and errors of one phase."""

    def __init__(self):
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.answers: list[tuple[float, float, int]] = []   # (due or sent, latency, champion version)

    async def ask(self, conn: Connection, user: int, k: int, since: float) -> None:
        """One recommendation request; its latency counts from ``since`` (when it was due or sent)."""
        try:
            status, body = await conn.get(f"/users/{user}/recommendations?k={k}")
            answer = json.loads(body) if status == 200 else {}
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as err:
            self.errors.append(repr(err))
            conn.close()
            conn.writer = None
            return
        if len(answer.get("items", ())) != k:
            self.errors.append(f"HTTP {status}: {body[:200]!r}")
            return
        self.latencies.append(time.perf_counter() - since)
        self.answers.append((since, self.latencies[-1], answer["version"]))

    def summary(self, elapsed: float) -> dict:
        return {"rps": round(len(self.latencies) / elapsed, 1), "errors": len(self.errors),
                **percentiles(self.latencies)}


async def fixed_rate(host: str, port: int, users: np.ndarray, rate: float, k: int, connections: int = 32,
                     tally: Tally | None = None) -> dict:
    """Open loop: request i is due at start + i / rate; a free connection sends it (its wait counts)."""
    tally, due_queue = tally or Tally(), asyncio.Queue()
    start = time.perf_counter() + 0.05

    async def sender(conn: Connection) -> None:
        while (item := await due_queue.get()) is not None:
            await tally.ask(conn, item[1], k, since=item[0])

    pool = [Connection(host, port) for _ in range(connections)]
    senders = [asyncio.create_task(sender(conn)) for conn in pool]
    for i, user in enumerate(users):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        due_queue.put_nowait((due, int(user)))
    for _ in senders:
        due_queue.put_nowait(None)
    await asyncio.gather(*senders)
    for conn in pool:
        conn.close()
    return {"requests": len(users), "target_rps": rate, **tally.summary(time.perf_counter() - start)}


async def max_throughput(host: str, port: int, users: np.ndarray, concurrency: int, k: int) -> dict:
    """Closed loop: ``concurrency`` connections, each sending its next request when the last is answered."""
    tally, queue = Tally(), list(map(int, users))[::-1]

    async def worker(conn: Connection) -> None:
        while queue:
            await tally.ask(conn, queue.pop(), k, since=time.perf_counter())

    pool = [Connection(host, port) for _ in range(concurrency)]
    start = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in pool))
    for conn in pool:
        conn.close()
    return {"requests": len(users), "concurrency": concurrency, **tally.summary(time.perf_counter() - start)}


async def swap_under_load(host: str, port: int, users: np.ndarray, rate: float, k: int, promote,
                          after_s: float) -> dict:
    """The fixed-rate phase with a promotion ``after_s`` seconds in: failures, the time until answers come
    from the new champion, and the latencies of requests due from the promotion to 1 s after that."""
    tally = Tally()

    async def promoter() -> tuple[float, int]:
        await asyncio.sleep(after_s)
        return time.perf_counter(), await asyncio.to_thread(promote)

    steady, (promoted_at, version) = await asyncio.gather(fixed_rate(host, port, users, rate, k, tally=tally),
                                                          promoter())
    first_new = min((since + latency for since, latency, v in tally.answers if v == version), default=None)
    if first_new is None:
        return {**steady, "new_version_answers": 0}
    window = [latency for since, latency, _ in tally.answers if promoted_at <= since <= first_new + 1.0]
    return {**steady, "new_version_after_s": round(first_new - promoted_at, 2),
            "new_version_answers": sum(v == version for *_, v in tally.answers),
            "during_swap": {"requests": len(window), **percentiles(window)}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_rss_mb(pid: int) -> float:
    """Resident set size of a process's children (the champion's fold-in process), in MB."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += memory_mb(child).get("rss", 0.0)
    return round(total, 1)


def _champion_run(registry_dir: Path, name: str) -> str:
    """The champion's run folder (the service shows only its id relative to the data dir)."""
    from recsys_core.registry import Registry

    return Registry(registry_dir).champion(name).run_dir


@contextlib.contextmanager
def floor_server(body: bytes, work: Path):
    """``bench/floor_server.py`` answering ``body`` on a free port; yields (host, port, pid)."""
    import signal
    import subprocess

    import httpx

    from tests.loop_fixtures import free_port

    (work / "floor-body.json").write_bytes(body)
    port = free_port()
    log = open(work / "floor.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_server.py"), "--body",
                               str(work / "floor-body.json"), "--port", str(port)], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (work / "floor.log").read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the floor server did not start"
                time.sleep(0.2)
        yield "127.0.0.1", port, server.pid
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _phase(host: str, port: int, pid: int, users: np.ndarray, rate: float, k: int) -> dict:
    cpu = cpu_seconds(pid)
    result = asyncio.run(fixed_rate(host, port, users, rate, k))
    result["server_cpu_ms_per_request"] = round((cpu_seconds(pid) - cpu) / len(users) * 1000, 3)
    return result


def bench_floor(registry_dir: Path, name: str, args, work: Path) -> dict:
    """The service and the floor side by side at each rate (see the module docstring)."""
    from recsys_core.matrices import load_split
    from recsys_core.runs import RunFolder
    from tests.loop_fixtures import serving

    rates = [float(r) for r in args.rates.split(",")]
    with serving(registry_dir, name, work / f"server-{name}.log", watch_interval=2.0,
                 extra=args.serve_arg) as (client, server):
        model = client.get("/model").json()
        split_dir = RunFolder(_champion_run(registry_dir, name)).config().split_dir
        user_ids = load_split(split_dir).user_ids
        rng = np.random.default_rng(args.seed)
        host, port = client.base_url.host, client.base_url.port
        body = client.get(f"/users/{int(user_ids[0])}/recommendations", params={"k": args.k}).content
        with floor_server(body, work) as (f_host, f_port, f_pid):
            for h, p in ((host, port), (f_host, f_port)):   # warm-up of both
                asyncio.run(fixed_rate(h, p, rng.choice(user_ids, 300), 200.0, args.k))
            rows = []
            for rate in rates:
                users = rng.choice(user_ids, max(args.requests, int(rate * args.seconds)))
                service = _phase(host, port, server.pid, users, rate, args.k)
                floor = _phase(f_host, f_port, f_pid, users, rate, args.k)
                rows.append({"rate": rate, "service": service, "floor": floor,
                             "p99_ratio": round(service["p99_ms"] / floor["p99_ms"], 2),
                             "cpu_ratio": round(service["server_cpu_ms_per_request"]
                                                / floor["server_cpu_ms_per_request"], 2),
                             "load_average": [round(x, 2) for x in os.getloadavg()]})
                print(json.dumps(rows[-1]), flush=True)
        swap = None
        if args.swap_to:
            from recsys_core.registry import Registry

            def promote() -> int:
                return Registry(registry_dir).promote(name, args.swap_to, "benchmark: swap under load").version

            steady = rows[0]["service"]
            swap = asyncio.run(swap_under_load(host, port, rng.choice(user_ids, args.swap_requests), rates[0],
                                               args.k, promote, after_s=args.swap_requests / rates[0] / 4))
            swap["p99_vs_steady"] = round(swap["during_swap"]["p99_ms"] / steady["p99_ms"], 2) \
                if swap.get("during_swap") else None
            swap["load_average"] = [round(x, 2) for x in os.getloadavg()]
        memory = memory_mb(server.pid)
        children = children_rss_mb(server.pid)
    return {"model": model["model_type"], "n_users": model["n_users"], "n_items": model["n_items"],
            "load_seconds": model["load_seconds"], "answer_bytes": len(body), "rates": rows, "swap": swap,
            "server_rss_mb": round(memory["rss"], 1), "server_peak_rss_mb": round(memory["peak"], 1),
            "fold_in_process_rss_mb": children}


def bench_one(registry_dir: Path, name: str, args, work: Path) -> dict:
    from recsys_core.matrices import load_split
    from recsys_core.runs import RunFolder
    from tests.loop_fixtures import serving

    log = work / f"server-{name}.log"
    started = time.perf_counter()
    with serving(registry_dir, name, log, watch_interval=2.0) as (client, server):
        ready_s = time.perf_counter() - started
        model = client.get("/model").json()
        model["run_dir"] = _champion_run(registry_dir, name)
        split_dir = RunFolder(model["run_dir"]).config().split_dir
        user_ids = load_split(split_dir).user_ids
        rng = np.random.default_rng(args.seed)
        host, port = client.base_url.host, client.base_url.port
        asyncio.run(fixed_rate(host, port, rng.choice(user_ids, 200), 200.0, args.k))   # warm-up
        cpu = cpu_seconds(server.pid)
        steady = asyncio.run(fixed_rate(host, port, rng.choice(user_ids, args.requests), args.rate, args.k))
        steady["server_cpu_ms_per_request"] = round((cpu_seconds(server.pid) - cpu) / args.requests * 1000, 3)
        cpu = cpu_seconds(server.pid)
        burst = asyncio.run(max_throughput(host, port, rng.choice(user_ids, args.max_requests), args.concurrency,
                                           args.k))
        burst["server_cpu_ms_per_request"] = round((cpu_seconds(server.pid) - cpu) / args.max_requests * 1000, 3)
        memory = memory_mb(server.pid)
        swap = None
        if args.swap_to:
            from recsys_core.registry import Registry

            def promote() -> int:
                return Registry(registry_dir).promote(name, args.swap_to, "benchmark: swap under load").version

            swap = asyncio.run(swap_under_load(host, port, rng.choice(user_ids, args.swap_requests), args.rate,
                                               args.k, promote, after_s=args.swap_requests / args.rate / 4))
            swap["server_peak_rss_mb"] = round(memory_mb(server.pid)["peak"], 1)
    return {"swap": swap, "model": model["model_type"], "run_dir": model["run_dir"], "n_users": model["n_users"],
            "n_items": model["n_items"], "server_ready_s": round(ready_s, 1),
            "load_seconds": model["load_seconds"], "fixed_rate": steady, "max_throughput": burst,
            "server_rss_mb": round(memory["rss"], 1), "server_peak_rss_mb": round(memory["peak"], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], help="a run folder to serve (repeatable)")
    p.add_argument("--registry", help="a registry folder (with --model) instead of --run")
    p.add_argument("--model", help="registry model name (with --registry)")
    p.add_argument("--rate", type=float, default=100.0, help="requests per second of the fixed-rate phase")
    p.add_argument("--requests", type=int, default=3000, help="requests of the fixed-rate phase")
    p.add_argument("--max-requests", type=int, default=3000, help="requests of the maximum-throughput phase")
    p.add_argument("--concurrency", type=int, default=8, help="clients of the maximum-throughput phase")
    p.add_argument("--swap-to", metavar="RUN_DIR", help="then promote this run during a fixed-rate phase and "
                                                        "measure the swap (serving the last target only)")
    p.add_argument("--swap-requests", type=int, default=6000, help="requests of the swap phase")
    p.add_argument("-k", type=int, default=10, help="items per answer")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    p.add_argument("--out", default="bench-serve.json", help="JSON results")
    p.add_argument("--floor", action="store_true", help="the service beside a minimal FastAPI floor server "
                                                        "at each rate of --rates")
    p.add_argument("--rates", default="100,300,500", help="requests/s of the --floor phases (default 100,300,500)")
    p.add_argument("--serve-arg", action="append", default=[], help="an argument for `recsys serve` "
                                                                    "(repeatable), e.g. --serve-arg=--load=in-process")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of each --floor phase (at least "
                                                               "--requests requests)")
    args = p.parse_args()
    if not args.run and not (args.registry and args.model):
        p.error("give --run RUN_DIR (repeatable) or --registry DIR --model NAME")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        targets = [(Path(args.registry), args.model)] if args.registry else []
        if args.run:
            from recsys_core.registry import Registry

            for i, run in enumerate(args.run):
                Registry(work / "registry").promote(f"bench-{i}", run, "benchmark")
                targets.append((work / "registry", f"bench-{i}"))
        if args.floor:
            for i, (registry_dir, name) in enumerate(targets):
                swap_to = args.swap_to if i == len(targets) - 1 else None
                result = bench_floor(registry_dir, name, argparse.Namespace(**{**vars(args), "swap_to": swap_to}),
                                     work)
                results.append(result)
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
            print("| model | rate | service p50 / p99 ms | floor p50 / p99 ms | p99 ratio | service / floor CPU "
                  "ms per request | CPU ratio | errors (service, floor) | load average |")
            for r in results:
                for row in r["rates"]:
                    s, f = row["service"], row["floor"]
                    print(f"| {r['model']} | {row['rate']:g} | {s['p50_ms']} / {s['p99_ms']} | {f['p50_ms']} / "
                          f"{f['p99_ms']} | {row['p99_ratio']} | {s['server_cpu_ms_per_request']} / "
                          f"{f['server_cpu_ms_per_request']} | {row['cpu_ratio']} | {s['errors']}, {f['errors']} | "
                          f"{row['load_average'][0]} |")
                if r["swap"]:
                    print(f"swap ({r['model']}): {json.dumps(r['swap'])}")
            return 0
        for i, (registry_dir, name) in enumerate(targets):
            if i < len(targets) - 1:
                result = bench_one(registry_dir, name, argparse.Namespace(**{**vars(args), "swap_to": None}), work)
            else:
                result = bench_one(registry_dir, name, args, work)
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]
            results.append(result)
            print(json.dumps(result, indent=2), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("| model | users x items | p50 / p99 ms at rate | achieved rps | server CPU ms/request | "
          "max rps (p50 / p99 ms) | server RSS MB (peak) |")
    for r in results:
        f, m = r["fixed_rate"], r["max_throughput"]
        print(f"| {r['model']} | {r['n_users']:,} x {r['n_items']:,} | {f['p50_ms']} / {f['p99_ms']} at "
              f"{f['target_rps']:g} | {f['rps']} | {f['server_cpu_ms_per_request']} | {m['rps']} "
              f"({m['p50_ms']} / {m['p99_ms']}) | {r['server_rss_mb']} ({r['server_peak_rss_mb']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
