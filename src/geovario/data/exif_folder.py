"""A plain folder of photos, geotagged by their EXIF GPS; photos without GPS are reported."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from geovario.data.image_index import IMAGE_SUFFIXES
from geovario.data.records import Dataset, Problem, Record

GPS_IFD = 0x8825
LAT_REF, LAT, LON_REF, LON = 1, 2, 3, 4


def _degrees(value, ref, allowed: str) -> float:
    """EXIF (degrees, minutes, seconds) rationals and an N/S (or E/W) reference -> signed degrees.

    ValueError for a reference other than the two ``allowed`` letters, or minutes or seconds outside
    [0, 60): a camera never writes them, so the tag was damaged or written by hand.
    """
    parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    if not parts or any(not math.isfinite(p) or p < 0 for p in parts) or any(p >= 60 for p in parts[1:3]):
        raise ValueError(f"degrees, minutes, seconds {tuple(parts)} are not a valid angle")
    degrees = sum(part / 60**i for i, part in enumerate(parts[:3]))
    ref = (ref.decode(errors="ignore") if isinstance(ref, bytes) else str(ref or "")).strip().upper()
    if ref not in allowed:
        raise ValueError(f"GPS reference {ref!r}, expected {' or '.join(allowed)}")
    return -degrees if ref in ("S", "W") else degrees


def read_exif_gps(path: Path) -> tuple[float, float] | None:
    """(lat, lon) from a photo's EXIF GPS, or None when it has none. Raises OSError for unreadable files."""
    with Image.open(path) as image:
        gps = image.getexif().get_ifd(GPS_IFD)
    if not gps or LAT not in gps or LON not in gps:
        return None
    try:
        lat, lon = _degrees(gps[LAT], gps.get(LAT_REF), "NS"), _degrees(gps[LON], gps.get(LON_REF), "EW")
    except (TypeError, ZeroDivisionError):
        raise ValueError(f"malformed GPS values {gps.get(LAT)!r}, {gps.get(LON)!r}") from None
    return lat, lon


def read_exif_folder(folder: Path) -> Dataset:
    records: list[Record] = []
    problems: list[Problem] = []
    paths = sorted(
        Path(root) / name
        for root, _dirs, files in os.walk(folder)
        for name in files
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )
    for path in paths:
        relative = str(path.relative_to(folder))
        try:
            found = read_exif_gps(path)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            problems.append(Problem(str(path), 0, f"unreadable image ({e})", "unreadable image"))
            continue
        except Image.DecompressionBombError as e:
            problems.append(Problem(str(path), 0, f"refused: {e}", "too large"))
            continue
        except ValueError as e:
            problems.append(Problem(str(path), 0, f"bad EXIF GPS: {e}", "bad coordinates"))
            continue
        if found is None:
            problems.append(Problem(str(path), 0, "no GPS in EXIF", "no GPS"))
            continue
        lat, lon = found
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            problems.append(Problem(str(path), 0, f"EXIF GPS out of range ({lat}, {lon})", "bad coordinates"))
            continue
        records.append(Record(relative, path, lat, lon))
    return Dataset(folder, "folder", records, problems, n_rows=len(paths))
