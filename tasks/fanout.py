"""Where the flow's training tasks run: one after another in the flow's own process (``sequential``, the
default), or all at once on a Dask cluster through Prefect's own ``DaskTaskRunner`` (``dask``): a
``distributed.LocalCluster`` sized to this machine, or an existing cluster at ``dask_address``.

The ETL stages always run in the flow's process; only training tasks (every split x model x sweep trial)
fan out. Each is the same Prefect task with the same content-keyed cache either way: a worker process
verifies, locks (``fcntl.flock`` beside the output) and builds the run folder exactly as the flow's process
would, so several workers writing one data dir cannot corrupt it (tests/test_dask.py).

A multi-host cluster needs what the cache needs: the data dir on a shared file system, mounted at the same
path on every worker (flock over NFSv4 or a cluster file system), and the same code version everywhere
(the cache keys hash the library's source). Before the first task both are checked on every worker: a
worker that cannot see the data dir, or runs other code, is refused with one sentence.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_core.artifacts.hashing import code_version
from recsys_core.errors import RecsysError
from recsys_core.threads import available_cores

if TYPE_CHECKING:  # Prefect is imported by the tasks this runs, not by this module
    from prefect.client.schemas.objects import State

log = logging.getLogger("recsys_core.flow")

RUNNERS = ("sequential", "dask")
PROBE_DIR = ".cache"
WORKER_TIMEOUT_S = 600  # a loaded 2-core machine takes tens of seconds to start worker processes


@dataclass
class Call:
    """One training task to run: its label in the report and its keyword arguments."""

    label: str
    params: dict


@dataclass
class Done:
    call: Call
    state: State           # the Prefect State
    seconds: float         # wall time from submission to its end (queueing included on Dask)

    def result(self):
        return self.state.result()  # re-raises the task's error


def check_runner(task_runner: str, dask_address: str | None, dask_workers: int | None) -> None:
    """One sentence for a bad choice, before any stage runs."""
    if task_runner not in RUNNERS:
        raise RecsysError(f"task_runner must be one of {', '.join(RUNNERS)}, got {task_runner!r}")
    if dask_address and task_runner != "dask":
        raise RecsysError("dask_address needs task_runner dask (--task-runner dask)")
    if dask_address and dask_workers:
        raise RecsysError("dask_workers sizes a local cluster; an existing cluster at dask_address has its own workers")
    if dask_workers is not None and (isinstance(dask_workers, bool) or not isinstance(dask_workers, int)
                                     or dask_workers < 1):
        raise RecsysError(f"dask_workers must be a positive integer, got {dask_workers!r}")
    if dask_address and not str(dask_address).startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        raise RecsysError(f"dask_address must look like tcp://HOST:8786, got {dask_address!r}")


def probe_worker(data_dir: str, name: str, token: str) -> dict:
    """Run on every worker: can it read the flow's probe file in the data dir, and which code does it run?"""
    try:
        seen = (Path(data_dir) / PROBE_DIR / name).read_text() == token
    except OSError:
        seen = False
    return {"sees_data_dir": seen, "code": code_version("recsys_core.train")["source_sha256"]}


