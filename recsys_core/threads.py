"""How many threads torch may use for one training: chosen, not left to torch's default.

Measured on the shared 2-core machine (issue 14): with torch's default intra-op threads an MF run took 100 s
instead of 17 s and a NeuMF epoch 66 s instead of 7 s (same results): torch's default is the number of
cores it sees in /proc, not the share this process really has (its CPU affinity, a container's cgroup CPU
quota), and several trainings at once (Dask workers) each start that many threads.

:func:`decide_threads` is THE decision, used by ``recsys train --threads``, the flow's ``threads`` parameter
and the flow's tasks on Dask workers: an explicit request wins; else the count of the run being resumed;
else ``RECSYS_THREADS`` (the operator's setting for a machine, e.g. a compose worker); else the cores
available to this process divided by the trainings that share them (one per task slot of a Dask worker, or
what the caller says), lowered to the cores that are really free at the start (:func:`measure_free_cores`),
at least one.

A training of several processes on one host (``nproc=N``, spawned, or N processes started by torchrun) is
ONE training: the count above is for all of them together and each process gets ``count // N`` (at least
one). Both launch paths take this one decision, made once (by process 0 under torchrun), so the same
request gives every process the same thread count however it was launched; config.json records the count
per process and a resumed run takes it back as it is (issue 24: torchrun's processes used to take the whole
``RECSYS_THREADS`` each while spawned ones divided it, and the two runs of one test differed from epoch 1).

Why measure: torch's CPU kernels run on OpenMP (libgomp), whose threads meet at a barrier after every
parallel operation. When another process keeps one of the cores busy, the thread that shares that core gets
it only in time slices, and every barrier waits for its next slice: with 2 threads on 2 cores beside one
busy process a NeuMF epoch that takes 62 s (61 s with 2 threads on the quiet machine) did not finish in
400 s, while 1 thread took 68 s. Spinning less (``OMP_WAIT_POLICY=passive``, ``GOMP_SPINCOUNT=1000``)
avoids the stall but costs 1.6-1.7x on the quiet machine (105 s, 96 s), so the remedy is fewer threads
when cores are taken, measured when training starts: ``cores`` threads hash for 0.2 s, and the CPU time they
got over the wall time is the number of cores free to this process (1.0-1.5 of 2 beside one busy process,
1.9-2.0 when quiet, measured here; 0.1 s gave 1.66 quiet at times, too close to call). Several models' results
depend on the thread count (NeuMF, GMF, NCF-MLP, MLP, ALS; MF, the autoencoder and AutoRec gave identical
predictions at 1 and 2 threads), so a resumed run keeps the threads of the run it continues, and
``--threads``/``RECSYS_THREADS`` pin the count for the same answer on any load.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from recsys_core.errors import RecsysError

log = logging.getLogger("recsys_core")

ENV = "RECSYS_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int        # cores available to this process (affinity and cgroup quota)
    concurrent: int   # trainings sharing those cores
    reason: str       # one phrase: why this many
    processes: int = 1  # processes of this one training on this host; ``threads`` is what each one gets

    def describe(self) -> str:
        return f"{self.threads} torch thread{'s' if self.threads != 1 else ''} ({self.reason})"

    def as_dict(self) -> dict:
        return {"threads": self.threads, "cores_available": self.cores, "concurrent_trainings": self.concurrent,
                "threads_reason": self.reason}

    def split(self, processes: int) -> ThreadChoice:
        """This choice (for one whole training) shared by the ``processes`` processes that run it on this host."""
        if processes <= 1:
            return self
        each = max(1, self.threads // processes)
        return ThreadChoice(each, self.cores, self.concurrent, f"{self.reason}; {self.threads} shared by "
                                                                f"{processes} processes", processes)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup CPU quota of this process (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may run on: its CPU affinity, lowered by a cgroup CPU quota (rounded up), >= 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


MEASURE_SECONDS = 0.2
REUSE_SECONDS = 5.0  # trainings started within this long of a measurement reuse it (quick sweep trials)
_last_measure: tuple[float, int, float] | None = None  # (when, threads, free cores)


def measure_free_cores(cores: int, seconds: float = MEASURE_SECONDS) -> float:
    """Cores this process can get right now: ``cores`` threads hash a buffer for ``seconds`` (hashlib
    releases the GIL), and the CPU time they got, summed, over the wall time. A measurement of the last
    ``REUSE_SECONDS`` for the same ``cores`` is reused."""
    global _last_measure
    now = time.monotonic()
    if _last_measure is not None and _last_measure[1] == cores and now - _last_measure[0] < REUSE_SECONDS:
        return _last_measure[2]
    block = bytes(4 << 20)
    cpu = [0.0] * cores
    start = threading.Barrier(cores + 1)

    def spin(i: int) -> None:
        start.wait()
        began, deadline = time.thread_time(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            hashlib.sha256(block).digest()
        cpu[i] = time.thread_time() - began

    workers = [threading.Thread(target=spin, args=(i,), daemon=True) for i in range(cores)]
    for w in workers:
        w.start()
    start.wait()
    began = time.monotonic()
    for w in workers:
        w.join()
    free = min(float(cores), sum(cpu) / max(time.monotonic() - began, 1e-9))
    _last_measure = (time.monotonic(), cores, free)
    return free


def dask_worker_slots() -> int | None:
    """Task slots (threads) of the Dask worker this code runs in, or None outside a Dask worker."""
    try:
        from distributed import get_worker  # distributed (~0.4 s): asked only when a training decides its threads
    except ImportError:
        return None
    try:
        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):
        return None


def check_threads(requested) -> None:
    """A user's ``threads`` value, checked (None or 0 = choose)."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 0):
        raise RecsysError(f"threads must be a positive integer or 0 (= choose by the cores), got {requested!r}")


