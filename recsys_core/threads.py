"""How many threads torch may use for one training: chosen, not left to torch's default.

Measured on the shared 2-core machine (issue 14): with torch's default intra-op threads an MF run took 100 s
instead of 17 s and a NeuMF epoch 66 s instead of 7 s (same results): torch's default is the number of
cores it sees in /proc, not the share this process really has (its CPU affinity, a container's cgroup CPU
quota), and several trainings at once (Dask workers) each start that many threads.

:func:`decide_threads` is THE decision, used by ``recsys train --threads``, the flow's ``threads`` parameter
and the flow's tasks on Dask workers: an explicit request wins; else ``RECSYS_THREADS`` (the operator's
setting for a machine, e.g. a compose worker); else the cores available to this process divided by the
trainings that share them (one per task slot of a Dask worker, or what the caller says), at least one.
"""

from __future__ import annotations

import logging
import math
import os
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

    def describe(self) -> str:
        return f"{self.threads} torch thread{'s' if self.threads != 1 else ''} ({self.reason})"

    def as_dict(self) -> dict:
        return {"threads": self.threads, "cores_available": self.cores, "concurrent_trainings": self.concurrent,
                "threads_reason": self.reason}


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


def dask_worker_slots() -> int | None:
    """Task slots (threads) of the Dask worker this code runs in, or None outside a Dask worker."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):
        return None


def decide_threads(requested: int | None = None, concurrent: int | None = None, *,
                   environ=os.environ, root: Path = CGROUP_ROOT) -> ThreadChoice:
    """The torch threads of one training (see the module's docstring).

    ``requested``: the user's ``threads`` (None or 0 = choose). ``concurrent``: how many trainings share
    this process's cores (None = the task slots of the Dask worker it runs in, else 1).
    """
    cores = available_cores(root)
    slots = dask_worker_slots()
    if concurrent is None:
        concurrent = slots or 1
    where = f"{cores} core{'s' if cores != 1 else ''} available to this process"
    if requested is not None and requested != 0:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise RecsysError(f"threads must be a positive integer or 0 (= choose by the cores), got {requested!r}")
        return ThreadChoice(requested, cores, concurrent, f"asked for; {where}")
    env = environ.get(ENV, "").strip()
    if env:
        try:
            value = int(env)
            if value < 1:
                raise ValueError
        except ValueError:
            raise RecsysError(f"{ENV} must be a positive integer, got {env!r}") from None
        return ThreadChoice(value, cores, concurrent, f"{ENV}={value}; {where}")
    threads = max(1, cores // max(1, int(concurrent)))
    shared = f", shared by {concurrent} trainings at once" if concurrent > 1 else ""
    where = f"{where}{' (Dask worker)' if slots else ''}{shared}"
    return ThreadChoice(threads, cores, concurrent, where)


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op threads to the choice (inter-op threads cannot change once torch has run)."""
    import torch

    torch.set_num_threads(choice.threads)
    return choice
