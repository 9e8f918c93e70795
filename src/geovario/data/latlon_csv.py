"""A strict two-column coordinate CSV: every row must be a valid (lat, lon), in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geovario.errors import GeovarioError
from geovario.geo import coordinate_problems, warn_if_radians


# The names a coordinate column goes by (case-insensitive), in order of preference.
LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude", "lng")


def read_latlon_csv(path: str | Path, what: str = "gallery", dtype=np.float32) -> np.ndarray:
    """Read a LAT/LON CSV (a GPS gallery, or the --gps of a features array) into an (N, 2) array.

    float32 matches GeoCLIP, which holds its gallery as a float32 tensor. Any bad row is an error
    that names the line: a file with holes would silently misalign every row after it.
    """
    clean = _clean_numbers(Path(path), what)
    return clean.astype(dtype) if clean is not None else read_latlon_table(path, what, dtype)[1]


def _clean_numbers(path: Path, what: str) -> np.ndarray | None:
    """The common case, ten times faster than the strict reader: pandas parses both columns as numbers at once (the
    same float64 values), and every row is a valid coordinate. None whenever anything is off (a blank line, a cell
    that is not a number, a bad coordinate), so that the strict reader names the line."""
    try:
        frame = pd.read_csv(path, skip_blank_lines=False)
        lat_col, lon_col = _latlon_columns(path, frame.columns, what)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, GeovarioError):
        return None
    if frame.empty or not all(pd.api.types.is_float_dtype(frame[c]) or pd.api.types.is_integer_dtype(frame[c]) for c in (lat_col, lon_col)):
        return None
    latlon = frame[[lat_col, lon_col]].to_numpy(np.float64)
    if coordinate_problems(latlon[:, 0], latlon[:, 1]):  # NaN (a blank line or cell) included
        return None
    warn_if_radians(latlon[:, 0], latlon[:, 1], str(path))
    return latlon


def _latlon_columns(path: Path, columns, what: str) -> tuple[str, str]:
    """The names of the latitude and longitude columns, or a one-line error (none, or two of one kind)."""
    header = _header(path)
    for names, role in ((LAT_NAMES, "latitude"), (LON_NAMES, "longitude")):
        found = [h for h in header if h.strip().lower() in names]
        if len(found) > 1:
            raise GeovarioError(f"{path}: {len(found)} {role} columns ({', '.join(found)}); keep one, so that it is clear "
                                f"which holds the {role}")
    by_name = {c.strip().lower(): c for c in columns}
    lat_col = next((by_name[n] for n in LAT_NAMES if n in by_name), None)
    lon_col = next((by_name[n] for n in LON_NAMES if n in by_name), None)
    if lat_col is None or lon_col is None:
        raise GeovarioError(f"{path}: {what} needs LAT and LON columns, found {list(columns)}")
    return lat_col, lon_col


def read_latlon_table(path: str | Path, what: str = "gallery", dtype=np.float32) -> tuple[pd.DataFrame, np.ndarray]:
    """The CSV's rows as strings (blank lines dropped) and their checked (N, 2) coordinates."""
    path = Path(path)
    if not path.is_file():
        raise GeovarioError(f"{path}: {what} file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise GeovarioError(f"{path}: cannot parse {what} CSV ({str(e).strip().splitlines()[0]})") from None
    lat_col, lon_col = _latlon_columns(path, frame.columns, what)
    # Drop wholly blank lines but keep the original index, so reported line numbers stay true.
    frame = frame[(frame != "").any(axis=1)]
    if frame.empty:
        raise GeovarioError(f"{path}: {what} has no rows")
    lat = pd.to_numeric(frame[lat_col].str.strip(), errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(frame[lon_col].str.strip(), errors="coerce").to_numpy(np.float64)
    problems = coordinate_problems(lat, lon)
    if problems:
        row, what = problems[0]
        raw = f"{frame[lat_col].iloc[row]!r}, {frame[lon_col].iloc[row]!r}"
        more = f" ({len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
        line = int(frame.index[row]) + 2  # the header is line 1
        raise GeovarioError(f"{path}: line {line}: {what} [{raw}]{more}")
    warn_if_radians(lat, lon, str(path))
    return frame, np.stack([lat, lon], axis=1).astype(dtype)


def _header(path: Path) -> list[str]:
    """The CSV's column names as written (pandas renames a repeated name to NAME.1)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return next(csv.reader(f), [])


def as_coordinate(value) -> float:
    """A coordinate read from JSON, parquet or msgpack as a float; a boolean is not a number here (Python's
    float(True) would give 1.0). ValueError or TypeError for anything that is not a number."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{value!r} is not a number")
    return float(value)
