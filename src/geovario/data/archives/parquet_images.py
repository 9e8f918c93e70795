"""Parquet files with an image-bytes column, as Hugging Face datasets publish them.

The image column is either plain binary or the ``datasets`` Image feature, a struct whose ``bytes``
field holds the encoded file. Coordinates come from lat/lon columns (``lat``/``latitude``,
``lon``/``lng``/``longitude``), the id from ``id``/``key``/``image_id`` or the row number. A member
is located by (row group, row within it); reading keeps this process's last row group's image
column, so reading in order costs one decode of each group.
"""

from __future__ import annotations

import math
from pathlib import Path

from geovario.data.archives import MAX_MEMBER_BYTES, Member
from geovario.data.archives.handles import handle
from geovario.data.latlon_csv import LAT_NAMES, LON_NAMES, as_coordinate
from geovario.data.records import Dataset, Problem, Record
from geovario.errors import GeovarioError

ID_NAMES = ("id", "key", "image_id", "img_id", "__key__")
IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "image_bytes")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise GeovarioError("reading parquet needs the pyarrow package: pip install 'geovario[archives]'") from None
    return pyarrow


def _open(path: Path):
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise GeovarioError(f"{path}: truncated or not a parquet file ({str(e).splitlines()[0]})") from None


def _pick(names: dict[str, str], wanted: tuple[str, ...]) -> str | None:
    return next((names[w] for w in wanted if w in names), None)


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise GeovarioError(f"{path}: no .parquet files")
    return files


def read_parquet_dataset(path: Path) -> Dataset:
    """Records for every row of a parquet file (or a folder of them); bad rows become problems."""
    pa = _pyarrow()
    records, problems, seen, n_rows = [], [], {}, 0
    for file in parquet_files(path):
        parquet = _open(file)
        schema = parquet.schema_arrow
        names = {n.lower(): n for n in schema.names}
        lat, lon = _pick(names, LAT_NAMES), _pick(names, LON_NAMES)
        image = _pick(names, IMAGE_NAMES)
        missing = [what for what, col in (("lat", lat), ("lon", lon), ("image", image)) if col is None]
        if missing:
            raise GeovarioError(f"{file}: missing {' and '.join(missing)} column{'s' if len(missing) > 1 else ''} "
                                f"(found: {', '.join(schema.names)}); expected lat/latitude, lon/lng/longitude and an image-bytes column")
        kind = schema.field(image).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)):
            raise GeovarioError(f"{file}: column {image} is {kind}, not image bytes (binary, or a struct with a 'bytes' field)")
        for column in (lat, lon):
            if pa.types.is_boolean(schema.field(column).type):
                raise GeovarioError(f"{file}: column {column} holds booleans, not coordinates")
        id_column = _pick(names, ID_NAMES)
        row_number = 0
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=[c for c in (id_column, lat, lon) if c])
            except (pa.ArrowException, OSError) as e:
                raise GeovarioError(f"{file}: row group {group} unreadable ({str(e).splitlines()[0]})") from None
            columns = table.to_pydict()
            for i in range(table.num_rows):
                row_number, n_rows = row_number + 1, n_rows + 1
                image_id = str(columns[id_column][i]) if id_column else str(row_number - 1)
                raw_lat, raw_lon = columns[lat][i], columns[lon][i]
                try:
                    y, x = as_coordinate(raw_lat), as_coordinate(raw_lon)
                except (TypeError, ValueError):
                    problems.append(Problem(str(file), row_number, f"non-numeric lat {raw_lat!r} or lon {raw_lon!r}", "non-numeric"))
                    continue
                if not (math.isfinite(y) and math.isfinite(x)) or abs(y) > 90 or abs(x) > 180:
                    problems.append(Problem(str(file), row_number, f"lat/lon out of range or not finite (lat={raw_lat}, lon={raw_lon})",
                                            "bad coordinates"))
                    continue
                if image_id in seen:
                    problems.append(Problem(str(file), row_number, f"duplicate id {image_id!r} (first at {seen[image_id]})", "duplicate id"))
                    continue
                seen[image_id] = f"{file}:{row_number}"
                records.append(Record(image_id, Member(file, image_id, "parquet", group, i), y, x, {}, row_number))
    return Dataset(path, "parquet", records, problems, n_rows=n_rows)


def _group_images(path: Path, group: int) -> list:
    """This process's cached image column of one row group."""
    cache = handle("parquet-group", path, lambda p: {})
    if group not in cache:
        parquet = handle("parquet", path, _open)
        column = _pick({n.lower(): n for n in parquet.schema_arrow.names}, IMAGE_NAMES)
        pa = _pyarrow()
        try:
            cache.clear()
            cache[group] = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise GeovarioError(f"{path}: row group {group} unreadable ({str(e).splitlines()[0]})") from None
    return cache[group]


def read(member: Member) -> bytes:
    images = _group_images(member.archive, member.offset)
    if member.size >= len(images):
        raise GeovarioError(f"{member}: row not found (the file changed since it was read)")
    data = _image_bytes(images[member.size])
    if data is None:
        raise GeovarioError(f"{member}: no image bytes in this row")
    if len(data) > MAX_MEMBER_BYTES:
        raise GeovarioError(f"{member}: refused, {len(data):,} bytes is more than the {MAX_MEMBER_BYTES:,} allowed for an image")
    return bytes(data)