def decide_threads(requested: int | None = None, concurrent: int | None = None, *, processes: int = 1,
                   resumed: int | None = None, environ=os.environ, root: Path = CGROUP_ROOT,
                   free=measure_free_cores) -> ThreadChoice:
    """The torch threads of each process of one training (see the module's docstring).

    ``requested``: the user's ``threads`` for the whole training (None or 0 = choose). ``concurrent``: how
    many trainings share this process's cores (None = the task slots of the Dask worker it runs in, else 1).
    ``processes``: the processes of this training on this host, which share its count. ``resumed``: the
    threads per process of the run being resumed (kept as they are unless the user asks otherwise).
    ``free(cores) -> float``: the cores free to this process now (:func:`measure_free_cores`).
    """
    check_threads(requested)
    cores = available_cores(root)
    slots = dask_worker_slots()
    if concurrent is None:
        concurrent = slots or 1
    processes = max(1, int(processes))
    where = f"{cores} core{'s' if cores != 1 else ''} available to this process"
    if requested is not None and requested != 0:
        return ThreadChoice(requested, cores, concurrent, f"asked for; {where}").split(processes)
    if resumed:
        return ThreadChoice(int(resumed), cores, concurrent, f"as the run it resumes; {where}", processes)
    env = environ.get(ENV, "").strip()
    if env:
        try:
            value = int(env)
            if value < 1:
                raise ValueError
        except ValueError:
            raise RecsysError(f"{ENV} must be a positive integer, got {env!r}") from None
        return ThreadChoice(value, cores, concurrent, f"{ENV}={value}; {where}").split(processes)
    share = max(1, cores // max(1, int(concurrent)))
    shared = f", shared by {concurrent} trainings at once" if concurrent > 1 else ""
    where = f"{where}{' (Dask worker)' if slots else ''}{shared}"
    if share == 1:
        return ThreadChoice(1, cores, concurrent, where).split(processes)
    measured = free(cores)
    # of 2 cores: 1.0-1.5 measured beside a busy process -> 1 thread, 1.9-2.0 on the quiet machine -> 2
    usable = max(1, math.floor(measured + 0.25))
    if usable >= share:
        return ThreadChoice(share, cores, concurrent, where).split(processes)
    return ThreadChoice(usable, cores, concurrent, f"{where}; {measured:.1f} of them free now, the rest busy with "
                                                   "other work (--threads pins the count)").split(processes)


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op threads to the choice (inter-op threads cannot change once torch has run)."""
    import torch  # torch (~1.5 s): this module also serves flows/parameters.py, which imports no torch

    torch.set_num_threads(choice.threads)
    return choice
