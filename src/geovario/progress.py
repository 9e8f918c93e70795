"""Progress on long work: a tqdm bar on a terminal, and plain lines when the output goes to a log.

Under SLURM, nohup or a pipe, stderr is not a terminal and tqdm's bar is hidden, which leaves a long
run silent between its first and last line. There, :class:`LineProgress` prints one line every
``every_s`` seconds (and at the end): how far, the rate, the ETA and the latest postfix (the loss).
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

from geovario.machine import environment_number

EVERY_S = 30.0  # seconds between progress lines in a log; $GEOVARIO_PROGRESS_EVERY_S overrides it


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _every_s_from_environment() -> float:
    """``$GEOVARIO_PROGRESS_EVERY_S`` (seconds, 0 or more), else :data:`EVERY_S`; anything else is one line."""
    return environment_number("GEOVARIO_PROGRESS_EVERY_S", EVERY_S, "seconds between progress lines (0 or more)", kind=float)


class LineProgress:
    """tqdm's small interface (update, set_postfix, close, a context manager), printed as lines."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0, every_s: float | None = None,
                 stream=None):
        if every_s is None:
            every_s = _every_s_from_environment()
        self.total, self.desc, self.unit, self.n, self.every_s = total, desc, unit, initial, every_s
        self.stream = stream or sys.stderr
        self.start_n, self.start = initial, time.perf_counter()
        self.last_print, self.postfix, self.closed = self.start, "", False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last_print >= self.every_s:
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _print(self, now: float) -> None:
        self.last_print = now
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        done = f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n:,} {self.unit}"
        eta = f", ETA {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc + ': ' if self.desc else ''}{done}, {rate:,.1f} {self.unit}/s{eta}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.start_n:  # the final line; a second close prints nothing
            self._print(time.perf_counter())
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True, **tqdm_options):
    """A tqdm bar on a terminal, progress lines in a log, nothing when ``enabled`` is False."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_options)
    return LineProgress(total, desc, unit, initial)
