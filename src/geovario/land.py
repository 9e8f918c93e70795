"""Is a point on land? Natural Earth's 1:110m land outline, the one bundled for the `serve` page.

Coarse by design (small islands are missing at this scale), so it is used only to tell open water
from remote land for points already far from any named place.
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files

import numpy as np

OUTLINE = "serve/static/vendor/world-atlas/countries-110m.json"  # world-atlas 2 (Natural Earth, public domain)


def _rings(topology: dict) -> list[np.ndarray]:
    """Every ring of the topology's land object as (n, 2) lon/lat, longitudes continuous across ±180."""
    scale, translate = np.array(topology["transform"]["scale"]), np.array(topology["transform"]["translate"])
    arcs = [np.cumsum(np.array(arc, dtype=np.float64), axis=0) * scale + translate for arc in topology["arcs"]]
    land = topology["objects"]["land"]
    shapes = land["geometries"] if land["type"] == "GeometryCollection" else [land]
    polygons = [p for shape in shapes for p in (shape["arcs"] if shape["type"] == "MultiPolygon" else [shape["arcs"]])]
    rings = []
    for polygon in polygons:
        for ring in polygon:
            parts = [arcs[i] if i >= 0 else arcs[~i][::-1] for i in ring]
            points = np.concatenate([parts[0]] + [p[1:] for p in parts[1:]])
            points[:, 0] = points[0, 0] + np.degrees(np.unwrap(np.radians(points[:, 0] - points[0, 0])))
            rings.append(points)
    return rings


@functools.lru_cache(maxsize=1)
def coastlines() -> tuple[np.ndarray, ...]:
    """The outline's rings as (n, 2) lon/lat arrays, longitudes continuous (a ring may run past ±180)."""
    return tuple(_rings(json.loads((files("geovario") / OUTLINE).read_text())))


@functools.lru_cache(maxsize=1)
def _paths():
    from matplotlib.path import Path

    return [Path(ring) for ring in coastlines()]


def on_land(latlon) -> np.ndarray:
    """(N,) bool: inside the land outline (a point in an odd number of rings, so lakes drawn as holes are water)."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(latlon), dtype=int)
    for path in _paths():
        hit = np.zeros(len(latlon), dtype=bool)
        for shift in (-360.0, 0.0, 360.0):  # rings unwrapped past ±180
            hit |= path.contains_points(np.stack([latlon[:, 1] + shift, latlon[:, 0]], 1))
        inside += hit
    return inside % 2 == 1
