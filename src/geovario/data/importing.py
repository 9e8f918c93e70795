"""``geovario data import``: features computed elsewhere (an .npy and a GPS CSV) as a feature store.

Groups share frozen features as ``.npy`` arrays with a CSV of coordinates. Importing checks them
once, in blocks (the array is memory-mapped, never loaded whole), and writes the store layout that
``geovario extract`` writes, so training and evaluation read both alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geovario.data.feature_arrays import check_feature_array, load_features_file
from geovario.data.latlon_csv import read_latlon_table
from geovario.data.store import FeatureStore, write_store
from geovario.errors import GeovarioError
from geovario.geo import latlon_swap_message

# float16 keeps about 3 significant digits (relative step 2^-11); a row it changes by more than this has
# lost values to underflow (below 6e-5 float16 loses precision, below 6e-8 it rounds to 0) or overflow.
FLOAT16_TOLERANCE = 1e-2


def require_float16_fits(array: np.ndarray, source: Path) -> None:
    """Every row survives float16 storage (relative change of the row at most 1 %), else one line naming it."""
    top = np.finfo(np.float16).max
    for start in range(0, len(array), 65536):
        block = np.asarray(array[start : start + 65536], dtype=np.float64)
        if np.abs(block).max() > top:
            raise GeovarioError(f"{source}: values beyond float16's range ({top:g}); use --dtype float32")
        norms = np.linalg.norm(block, axis=1)
        change = np.linalg.norm(block.astype(np.float16).astype(np.float64) - block, axis=1) / np.where(norms > 0, norms, 1)
        if (change > FLOAT16_TOLERANCE).any():
            row = start + int(np.argmax(change > FLOAT16_TOLERANCE))
            smallest = float(np.abs(block[row - start][block[row - start] != 0]).min())
            raise GeovarioError(f"{source}: row {row} would change by {100 * change[row - start]:.0f}% in float16 (its values go "
                                f"down to {smallest:.2g}, where float16 underflows); use --dtype float32, or rescale the features")


def read_ids(path: Path, frame: pd.DataFrame, column: str) -> list[str]:
    """The ``column`` of the GPS CSV (``frame``, as read with its coordinates), one unique non-empty id per row."""
    if column not in frame.columns:
        raise GeovarioError(f"{path}: no column {column!r} for --ids (has {', '.join(frame.columns)})")
    ids = frame[column].str.strip().tolist()
    seen: dict[str, int] = {}
    for row, value in enumerate(ids):
        line = int(frame.index[row]) + 2
        if not value:
            raise GeovarioError(f"{path}: line {line}: empty {column}")
        if value in seen:
            raise GeovarioError(f"{path}: line {line}: duplicate {column} {value!r} (first on line {seen[value]})")
        seen[value] = line
    return ids


def import_features(features: str | Path, gps: str | Path, out: str | Path, ids: str | None = None,
                    dtype: str = "float16", backbone_name: str = "imported") -> FeatureStore:
    """Check ``features`` and ``gps`` against each other, then write them as the store ``out``."""
    features, gps, out = Path(features), Path(gps), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GeovarioError(f"{out}: exists and is not empty; choose a new --out")
    array = load_features_file(features, mmap=True)
    check_feature_array(array, str(features))
    frame, latlon = read_latlon_table(gps, "GPS", dtype=np.float64)
    if len(latlon) != len(array):
        raise GeovarioError(f"{features} has {len(array)} rows but {gps} has {len(latlon)}; they must match row for row")
    swapped = latlon_swap_message(latlon[:, 0], latlon[:, 1], f"{gps}: columns LAT, LON")
    if swapped:
        raise GeovarioError(f"{swapped} Swap them if they are.")
    names = read_ids(gps, frame, ids) if ids else None
    if dtype == "float16":
        require_float16_fits(array, features)
    return write_store(out, array, latlon, ids=names, source=backbone_name, dtype=dtype)
