"""zip archives, as OSV5M ships its images: ``images/<split>/NN.zip`` with members ``NN/<id>.jpg``.

zip keeps a central directory at its end, so listing needs no pass over the data and a truncated
download is caught at once: it has no directory to read.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from geovario.data.archives import Listing, Member, check_member
from geovario.data.archives.handles import handle
from geovario.errors import GeovarioError


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise GeovarioError(f"{path}: truncated or not a zip archive ({e})") from None
    except OSError as e:
        raise GeovarioError(f"{path}: cannot open ({e.strerror or e})") from None


def list_members(path: Path) -> Listing:
    listing = Listing()
    with _open(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            problem = check_member(path, info.filename, info.file_size, info.compress_size)
            if problem:
                listing.problems.append(problem)
            else:
                listing.members.append(Member(path, info.filename, "zip"))
    return listing


def read(member: Member) -> bytes:
    archive = handle("zip", member.archive, _open)
    try:
        return archive.read(member.name)
    except KeyError:
        raise GeovarioError(f"{member}: member not found (the archive changed since it was listed)") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise GeovarioError(f"{member}: corrupt or truncated member ({e})") from None
