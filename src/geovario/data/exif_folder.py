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


def _degrees(value, ref) -> float:
    """EXIF (degrees, minutes, seconds) rationals and an N/S/E/W reference -> signed degrees."""
    parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    degrees = sum(part / 60**i for i, part in enumerate(parts[:3]))
    ref = ref.decode(errors="ignore") if isinstance(ref, bytes) else str(ref or "")
    return -degrees if ref.strip().upper() in ("S", "W") else degrees


def read_exif_gps(path: Path) -> tuple[float, float] | None:
    """(lat, lon) from a photo's EXIF GPS, or None when it has none. Raises OSError for unreadable files."""
    with Image.open(path) as image:
        gps = image.getexif().get_ifd(GPS_IFD)
    if not gps or LAT not in gps or LON not in gps:
        return None
    try:
        lat, lon = _degrees(gps[LAT], gps.get(LAT_REF)), _degrees(gps[LON], gps.get(LON_REF))
    except (TypeError, ValueError, ZeroDivisionError):
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
