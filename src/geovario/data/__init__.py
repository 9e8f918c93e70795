"""Dataset readers. Every format yields the same :class:`Record` (id, image path, lat, lon, metadata).

``read_dataset(path)`` picks the format from the CSV header (or reads a folder of photos by EXIF)
and returns the usable records together with a report of every row it could not use.
"""

from __future__ import annotations

import csv
from pathlib import Path

from geovario.data import im2gps, mp16, osv5m, streetscapes, yfcc
from geovario.data.csv_reader import CsvFormat, read_csv_dataset
from geovario.data.exif_folder import read_exif_folder
from geovario.data.records import SWAPPED, Dataset, Problem, Record
from geovario.errors import GeovarioError

# Detection order matters only where signatures overlap (im2gps has AUTHOR, yfcc must not).
CSV_FORMATS: dict[str, CsvFormat] = {f.name: f for f in (osv5m.FORMAT, streetscapes.FORMAT, im2gps.FORMAT, yfcc.FORMAT, mp16.FORMAT)}
ARCHIVE_FORMATS = ("webdataset", "parquet")  # archives that carry their own coordinates
FORMAT_NAMES = ["auto", *CSV_FORMATS, "folder", *ARCHIVE_FORMATS]

__all__ = ["CSV_FORMATS", "FORMAT_NAMES", "Dataset", "Problem", "Record", "detect_format", "read_dataset"]


def detect_format(path: Path) -> CsvFormat:
    """The CSV format whose columns the header has."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise GeovarioError(f"{path}: cannot read the CSV header ({e})") from None
    if not header or not any(h.strip() for h in header):
        raise GeovarioError(f"{path}: empty CSV (no header row)")
    columns = {h.strip().lower() for h in header}
    for fmt in CSV_FORMATS.values():
        if fmt.matches(columns):
            return fmt
    # Nothing matches whole: if one format's id column is there, name what that format misses.
    for fmt in CSV_FORMATS.values():
        if fmt.id_column.lower() in columns:
            missing = [c for c in (fmt.lat_column, fmt.lon_column) if c.lower() not in columns]
            if missing:
                raise GeovarioError(f"{path}: missing column {', '.join(missing)} (the header looks like {fmt.description})")
    known = "; ".join(f.description for f in CSV_FORMATS.values())
    raise GeovarioError(f"{path}: cannot tell the format from columns {', '.join(h.strip() for h in header)} (known: {known})")


def default_images_folder(path: Path) -> Path:
    """Where images are looked for without --images: ``images/<split>`` or ``images`` beside the CSV."""
    for candidate in (path.parent / "images" / path.stem, path.parent / "images"):
        if candidate.is_dir():
            return candidate
    return path.parent


def read_dataset(
    path: str | Path,
    format: str = "auto",
    images: str | Path | None = None,
    check_images: bool = True,
) -> Dataset:
    """Read a dataset CSV (or a folder of geotagged photos) into records plus a problem report."""
    path = Path(path)
    if not path.exists():
        raise GeovarioError(f"{path}: not found")
    archive_format = _archive_format(path) if format in ("auto", *ARCHIVE_FORMATS) else None
    if format in ARCHIVE_FORMATS or archive_format:
        dataset = _read_archive_dataset(path, format if format in ARCHIVE_FORMATS else archive_format)
        dataset.auto_detected = format == "auto"
        _check_swapped(dataset, "lat", "lon")
        return dataset
    if path.is_dir():
        if format not in ("auto", "folder"):
            raise GeovarioError(f"{path}: is a folder; --format {format} needs a CSV file")
        dataset = read_exif_folder(path)
        dataset.auto_detected = format == "auto"
        return dataset
    if format == "folder":
        raise GeovarioError(f"{path}: --format folder needs a folder of photos")
    if format == "auto":
        fmt, auto = detect_format(path), True
    elif format in CSV_FORMATS:
        fmt, auto = CSV_FORMATS[format], False
    else:
        raise GeovarioError(f"unknown format {format!r}; choose from {', '.join(FORMAT_NAMES)}")
    folder = Path(images) if images else default_images_folder(path)
    if images and not folder.is_dir():
        raise GeovarioError(f"{folder}: images folder not found")
    dataset = read_csv_dataset(path, fmt, folder, check_images=check_images, auto_detected=auto)
    _check_swapped(dataset, fmt.lat_column, fmt.lon_column)
    return dataset


def _archive_format(path: Path) -> str | None:
    """webdataset or parquet when the path is (or is a folder of) such files; None for anything else."""
    from geovario.data.archives import archive_kind

    if path.is_file():
        kind = archive_kind(path)
        if kind in ("zip", "msgpack"):
            raise GeovarioError(f"{path}: a {kind} archive holds images but no coordinates; pass the dataset's CSV as the data "
                                "and this archive's folder with --images")
        return {"tar": "webdataset", "parquet": "parquet"}.get(kind)
    names = [p.suffix.lower() for p in path.iterdir() if p.is_file()]
    if ".parquet" in names:
        return "parquet"
    if ".tar" in names:
        return "webdataset"
    return None


def _read_archive_dataset(path: Path, format: str) -> Dataset:
    if format == "parquet":
        from geovario.data.archives.parquet_images import read_parquet_dataset

        return read_parquet_dataset(path)
    from geovario.data.webdataset import read_webdataset

    return read_webdataset(path)


def _check_swapped(dataset: Dataset, lat_column: str, lon_column: str) -> None:
    """The gallery reader's lat/lon swap test on the usable rows: a file-level problem, which blocks use."""
    from geovario.geo import latlon_swap_message

    if not dataset.records:
        return
    message = latlon_swap_message([r.lat for r in dataset.records], [r.lon for r in dataset.records],
                                  f"columns {lat_column}, {lon_column}")
    if message:
        dataset.problems.insert(0, Problem(str(dataset.source), 0, message, SWAPPED))
