"""Measurement helpers shared by the benchmark scripts (run as `python bench/<script>.py`, so this
folder is on sys.path)."""

from __future__ import annotations

import resource
from pathlib import Path


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident set size now (VmRSS) and at its peak (VmHWM) of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        for key, name in (("VmRSS:", "rss"), ("VmHWM:", "peak")):
            if line.startswith(key):
                found[name] = int(line.split()[1]) / 1024
    return found


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MB."""
    peak = memory_mb().get("peak")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