class Fanout:
    """Context manager running batches of training ``Call``s on the chosen runner (see the module)."""

    def __init__(self, task_runner: str = "sequential", data_dir: str = "data", dask_address: str | None = None,
                 dask_workers: int | None = None):
        check_runner(task_runner, dask_address, dask_workers)
        self.kind = task_runner
        self.data_dir = str(Path(data_dir).resolve())
        self.address = dask_address
        self.workers = dask_workers
        self.concurrent: int | None = 1  # trainings sharing a worker's cores (None: each worker decides)
        self._stack = contextlib.ExitStack()
        self._runner = None
        self.description = "sequential (in the flow's process)"

    def __enter__(self) -> "Fanout":
        if self.kind == "dask":
            try:
                self._start_dask()
            except BaseException:
                self._stack.close()
                raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # --- Dask ---------------------------------------------------------------------------------------------
    def _start_dask(self) -> None:
        # prefect_dask (~1.5 s, with Prefect) and distributed (~0.4 s): only task_runner='dask' needs them, and
        # flows/parameters.py imports this module without Prefect
        from prefect_dask.task_runners import DaskTaskRunner

        address = self.address
        if address is None:
            from distributed import LocalCluster

            cores = available_cores()
            workers = self.workers or cores
            # One task slot per worker process (GIL-free training in parallel processes); torch threads per
            # worker = cores // workers (recsys_core.threads.decide_threads with concurrent=workers).
            started = time.perf_counter()
            cluster: LocalCluster = self._stack.enter_context(LocalCluster(  # pyright: ignore[reportAssignmentType]
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.WARNING))  # pyright: ignore[reportArgumentType] (None: no dashboard)
            address = cluster.scheduler_address
            self.concurrent = workers
            self.description = (f"dask: a local cluster of {workers} worker process{'es' if workers > 1 else ''} "
                                f"x 1 task, {max(1, cores // workers)} torch thread(s) each "
                                f"({cores} cores), started in {time.perf_counter() - started:.1f} s")
        else:
            self.concurrent = None
            self.description = f"dask: the cluster at {address}"
        self._check_workers(address)
        runner = DaskTaskRunner(address=address)
        self._runner = self._stack.enter_context(runner)
        log.info("training tasks run on %s", self.description)

    def _check_workers(self, address: str) -> None:
        from distributed import Client  # distributed (~0.4 s): only task_runner='dask' needs it

        name = f"dask-probe-{secrets.token_hex(6)}"
        token = secrets.token_hex(16)
        probe = Path(self.data_dir) / PROBE_DIR / name
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
        try:
            with Client(address, timeout=f"{WORKER_TIMEOUT_S}s") as client:
                client.wait_for_workers(1, timeout=WORKER_TIMEOUT_S)
                answers: dict = client.run(probe_worker, self.data_dir, name, token)  # pyright: ignore[reportAssignmentType] (a synchronous client)
        except OSError as err:
            raise RecsysError(f"cannot reach the Dask scheduler at {address} ({err})") from None
        finally:
            probe.unlink(missing_ok=True)
        mine = code_version("recsys_core.train")["source_sha256"]
        for worker, answer in sorted(answers.items()):
            if not answer["sees_data_dir"]:
                raise RecsysError(f"Dask worker {worker} cannot see the data dir {self.data_dir}: every worker needs "
                                  "it on a shared file system mounted at the same path (docs/dask.md)")
            if answer["code"] != mine:
                raise RecsysError(f"Dask worker {worker} runs another version of recsys_core than this flow: every "
                                  "worker needs the same code (the cache keys hash it; docs/dask.md)")
        self.n_workers = len(answers)

    # --- running ------------------------------------------------------------------------------------------
    def run(self, task, calls: list[Call], on_done=None) -> list[Done]:
        """Run ``task`` for every call (concurrently on Dask), in order of ``calls``; never raises for a
        failed task (its state says it). ``on_done(done)`` is called as each one ends."""
        calls = [Call(c.label, {**c.params, "concurrent": self.concurrent}) for c in calls]
        done: list[Done] = []
        if self._runner is None:
            for call in calls:
                started = time.perf_counter()
                state = task(**call.params, return_state=True)
                done.append(Done(call, state, time.perf_counter() - started))
                if on_done:
                    on_done(done[-1])
            return done
        from distributed import as_completed  # distributed (~0.4 s): only task_runner='dask' needs it

        started = time.perf_counter()
        futures = [self._runner.submit(task, parameters=call.params) for call in calls]
        by_key = {f.wrapped_future.key: (i, f) for i, f in enumerate(futures)}
        finished: dict[int, Done] = {}
        for dask_future in as_completed([f.wrapped_future for f in futures], loop=self._runner.client.loop):
            index, future = by_key[dask_future.key]
            future.wait()
            finished[index] = Done(calls[index], future.state, time.perf_counter() - started)
            if on_done:
                on_done(finished[index])
        return [finished[i] for i in range(len(calls))]
