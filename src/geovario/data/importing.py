"""``geovario data import``: features computed elsewhere (an .npy and a GPS CSV) as a feature store.

Groups share frozen features as ``.npy`` arrays with a CSV of coordinates. Importing checks them
once, in blocks (the array is memory-mapped, never loaded whole), and writes the store layout that
``geovario extract`` writes, so training and evaluation read both alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geovario.data.latlon_csv import read_latlon_table
from geovario.data.store import FeatureStore, write_store
from geovario.errors import GeovarioError
from geovario.geo import latlon_swap_message

BLOCK = 65536


def load_features_file(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Read an .npy array of backbone features without ever unpickling (``mmap``: memory-mapped, read lazily)."""
    path = Path(path)
    if not path.is_file():
        raise GeovarioError(f"{path}: features file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise GeovarioError(f"{path}: not a readable .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise GeovarioError(f"{path}: empty, truncated or not an .npy file ({e})") from None


def check_features(features: np.ndarray, path: Path) -> None:
    """(N, D) floating point with every value finite, or one line naming the first bad row."""
    if features.ndim != 2:
        raise GeovarioError(f"{path}: expected an (N, D) array of features, got shape {features.shape}")
    if len(features) == 0 or features.shape[1] == 0:
        raise GeovarioError(f"{path}: no features (shape {features.shape})")
    if not np.issubdtype(features.dtype, np.floating):
        raise GeovarioError(f"{path}: features of dtype {features.dtype}; expected float16, float32 or float64 "
                            "(integer or object arrays are not embeddings)")
    for start in range(0, len(features), BLOCK):
        finite = np.isfinite(features[start : start + BLOCK]).all(axis=1)
        if not finite.all():
            bad = start + int(np.argmin(finite))
            raise GeovarioError(f"{path}: row {bad} contains NaN or inf")


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
    check_features(array, features)
    frame, latlon = read_latlon_table(gps, "GPS", dtype=np.float64)
    if len(latlon) != len(array):
        raise GeovarioError(f"{features} has {len(array)} rows but {gps} has {len(latlon)}; they must match row for row")
    swapped = latlon_swap_message(latlon[:, 0], latlon[:, 1], f"{gps}: columns LAT, LON")
    if swapped:
        raise GeovarioError(f"{swapped} Swap them if they are.")
    names = read_ids(gps, frame, ids) if ids else None
    if dtype == "float16" and np.abs(array).max() > np.finfo(np.float16).max:
        raise GeovarioError(f"{features}: values beyond float16's range ({np.finfo(np.float16).max:g}); use --dtype float32")
    return write_store(out, array, latlon, ids=names, source=backbone_name, dtype=dtype)
