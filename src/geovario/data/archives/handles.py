"""Open archive handles, one set per process.

A DataLoader worker is forked from the main process: a handle opened before the fork would share
its file offset with every worker. Handles are therefore keyed by process id and opened on first
use in each process, and a few are kept open so that reading shard after shard stays cheap.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

_KEEP = 8
_handles: OrderedDict[tuple[int, str, Path], object] = OrderedDict()


def handle(kind: str, path: Path, opener: Callable[[Path], object]):
    """This process's open handle on ``path`` (opened with ``opener`` the first time)."""
    key = (os.getpid(), kind, path)
    found = _handles.get(key)
    if found is not None:
        _handles.move_to_end(key)
        return found
    opened = opener(path)
    _handles[key] = opened
    while len(_handles) > _KEEP:
        (pid, _, _), old = _handles.popitem(last=False)
        if pid == os.getpid() and hasattr(old, "close"):
            old.close()
    return opened
