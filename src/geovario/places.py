"""Offline place names for coordinates, from the GeoNames cities1000 table shipped with reverse_geocoder.

The same source OSV5M uses for its admin-level accuracy: the nearest place of 1,000+ people gives the
city, its admin1 (region) and admin2 (sub-region), and the country code.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Place:
    city: str
    subregion: str
    region: str
    country: str  # ISO 3166-1 alpha-2

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(part for part in (self.city, self.region, self.country) if part)


@functools.lru_cache(maxsize=1)
def _geocoder():
    import reverse_geocoder

    # mode=1: one process (mode 2 forks a pool); loading prints nothing with verbose=False, and the
    # redirect guards stdout for JSON output in case a version prints anyway.
    with contextlib.redirect_stdout(io.StringIO()):
        return reverse_geocoder.RGeocoder(mode=1, verbose=False)


def place_names(latlon) -> list[Place]:
    """The nearest GeoNames place for each (lat, lon) row (degrees)."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if len(latlon) == 0:
        return []
    with contextlib.redirect_stdout(io.StringIO()):
        found = _geocoder().query([tuple(row) for row in latlon])
    return [Place(r["name"], r["admin2"], r["admin1"], r["cc"]) for r in found]
