"""Images inside archives, read in place: OSV5M's zips, webdataset tar shards, GeoEstimation's msgpack
shards and Hugging Face parquet files.

Each format is one small module that lists an archive's members (checking each name, size and type
once, up front) and reads one member's bytes back. A listed member is a :class:`Member`: the
archive, the member's name and where its bytes are, so any process can read it again without
unpacking anything to disk. Each process keeps its own open handles (see :mod:`.handles`), so
DataLoader workers never share a file offset.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from geovario.data.image_index import IMAGE_SUFFIXES
from geovario.data.records import Problem
from geovario.errors import GeovarioError

# Sidecar files that belong beside images in a shard (webdataset keeps each image's labels this way).
SIDECAR_SUFFIXES = {".json", ".txt", ".cls", ".csv"}
# A member that claims more than this is refused before any byte is read: no photo in OSV5M or
# MP-16 comes near it, while a decompression bomb does.
MAX_MEMBER_BYTES = 256 * 2**20
# zip deflate gains almost nothing on JPEG or PNG (both already compressed); a member that expands
# more than 100-fold, past 1 MiB, is treated as a zip bomb.
MAX_RATIO, RATIO_FLOOR = 100, 2**20


@dataclass(frozen=True)
class Member:
    """One image inside an archive. ``offset``/``size`` locate it where the format allows it."""

    archive: Path
    name: str
    kind: str  # zip | tar | msgpack | parquet
    offset: int = 0  # tar: data offset; msgpack: record offset; parquet: row group
    size: int = 0  # tar: data size; msgpack: record size; parquet: row within the group

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem


@dataclass
class Listing:
    """What an archive (or a folder of them) holds: usable members, and every member refused, with why."""

    members: list[Member] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    sidecars: dict[str, Member] = field(default_factory=dict)  # webdataset: key -> its .json

    def extend(self, other: "Listing") -> None:
        self.members += other.members
        self.problems += other.problems
        self.sidecars |= other.sidecars


ARCHIVE_SUFFIXES = {".zip": "zip", ".tar": "tar", ".msg": "msgpack", ".msgpack": "msgpack", ".parquet": "parquet"}
FORMAT_MODULES = {"zip": "zip_members", "tar": "tar_shards", "msgpack": "msgpack_shards", "parquet": "parquet_images"}
COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def archive_kind(path: Path) -> str | None:
    """The archive format a file's name says it is, or None."""
    return ARCHIVE_SUFFIXES.get(path.suffix.lower())


def unsafe_name(name: str) -> str | None:
    """Why a member name may not be used (it would escape its folder if unpacked), or None."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (name[1:2] == ":" and name[:1].isalpha()):
        return f"member path {name!r} is absolute"
    if ".." in path.parts:
        return f"member path {name!r} escapes the archive's folder"
    return None


def member_problem(archive: Path, name: str, why: str, kind: str) -> Problem:
    return Problem(f"{archive}:{name}", 0, why, kind)


def check_member(archive: Path, name: str, size: int, compressed: int | None = None) -> Problem | None:
    """The checks every format makes on a member before listing it: path, type, size."""
    unsafe = unsafe_name(name)
    if unsafe:
        return member_problem(archive, name, f"refused: {unsafe}", "unsafe path")
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return member_problem(archive, name, f"refused: unexpected file type {suffix or '(none)'!r} (expected an image)",
                              "unexpected type")
    if size > MAX_MEMBER_BYTES:
        return member_problem(archive, name, f"refused: {size:,} bytes is more than the {MAX_MEMBER_BYTES:,} allowed for an image",
                              "zip bomb")
    if compressed is not None and size > RATIO_FLOOR and size > MAX_RATIO * max(compressed, 1):
        return member_problem(archive, name, f"refused: expands {size / max(compressed, 1):.0f}-fold ({compressed:,} -> {size:,} bytes), "
                              "a zip bomb", "zip bomb")
    return None


def list_archive(path: Path) -> Listing:
    """The members of one archive, by its suffix."""
    name = path.name.lower()
    if name.endswith(COMPRESSED_TAR):
        raise GeovarioError(f"{path}: compressed tar shards cannot be read in place; decompress them to .tar first")
    kind = archive_kind(path)
    if kind not in ("zip", "tar", "msgpack"):
        raise GeovarioError(f"{path}: not an archive geovario reads (.zip, .tar, .msg, .msgpack)")
    return _format_module(kind).list_members(path)


def archives_in(folder: Path) -> list[Path]:
    """The archives directly in, or anywhere below, ``folder``, in name order."""
    found = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if archive_kind(Path(name)) in ("zip", "tar", "msgpack") or name.lower().endswith(COMPRESSED_TAR):
                found.append(Path(root) / name)
    return sorted(found)


@functools.lru_cache(maxsize=4)
def folder_listing(folder: Path) -> tuple[Listing, dict[str, Member]]:
    """Every archive below ``folder`` listed once: the listing, and its members by name and by stem.

    A name (or stem) held by two members is a duplicate: the first keeps it, the second is reported.
    An archive that cannot be read at all is one problem, and the others are still listed.
    """
    listing, by_name = Listing(), {}
    for archive in archives_in(folder):
        try:
            listing.extend(list_archive(archive))
        except GeovarioError as e:
            listing.problems.append(Problem(str(archive), 0, str(e).removeprefix(f"{archive}: "), "bad archive"))
    kept = []
    for member in listing.members:
        first = by_name.get(member.name)
        if first is not None:
            listing.problems.append(member_problem(member.archive, member.name, f"duplicate member (first in {first.archive})",
                                                   "duplicate member"))
            continue
        by_name[member.name] = member
        kept.append(member)
    listing.members = kept
    for member in kept:
        by_name.setdefault(member.stem, member)
    return listing, by_name


def find_member(folder: Path, image_id: str) -> Member | None:
    """The member an id names, in the archives below ``folder``: by its full name, then by its stem."""
    _, by_name = folder_listing(folder.resolve())
    return by_name.get(image_id) or by_name.get(PurePosixPath(image_id).stem)


def read_member(member: Member) -> bytes:
    """The member's bytes, read in place through this process's handle on its archive."""
    return _format_module(member.kind).read(member)


def _format_module(kind: str):
    """The module that lists and reads one kind of archive."""
    import importlib

    return importlib.import_module(f"geovario.data.archives.{FORMAT_MODULES[kind]}")


def load_image(ref):
    """(RGB image, original mode) of a record's image: a file, or a member read in place."""
    from geovario.images import ImageError, open_image

    if not isinstance(ref, Member):
        return open_image(ref)
    try:
        data = read_member(ref)
    except GeovarioError as e:
        raise ImageError(str(e), "corrupt") from None
    return open_image(io.BytesIO(data), name=str(ref))


def image_location(ref) -> str:
    """Where a record's image is, as one string for indexes and reports (absolute)."""
    if isinstance(ref, Member):
        return f"{os.path.abspath(ref.archive)}:{ref.name}"
    return os.path.abspath(ref) if ref else ""
