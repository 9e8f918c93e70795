"""Read any system's predictions CSV: find the true and predicted coordinate columns, drop non-data rows.

Published prediction files vary: ``gt_lat, gt_long, predicted_lat, predicted_long`` (GeoCLIP-style
scripts), ``LAT, LON, pred_lat, pred_lon``, ``latitude, longitude, ...``, and some end in summary
footers. Rows that are not data are dropped and reported by line, never crashed on.
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

# Candidate names, in order of preference, matched case-insensitively.
TRUE_LAT = ("gt_lat", "true_lat", "lat_true", "target_lat", "lat", "latitude", "gps_lat")
TRUE_LON = ("gt_lon", "gt_long", "gt_lng", "true_lon", "true_long", "lon_true", "target_lon", "lon", "long", "lng", "longitude", "gps_lon")
PRED_LAT = ("pred_lat", "predicted_lat", "prediction_lat", "lat_pred", "pred_latitude", "predicted_latitude")
PRED_LON = ("pred_lon", "pred_long", "pred_lng", "predicted_lon", "predicted_long", "predicted_lng", "prediction_lon",
            "lon_pred", "pred_longitude", "predicted_longitude")
ID_COLUMNS = ("id", "img_id", "img_file", "image", "uuid", "image_id")


@dataclass
class PredictionsTable:
    frame: pd.DataFrame  # columns: id, true_lat, true_lon, pred_lat, pred_lon (+ the file's others)
    columns: dict[str, str]  # role -> the file's column name
    dropped: list[Problem]


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
        rows, dropped = [], []
        for row in reader:
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            cells = {role: row[index[col]].strip() if index[col] < len(row) else "" for role, col in roles.items()}
            try:
                values = {role: float(text) for role, text in cells.items()}
            except ValueError:
                bad = ", ".join(f"{roles[r]}={t!r}" for r, t in cells.items() if not _is_number(t))
                dropped.append(Problem(str(path), line, f"not a data row ({bad})", "not a data row"))
                continue
            if not all(math.isfinite(v) for v in values.values()):
                dropped.append(Problem(str(path), line, "NaN or infinite coordinate", "bad coordinates"))
                continue
            if abs(values["true_lat"]) > 90 or abs(values["pred_lat"]) > 90 or abs(values["true_lon"]) > 180 or abs(values["pred_lon"]) > 180:
                dropped.append(Problem(str(path), line, f"coordinate out of range ({', '.join(f'{roles[r]}={v:g}' for r, v in values.items())})", "bad coordinates"))
                continue
            rows.append({"id": row[id_column].strip() if id_column is not None and id_column < len(row) else str(line), **values})
    if not rows:
        raise GeovarioError(f"{path}: no data rows" + (f" ({len(dropped)} rows dropped, first: {dropped[0]})" if dropped else ""))
    return PredictionsTable(pd.DataFrame(rows), roles, dropped)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def true_and_predicted(table: PredictionsTable) -> tuple[np.ndarray, np.ndarray]:
    frame = table.frame
    return frame[["true_lat", "true_lon"]].to_numpy(np.float64), frame[["pred_lat", "pred_lon"]].to_numpy(np.float64)
