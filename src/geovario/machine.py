"""What this machine offers a job, without importing anything heavy."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (the affinity mask under SLURM or taskset, where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
