"""The ``geovario`` command: one module per command group, each parsing its options and calling the library.

    weights.py     weights geoclip | export-geoclip | rehash
    predict.py     predict, embed-gps
    data.py        data check | import | info
    extract.py     extract
    variogram.py   variogram
    evaluation.py  evaluate, score, compare
    train.py       train
    world.py       simulate, demo, bench losses | study | gps-embeddings
    serve.py       serve
    options.py     what they share: the parser, option types and option groups

Parsing imports no numpy or torch; each command imports what it needs when it runs, so ``--help``
is instant. Errors the user can fix (:class:`GeovarioError`) print as one ``geovario: error: ...``
line with exit status 1; usage errors exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import warnings

from geovario import __version__
from geovario.cli import data, evaluation, extract, predict, serve, train, variogram, weights, world
from geovario.cli.options import Parser
from geovario.errors import GeovarioError, GeovarioWarning, ParameterError

GROUPS = (weights, predict, data, extract, variogram, evaluation, train, world, serve)
# Failures of the machine, not of geovario: no space, no quota, no permission, a read-only or failing disk.
MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="geovario", description="Worldwide image geolocalization in the GeoCLIP family.")
    parser.add_argument("--version", action="version", version=f"geovario {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, GeovarioWarning):
        print(f"geovario: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0, 1 for a problem the user can fix, 2 for a usage error."""
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 0
    previous = _stop_on_sigterm()
    try:
        return args.run(args)
    except GeovarioError as e:
        print(f"geovario: error: {e.as_option() if isinstance(e, ParameterError) else e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("geovario: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the last net: a full disk or a read-only folder a writer did not name itself
        if e.errno not in MACHINE_ERRNOS:
            raise
        print(f"geovario: error: {e.filename or 'writing'}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_sigterm():
    """SIGTERM (kill, a scheduler stopping a job) unwinds like Ctrl+C, so half-written files are removed on the way
    out instead of left behind; returns the handler it replaced (None off the main thread, where it cannot)."""
    try:
        return signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
