"""Start-up time of ``geovario`` commands that do no work: ``--help`` of every command, whole process.

Anchor: ``python -c pass`` (the interpreter alone) in the same run. Each command is timed as a whole
process, best of ``--repeat``, and reported in seconds and as a multiple of the anchor; the target is
0.3 s per ``--help``. ``--source DIR`` times another checkout's ``src`` (e.g. a worktree of an older
commit) with the same interpreter, so before and after come from one machine and one run.

    python benchmarks/cli_startup.py [--repeat 5] [--source /tmp/old-checkout]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    ["--help"], ["predict", "--help"], ["train", "--help"], ["evaluate", "--help"], ["score", "--help"],
    ["compare", "--help"], ["variogram", "--help"], ["extract", "--help"], ["data", "check", "--help"],
    ["serve", "--help"], ["simulate", "--help"], ["bench", "study", "--help"],
]


def best_of(command: list[str], repeat: int, env: dict) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timings per command; the best is kept (default 5)")
    parser.add_argument("--source", type=Path, help="a geovario checkout whose src/ to time instead of the installed package")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.source:
        env["PYTHONPATH"] = str(args.source.resolve() / "src")
    anchor = best_of([sys.executable, "-c", "pass"], args.repeat, env)
    print(f"best of {args.repeat}; anchor: python -c pass {anchor:.3f} s" + (f"; source {args.source}" if args.source else ""))
    worst = 0.0
    for command in COMMANDS:
        seconds = best_of([sys.executable, "-m", "geovario", *command], args.repeat, env)
        worst = max(worst, seconds)
        print(f"  geovario {' '.join(command):<22} {seconds:6.3f} s  {seconds / anchor:6.1f}x the anchor")
    print(f"slowest: {worst:.3f} s ({'within' if worst <= 0.3 else 'over'} the 0.3 s target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
