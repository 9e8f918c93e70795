"""What this machine offers a job, without importing anything heavy."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (the affinity mask under SLURM or taskset, where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cores_per_process() -> int:
    """This process's share of the cores when torchrun starts several on the machine (LOCAL_WORLD_SIZE)."""
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
