"""Every output geovario writes goes through here: parent folders are created, a file appears whole or
not at all, and a destination that cannot be written (a file in the way, no permission, a full disk) is
one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geovario.errors import GeovarioError


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def output_dir(path: str | Path) -> Path:
    """Create ``path`` (and its parents) as a folder for outputs, or say in one line why it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise GeovarioError(f"{path}: cannot create the output folder: a file of that name is in the way") from None
    except NotADirectoryError:
        raise GeovarioError(f"{path}: cannot create the output folder: a parent of it is a file") from None
    except OSError as e:
        raise GeovarioError(f"{path}: cannot create the output folder ({_reason(e)})") from None
    return path


def output_file(path: str | Path) -> Path:
    """Check, before a long computation, that ``path`` can be written as a file: its folder can be made and it is
    not a folder itself. (The write itself still goes through :func:`atomic_path`.)"""
    path = Path(path)
    output_dir(path.parent)
    if path.is_dir():
        raise GeovarioError(f"{path}: is a folder; give a file name")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed onto ``path``.

    The temporary name keeps ``path``'s suffix, so writers that go by it (matplotlib) still work.
    An OSError while writing or renaming becomes a one-line error naming ``path``; the temporary file
    is removed, and an existing ``path`` is left as it was.
    """
    path = output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise GeovarioError(f"{path}: cannot write ({_reason(e)})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise GeovarioError(f"{path}: cannot write ({_reason(e)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_folder(staged: Path, final: Path) -> None:
    """Put the fully written folder ``staged`` at ``final`` by renames. A folder already at ``final`` is set
    aside first and removed only once the new one is in place."""
    previous = final.with_name(f".{final.name}.old")
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        os.replace(final, previous)
    os.replace(staged, final)
    shutil.rmtree(previous, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_path`; the format follows the suffix (PNG without one)."""
    path = Path(path)
    kind = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if kind not in supported:
        raise GeovarioError(f"{path}: cannot draw a .{kind} file; use one of {', '.join('.' + k for k in sorted(supported))}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=kind, **kwargs)
    return path


def reserve(path: str | Path) -> None:
    """Allocate a freshly created (sparse) file's blocks now. Writing into a memory map of a sparse file on a full
    disk kills the process with SIGBUS; reserved first, a full disk is an OSError (one line) before anything is written."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: nothing to reserve with
                return
            raise
