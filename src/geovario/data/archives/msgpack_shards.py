"""GeoEstimation's msgpack shards (Müller-Budack et al., ECCV 2018; the MP-16 release used by
GeoCLIP's and later papers' training code): a stream of records ``{"id": ..., "image": <bytes>}``.

One pass over a shard records each record's offset and size; reading a member is then one seek,
one read and one unpack. A shard that ends inside a record is reported as truncated.
"""

from __future__ import annotations

from pathlib import Path

from geovario.data.archives import Listing, Member, check_member, member_problem
from geovario.data.archives.handles import handle
from geovario.errors import GeovarioError


def _msgpack():
    try:
        import msgpack
    except ImportError:
        raise GeovarioError("reading msgpack shards needs the msgpack package: pip install 'geovario[archives]'") from None
    return msgpack


def _field(record: dict, key: str):
    return record.get(key, record.get(key.encode()))


def list_members(path: Path) -> Listing:
    msgpack = _msgpack()
    listing = Listing()
    try:
        end = path.stat().st_size
        with open(path, "rb") as file:
            unpacker = msgpack.Unpacker(file, raw=False, max_buffer_size=2 * 2**30, strict_map_key=False)
            offset, n = 0, 0
            while True:
                try:
                    record = unpacker.unpack()
                except msgpack.OutOfData:
                    break
                except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
                    listing.problems.append(member_problem(path, f"record {n}", f"unreadable record at byte {offset:,} ({e}); "
                                                           "the rest of the shard is skipped", "corrupt record"))
                    return listing
                size, n = unpacker.tell() - offset, n + 1
                image_id, image = (_field(record, "id"), _field(record, "image")) if isinstance(record, dict) else (None, None)
                if isinstance(image_id, bytes):
                    image_id = image_id.decode("utf-8", "replace")
                if not isinstance(image_id, str) or not image_id or not isinstance(image, bytes):
                    listing.problems.append(member_problem(path, f"record {n - 1}", "bad record: expected a map with a string "
                                                           "'id' and bytes 'image'", "bad record"))
                else:
                    name = image_id if "." in image_id.rsplit("/", 1)[-1] else image_id + ".jpg"
                    problem = check_member(path, name, len(image))
                    if problem:
                        listing.problems.append(problem)
                    else:
                        listing.members.append(Member(path, image_id, "msgpack", offset, size))
                offset = unpacker.tell()
            if offset != end:
                listing.problems.append(member_problem(path, f"record {n}", f"truncated record: the shard ends {end - offset:,} "
                                                       "bytes into it", "truncated"))
    except OSError as e:
        raise GeovarioError(f"{path}: cannot read ({e.strerror or e})") from None
    return listing


def read(member: Member) -> bytes:
    msgpack = _msgpack()
    file = handle("msgpack", member.archive, lambda p: open(p, "rb"))
    file.seek(member.offset)
    data = file.read(member.size)
    try:
        record = msgpack.unpackb(data, raw=False, strict_map_key=False)
        image = _field(record, "image")
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException) as e:
        raise GeovarioError(f"{member}: corrupt or truncated record ({e})") from None
    if not isinstance(image, bytes):
        raise GeovarioError(f"{member}: record has no image bytes")
    return image
