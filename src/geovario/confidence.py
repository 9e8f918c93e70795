"""Distinct places and honest confidence from a prediction's probability over the whole gallery.

A model scores every gallery location; softmax(logit_scale * cos / temperature) over the gallery is the
prediction's probability distribution (temperature 1 unless ``geovario calibrate`` fitted one).

Distinct places: neighbouring gallery points are one place. The most probable gallery point not yet
claimed is a peak, and every unclaimed gallery point within ``pool_km`` of it joins its place (non-maximum
suppression, as object detectors merge overlapping boxes); a place's ``prob`` is the mass it gathers, and
places rank by it. So rank 2 is never rank 1's coordinates, and a city covered by 300 gallery points
weighs what those 300 points weigh together. ``pool_km`` defaults to 25 km (why: :mod:`geovario.confidence_defaults`);
with ``pool_km = 0`` only points at the same coordinates pool.

Confidence of a place: ``within_km[t]``, the probability mass within t km of it (t = 25, 200, 750 and
2,500 km, the field's city, region, country and continent thresholds), and ``radius_km``, the smallest
radius around it that holds ``level`` (90 % by default) of the mass. For the best guess, these are the
probability that the photo lies within t km of the answer, and a circle that holds the photo that often:
calibrated, as ``geovario calibrate`` checks on a validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geovario.confidence_defaults import LEVEL, POOL_KM, WITHIN_KM
from geovario.geo import EARTH_RADIUS_KM

# The most probable gallery points that may be a place's peak (8 per place asked for, when more): a place whose
# points are all less probable than these is not looked for, unless fewer than k places were found among them.
PEAK_CANDIDATES = 64


@dataclass
class Prediction:
    """One distinct place of a prediction, best first: where, how likely, and how sure around it."""

    lat: float
    lon: float
    prob: float  # the probability mass of the place: its gallery points within pool_km
    gallery_index: int  # the peak's row in the gallery
    within_km: dict[int, float] = field(default_factory=dict)  # P(true location within t km of this place)
    radius_km: float = float("nan")  # the smallest radius around this place holding ``level`` of the mass
    level: float = LEVEL

    def to_dict(self) -> dict:
        return {"lat": self.lat, "lon": self.lon, "prob": self.prob, "within_km": {str(k): v for k, v in self.within_km.items()},
                "radius_km": self.radius_km, "level": self.level}


class GalleryPlaces:
    """A gallery's geometry, built once (a haversine BallTree), that turns probability vectors into places."""

    def __init__(self, gallery_latlon: np.ndarray):
        from sklearn.neighbors import BallTree

        self.latlon = np.asarray(gallery_latlon, dtype=np.float64)
        self.tree = BallTree(np.radians(self.latlon), metric="haversine")
        lat, lon = np.radians(self.latlon).T
        self.unit = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)

    def places(self, prob: np.ndarray, k: int, pool_km: float | None = POOL_KM, level: float = LEVEL,
               within_km: tuple[int, ...] = WITHIN_KM) -> list[Prediction]:
        """The ``k`` most probable distinct places of one (N,) probability vector over the gallery, the largest
        mass first; fewer only where the gallery holds fewer. Peaks are the most probable unclaimed points (equal ones
        by gallery index): the first m = max(PEAK_CANDIDATES, 8 k) of them, and beyond those, m at a time, only until
        k places exist. ``pool_km=None`` pools nothing: each gallery point is a place of its own (GeoCLIP's top-k).
        A place's ``within_km`` counts every gallery point that near, those pooled into a more probable place too."""
        prob = np.asarray(prob, dtype=np.float64)
        if prob.shape != (len(self.latlon),):
            raise ValueError(f"expected {len(self.latlon)} probabilities (one per gallery point), got shape {prob.shape}")
        if not 0 < level <= 1:
            raise ValueError(f"level must lie in (0, 1], got {level}")
        if pool_km is not None and not pool_km >= 0:
            raise ValueError(f"pool_km must not be negative, got {pool_km}")
        m = max(PEAK_CANDIDATES, 8 * k)
        claimed = np.zeros(len(prob), dtype=bool)
        found = self._claim(self.most_probable(prob, m), prob, claimed, pool_km, level)
        if len(found) < k and not claimed.all():
            # A sharp prediction: its most probable points are all one place or few. Later peaks, in order, until
            # k places exist (the gallery sorted once, only in this case).
            rest = np.argsort(-prob, kind="stable")
            rest = rest[~claimed[rest]]
            for start in range(0, len(rest), m):
                found += self._claim(rest[start : start + m], prob, claimed, pool_km, level)
                if len(found) >= k:
                    break
        found = sorted(found, key=lambda p: -p.prob)[:k]  # stable: equal masses keep their peaks' order
        for place in found:
            place.within_km, place.radius_km = self.confidence(prob, place.gallery_index, level, within_km)
        return found

    def _claim(self, candidates: np.ndarray, prob: np.ndarray, claimed: np.ndarray, pool_km: float | None,
               level: float) -> list[Prediction]:
        """Each unclaimed candidate in turn becomes a peak and claims the unclaimed points within ``pool_km`` of it
        (itself only at None); ``claimed`` is updated."""
        candidates = candidates[~claimed[candidates]]
        if pool_km is None:
            neighbourhoods = candidates[:, None]
        elif len(candidates):  # one tree query for every candidate: a query's fixed cost dwarfs one neighbourhood
            neighbourhoods = self.tree.query_radius(np.radians(self.latlon[candidates]), r=pool_km / EARTH_RADIUS_KM)
        else:
            return []
        found = []
        for peak, members in zip(candidates, neighbourhoods):
            if claimed[peak]:
                continue
            members = members[~claimed[members]]  # the peak among them: its distance to itself is exactly 0
            claimed[members] = True
            mass = float(prob[members].sum())
            found.append(Prediction(float(self.latlon[peak, 0]), float(self.latlon[peak, 1]), mass, int(peak), level=level))
        return found

    @staticmethod
    def most_probable(prob: np.ndarray, m: int) -> np.ndarray:
        """The indices of the ``m`` most probable points, most probable first, equal ones by index (deterministic
        where duplicated gallery coordinates tie); in O(N), not a sort of the whole gallery."""
        if m < len(prob):
            threshold = prob[np.argpartition(-prob, m - 1)[m - 1]]
            top = np.flatnonzero(prob >= threshold)  # every point tied at the threshold, then the first m in order
        else:
            top = np.arange(len(prob))
        return top[np.lexsort((top, -prob[top]))][:m]

    def distances_km(self, centre: int) -> np.ndarray:
        """Great-circle distance from gallery point ``centre`` to every gallery point, from the unit vectors' dot
        products: sin^2(angle / 2) = (1 - cos) / 2 in float64 (to about 0.1 km near 0 km, far finer beyond), its square root
        and arcsine in float32 (to about a metre: the answers are in whole km)."""
        half = np.clip((1.0 - self.unit @ self.unit[centre]) / 2, 0.0, 1.0).astype(np.float32)  # float32 from here: ~1 m
        return (2 * EARTH_RADIUS_KM) * np.arcsin(np.sqrt(half)).astype(np.float64)

    def confidence(self, prob: np.ndarray, centre: int, level: float = LEVEL,
                   within_km: tuple[int, ...] = WITHIN_KM) -> tuple[dict[int, float], float]:
        """Around gallery point ``centre``: the mass within each of ``within_km``, and the smallest radius in whole km
        holding ``level`` of the whole mass (the distance at which the mass, gathered nearest first, reaches it,
        rounded up to the km). One histogram of the mass by km, O(N): a point d km away lies within t km (t whole)
        exactly when ceil(d) <= t, so the histogram's cumulative sums answer both."""
        distance = self.distances_km(centre)
        gathered = np.cumsum(np.bincount(np.ceil(distance).astype(np.int64), weights=prob))  # [j]: the mass within j km
        inside = {t: float(gathered[min(int(t), len(gathered) - 1)]) for t in within_km}
        return inside, float(np.searchsorted(gathered, level * gathered[-1]))
