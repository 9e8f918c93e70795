"""tar shards in the webdataset layout: ``KEY.jpg`` beside ``KEY.json`` (or keyed by a CSV).

An uncompressed tar stores each member's bytes contiguously, so a listed member is read back with
one seek and one read. Links, devices and compressed shards are refused.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath

from geovario.data.archives import SIDECAR_SUFFIXES, Listing, Member, check_member, member_problem, unsafe_name
from geovario.data.archives.handles import handle
from geovario.errors import GeovarioError


def webdataset_key(name: str) -> str:
    """webdataset's key: the member path up to the first dot of its file name."""
    path = PurePosixPath(name)
    return str(path.parent / path.name.split(".", 1)[0]) if str(path.parent) != "." else path.name.split(".", 1)[0]


def list_members(path: Path) -> Listing:
    listing = Listing()
    try:
        end = path.stat().st_size
        with tarfile.open(path, "r:") as archive:
            for info in archive:
                if info.isdir():
                    continue
                if not info.isfile():
                    why = unsafe_name(info.name) or f"{'a link' if info.issym() or info.islnk() else 'not a regular file'}"
                    listing.problems.append(member_problem(path, info.name, f"refused: {why}", "unsafe path"))
                    continue
                suffix = PurePosixPath(info.name).suffix.lower()
                if suffix in SIDECAR_SUFFIXES and not unsafe_name(info.name):
                    if suffix == ".json":
                        listing.sidecars[webdataset_key(info.name)] = Member(path, info.name, "tar", info.offset_data, info.size)
                    continue
                problem = check_member(path, info.name, info.size)
                if problem is None and info.offset_data + info.size > end:
                    problem = member_problem(path, info.name, f"truncated member ({end - info.offset_data:,} of {info.size:,} bytes "
                                             "in the shard)", "truncated")
                if problem:
                    listing.problems.append(problem)
                else:
                    listing.members.append(Member(path, info.name, "tar", info.offset_data, info.size))
    except tarfile.ReadError as e:
        raise GeovarioError(f"{path}: truncated, compressed or not a tar archive ({e})") from None
    except OSError as e:
        raise GeovarioError(f"{path}: cannot read ({e.strerror or e})") from None
    return listing


def read(member: Member) -> bytes:
    file = handle("tar", member.archive, lambda p: open(p, "rb"))
    file.seek(member.offset)
    data = file.read(member.size)
    if len(data) != member.size:
        raise GeovarioError(f"{member}: truncated member ({len(data)} of {member.size} bytes)")
    return data


def read_json(member: Member) -> dict:
    """A webdataset sidecar, parsed."""
    try:
        value = json.loads(read(member))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GeovarioError(f"{member}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise GeovarioError(f"{member}: expected a JSON object with lat and lon")
    return value
