"""Read any system's predictions CSV: find the true and predicted coordinate columns, drop non-data rows.

Published prediction files vary: ``gt_lat, gt_long, predicted_lat, predicted_long`` (GeoCLIP-style
scripts), ``LAT, LON, pred_lat, pred_lon``, ``latitude, longitude, ...``, and some end in summary
footers. Lines that are not samples (blank, or without numeric true coordinates, as footers are) are
dropped and reported by line. A sample whose prediction is blank, NaN or out of range is kept as a
failure: it counts in n, never flatters the score. Invalid true coordinates on a sample, or columns
that look swapped, are refused.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geovario.data.records import Problem
from geovario.errors import GeovarioError
from geovario.geo import latlon_swap_message, warn_if_radians

# Candidate names, in order of preference, matched case-insensitively.
TRUE_LAT = ("gt_lat", "true_lat", "lat_true", "target_lat", "lat", "latitude", "gps_lat")
TRUE_LON = ("gt_lon", "gt_long", "gt_lng", "true_lon", "true_long", "lon_true", "target_lon", "lon", "long", "lng", "longitude", "gps_lon")
PRED_LAT = ("pred_lat", "predicted_lat", "prediction_lat", "lat_pred", "pred_latitude", "predicted_latitude")
PRED_LON = ("pred_lon", "pred_long", "pred_lng", "predicted_lon", "predicted_long", "predicted_lng", "prediction_lon",
            "lon_pred", "pred_longitude", "predicted_longitude")
ID_COLUMNS = ("id", "img_id", "img_file", "image", "uuid", "image_id")


@dataclass
class PredictionsTable:
    frame: pd.DataFrame  # columns: id, true_lat, true_lon, pred_lat, pred_lon, failed
    columns: dict[str, str]  # role -> the file's column name
    dropped: list[Problem]  # lines that are not samples: blank lines, summary footers
    failed: list[Problem]  # samples without a valid prediction: they count, as failures


def _pick(header: list[str], candidates: tuple[str, ...], given: str | None, role: str, path: Path) -> str:
    lowered = {h.strip().lower(): h for h in header}
    if given:
        if given.strip().lower() not in lowered:
            raise GeovarioError(f"{path}: no column {given!r} for {role} (columns: {', '.join(header)})")
        return lowered[given.strip().lower()]
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise GeovarioError(
        f"{path}: cannot find the {role} column among {', '.join(header)}; name it with --{role.replace(' ', '-')}"
    )


def read_predictions(path: str | Path, true_lat: str | None = None, true_lon: str | None = None,
                     pred_lat: str | None = None, pred_lon: str | None = None) -> PredictionsTable:
    path = Path(path)
    if not path.is_file():
        raise GeovarioError(f"{path}: predictions file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise GeovarioError(f"{path}: empty file (no header row)")
        roles = {
            "true_lat": _pick(header, TRUE_LAT, true_lat, "true lat", path),
            "true_lon": _pick(header, TRUE_LON, true_lon, "true lon", path),
            "pred_lat": _pick(header, PRED_LAT, pred_lat, "pred lat", path),
            "pred_lon": _pick(header, PRED_LON, pred_lon, "pred lon", path),
        }
        if len(set(roles.values())) < 4:
            raise GeovarioError(f"{path}: the same column was picked twice ({roles}); name the columns explicitly")
        index = {h: i for i, h in enumerate(header)}
        id_column = next((index[h] for h in header if h.strip().lower() in ID_COLUMNS), None)
        rows, dropped, failed = [], [], []
        for row in reader:
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            cells = {role: row[index[col]].strip() if index[col] < len(row) else "" for role, col in roles.items()}
            truth = {role: cells[role] for role in ("true_lat", "true_lon")}
            if not all(_is_number(text) for text in truth.values()):
                bad = ", ".join(f"{roles[r]}={t!r}" for r, t in truth.items() if not _is_number(t))
                dropped.append(Problem(str(path), line, f"not a data row ({bad})", "not a data row"))
                continue
            true_lat, true_lon = float(truth["true_lat"]), float(truth["true_lon"])
            if not (math.isfinite(true_lat) and math.isfinite(true_lon)) or abs(true_lat) > 90 or abs(true_lon) > 180:
                raise GeovarioError(f"{path}:{line}: true coordinates {roles['true_lat']}={truth['true_lat']!r}, "
                                    f"{roles['true_lon']}={truth['true_lon']!r} are not a valid position")
            problem = _prediction_problem(cells["pred_lat"], cells["pred_lon"], roles)
            if problem:
                failed.append(Problem(str(path), line, problem, "no valid prediction"))
            pred = (float("nan"), float("nan")) if problem else (float(cells["pred_lat"]), float(cells["pred_lon"]))
            rows.append({"id": row[id_column].strip() if id_column is not None and id_column < len(row) else str(line),
                         "true_lat": true_lat, "true_lon": true_lon, "pred_lat": pred[0], "pred_lon": pred[1],
                         "failed": bool(problem)})
    if not rows:
        raise GeovarioError(f"{path}: no data rows" + (f" ({len(dropped)} rows dropped, first: {dropped[0]})" if dropped else ""))
    frame = pd.DataFrame(rows)
    _refuse_swapped(frame["true_lat"], frame["true_lon"], f"{path}: true coordinates", "--true-lat and --true-lon")
    valid = ~frame["failed"]
    _refuse_swapped(frame["pred_lat"][valid], frame["pred_lon"][valid], f"{path}: predicted coordinates", "--pred-lat and --pred-lon")
    warn_if_radians(frame["true_lat"], frame["true_lon"], f"{path}: true coordinates")
    warn_if_radians(frame["pred_lat"][valid], frame["pred_lon"][valid], f"{path}: predicted coordinates")
    return PredictionsTable(frame, roles, dropped, failed)


def _prediction_problem(lat: str, lon: str, roles: dict) -> str | None:
    """Why a row's prediction is unusable, or None."""
    if not (_is_number(lat) and _is_number(lon)):
        return f"prediction is not a number ({roles['pred_lat']}={lat!r}, {roles['pred_lon']}={lon!r})"
    la, lo = float(lat), float(lon)
    if not (math.isfinite(la) and math.isfinite(lo)):
        return f"prediction is NaN or infinite ({roles['pred_lat']}={lat}, {roles['pred_lon']}={lon})"
    if abs(la) > 90 or abs(lo) > 180:
        return f"prediction out of range ({roles['pred_lat']}={la:g}, {roles['pred_lon']}={lo:g})"
    return None


def _refuse_swapped(lat, lon, source: str, flags: str) -> None:
    """The gallery reader's lat/lon swap test (geo.latlon_swap_message), as a refusal."""
    message = latlon_swap_message(lat.to_numpy(), lon.to_numpy(), source)
    if message:
        raise GeovarioError(f"{message} Name the columns with {flags} if they are right as they are, or swap them.")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def true_and_predicted(table: PredictionsTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true, predicted, failed): predicted is NaN where ``failed``."""
    frame = table.frame
    return (frame[["true_lat", "true_lon"]].to_numpy(np.float64), frame[["pred_lat", "pred_lon"]].to_numpy(np.float64),
            frame["failed"].to_numpy(bool))
