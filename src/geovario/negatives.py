"""Negative locations beyond GeoCLIP's batch + queue: drawn from a GPS gallery around each sample.

The thesis (12.01 and 17.12.2024) replaced GeoCLIP's random queue negatives with per-sample gallery
negatives: far ones only, hard nearby ones (the true location's gallery neighbours, found with a
haversine BallTree, excluding those within ``exclude_km`` of it), or half of each.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import BallTree

from geovario.geo import EARTH_RADIUS_KM, haversine_km

SELECTIONS = ("random", "far", "near", "mixed")


class GalleryNegatives:
    def __init__(self, gallery_latlon: np.ndarray, far_km: float = 2500.0, exclude_km: float = 1.0):
        self.gallery = np.asarray(gallery_latlon, dtype=np.float64)
        self.tree = BallTree(np.radians(self.gallery), metric="haversine")
        self.far_km, self.exclude_km = far_km, exclude_km

    def select(self, latlon: np.ndarray, k: int, selection: str, rng: np.random.Generator) -> np.ndarray:
        """(B, k) gallery indices of negatives for each (lat, lon) row."""
        latlon = np.asarray(latlon, dtype=np.float64)
        if selection == "random":
            return self._away(latlon, k, rng, self.exclude_km)
        if selection == "far":
            return self._away(latlon, k, rng, self.far_km)
        if selection == "near":
            return self._near(latlon, k, rng)
        if selection == "mixed":
            near = k // 2
            return np.concatenate([self._near(latlon, near, rng), self._away(latlon, k - near, rng, self.far_km)], axis=1)
        raise ValueError(f"unknown selection {selection!r}; choose from {SELECTIONS}")

    def _away(self, latlon: np.ndarray, k: int, rng: np.random.Generator, min_km: float) -> np.ndarray:
        """Uniform gallery points at least ``min_km`` away, redrawn until they are (a few rounds)."""
        picks = rng.integers(0, len(self.gallery), (len(latlon), k))
        for _ in range(20):
            g = self.gallery[picks]
            close = haversine_km(latlon[:, None, 0], latlon[:, None, 1], g[..., 0], g[..., 1]) < min_km
            if not close.any():
                break
            picks[close] = rng.integers(0, len(self.gallery), int(close.sum()))
        return picks

    def _near(self, latlon: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """The k nearest gallery points beyond ``exclude_km`` (topped up with random ones if too few)."""
        if k == 0:
            return np.zeros((len(latlon), 0), dtype=np.int64)
        extra = min(len(self.gallery), k + 32)
        dist, index = self.tree.query(np.radians(latlon), k=extra)
        out = np.empty((len(latlon), k), dtype=np.int64)
        for row in range(len(latlon)):
            kept = index[row][dist[row] * EARTH_RADIUS_KM > self.exclude_km][:k]
            if len(kept) < k:
                kept = np.concatenate([kept, self._away(latlon[row : row + 1], k - len(kept), rng, self.exclude_km)[0]])
            out[row] = kept
        return out
