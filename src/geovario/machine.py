"""What this machine offers a job, without importing anything heavy."""

from __future__ import annotations

import math
import os

from geovario.errors import GeovarioError


def environment_number(name: str, default, what: str, kind=int, minimum: float = 0):
    """``$name`` as a number of ``kind`` no smaller than ``minimum``, ``default`` when unset or blank; anything else is
    one line naming the variable (``what`` says what it should hold)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        raise GeovarioError(f"{name}: expected {what}, got {text!r}")
    return value


def available_cores() -> int:
    """The cores this process may run on (the affinity mask under SLURM or taskset, where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cores_per_process(processes: int | None = None) -> int:
    """This process's share of the cores when ``processes`` run on the machine at once (default: the processes
    torchrun started on it, LOCAL_WORLD_SIZE); at least 1."""
    if processes is None:
        processes = environment_number("LOCAL_WORLD_SIZE", 1, "the number of processes torchrun started on this machine (1 or more)",
                                       minimum=1)
    return max(1, available_cores() // processes)


def memory_bytes(device) -> int | None:
    """The memory a job on ``device`` can have at most: the GPU's, or this machine's RAM (None where unknown)."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
