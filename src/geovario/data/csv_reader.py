"""What every CSV-based format shares: reading rows with true line numbers, checking them, building records.

A format only says which columns hold the id, the coordinates and the metadata, and how an id
maps to an image file; everything that can go wrong with a row is handled here, once.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from geovario.data.archives import Member, archives_in, find_member, folder_listing
from geovario.data.records import Dataset, Problem, Record
from geovario.errors import GeovarioError


@dataclass(frozen=True)
class CsvFormat:
    """A dataset's CSV layout. Column names match case-insensitively."""

    name: str
    description: str
    id_column: str
    lat_column: str
    lon_column: str
    # Columns that, all present, identify this format for --format auto.
    signature: tuple[str, ...]
    # Columns that must be absent for auto-detection (to tell near-identical layouts apart).
    absent: tuple[str, ...] = ()
    # Kept as metadata on each record (e.g. OSV5M's admin labels), when present.
    meta_columns: tuple[str, ...] = ()
    # id (and the images folder) -> image path; None when the format has no image column.
    image_path: Callable[[str, Path], Path] | None = None
    # The id is a path relative to the images folder, so it must not escape it.
    id_is_path: bool = True
    extra: dict = field(default_factory=dict)

    def matches(self, columns: set[str]) -> bool:
        return set(self.signature) <= columns and not (set(self.absent) & columns)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if it stays inside ``folder`` (no absolute paths, no ``..`` escapes)."""
    candidate = Path(relative)
    if candidate.is_absolute():
        return None
    resolved = (folder / candidate).resolve()
    return resolved if resolved.is_relative_to(folder.resolve()) else None


def read_csv_dataset(
    path: Path,
    fmt: CsvFormat,
    images: Path | None,
    check_images: bool = True,
    auto_detected: bool = False,
) -> Dataset:
    """Read ``path`` as ``fmt``; every unusable row becomes a :class:`Problem`, never an exception."""
    problems: list[Problem] = []
    records: list[Record] = []
    name = str(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise GeovarioError(f"{path}: cannot open ({e.strerror})") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as e:
            raise GeovarioError(f"{path}: not a readable CSV ({e})") from None
        if not header or not any(h.strip() for h in header):
            raise GeovarioError(f"{path}: empty CSV (no header row)")
        columns = {h.strip().lower(): i for i, h in enumerate(header)}
        wanted = {"id": fmt.id_column, "lat": fmt.lat_column, "lon": fmt.lon_column}
        missing = [col for col in wanted.values() if col.lower() not in columns]
        if missing:
            raise GeovarioError(
                f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} for format "
                f"{fmt.name} (found: {', '.join(h.strip() for h in header)})"
            )
        id_i, lat_i, lon_i = (columns[c.lower()] for c in wanted.values())
        meta_i = {c: columns[c.lower()] for c in fmt.meta_columns if c.lower() in columns}
        seen: dict[str, int] = {}
        in_archives = None  # whether the images folder holds archives; looked at on the first image not found as a file
        n_rows = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as e:
                problems.append(Problem(name, reader.line_num, f"unreadable row ({e})", "unreadable row"))
                continue
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue  # blank line
            n_rows += 1
            if len(row) <= max(id_i, lat_i, lon_i):
                problems.append(Problem(name, line, f"not a data row, {len(row)} fields where the header has {len(header)}: {','.join(row)[:60]!r}", "not a data row"))
                continue
            raw_lat, raw_lon, image_id = row[lat_i].strip(), row[lon_i].strip(), row[id_i].strip()
            lat, lon = _number(raw_lat), _number(raw_lon)
            if lat is None or lon is None:
                bad = [f"{label} {raw!r}" for label, raw, value in (("lat", raw_lat, lat), ("lon", raw_lon, lon)) if value is None]
                problems.append(Problem(name, line, f"non-numeric {' and '.join(bad)} (a summary or footer row?)", "non-numeric"))
                continue
            if not (math.isfinite(lat) and math.isfinite(lon)):
                problems.append(Problem(name, line, f"lat/lon not finite (lat={raw_lat}, lon={raw_lon})", "bad coordinates"))
                continue
            if abs(lat) > 90 or abs(lon) > 180:
                what = f"latitude {lat} outside [-90, 90]" if abs(lat) > 90 else f"longitude {lon} outside [-180, 180]"
                problems.append(Problem(name, line, what, "bad coordinates"))
                continue
            if not image_id:
                problems.append(Problem(name, line, f"empty {fmt.id_column}", "bad row"))
                continue
            if image_id in seen:
                problems.append(Problem(name, line, f"duplicate id {image_id!r} (first on line {seen[image_id]})", "duplicate id"))
                continue
            seen[image_id] = line
            image = None
            if images is not None and fmt.image_path is not None:
                if fmt.id_is_path and inside(images, image_id) is None:
                    problems.append(Problem(name, line, f"image path {image_id!r} escapes the images folder {images}", "unsafe path"))
                    continue
                image = fmt.image_path(image_id, images)
                if check_images and (image is None or not image.is_file()):
                    if in_archives is None:
                        in_archives = bool(archives_in(images))
                    if in_archives:  # OSV5M's zips, msgpack or tar shards
                        image = find_member(images, image_id) or image
                if check_images and (image is None or not (isinstance(image, Member) or image.is_file())):
                    where = f"image {image_id!r} not found in {images} nor in the archives below it" if in_archives \
                        else f"image file not found: {image or image_id}"
                    problems.append(Problem(name, line, where, "missing image"))
                    continue
            meta = {key: row[i].strip() for key, i in meta_i.items() if i < len(row)}
            records.append(Record(image_id, image, lat, lon, meta, line))
    if in_archives:  # members refused while listing the archives: unsafe, bombs, duplicates, unreadable
        problems += folder_listing(images.resolve())[0].problems
    return Dataset(path, fmt.name, records, problems, auto_detected, n_rows)
