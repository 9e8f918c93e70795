"""Per-sample negatives from a GPS gallery (the thesis's alternative to GeoCLIP's batch + queue).

The thesis (12.01 and 17.12.2024) replaced GeoCLIP's random queue negatives with per-sample gallery
negatives: far ones only, hard nearby ones (the true location's gallery neighbours, found with a
haversine BallTree, excluding those within ``exclude_km`` of it), or half of each.

Each query row has its own columns: [its true location, then its k gallery negatives].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.neighbors import BallTree

from geovario.distributed import Dist
from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM, haversine_km
from geovario.geo_tensors import add_gps_noise
from geovario.negatives.base import Batch, Candidates, NegativeSource
from geovario.negatives.geometry import pair_geometry

SELECTIONS = ("random", "far", "near", "mixed")
REDRAW_ROUNDS = 20  # uniform redraws before the exact fallback (see GalleryNeighbours._away)


class GalleryNeighbours:
    """Which gallery points serve as a location's negatives: random, far, near or mixed."""

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
        """(B, k) gallery points drawn uniformly among those at least ``min_km`` from each row's location.

        Uniform draws are redrawn where too close for a few rounds (almost always enough: most of a gallery is far
        from any one place); slots still too close then draw among the points that are far enough, found by brute
        force for that row. A row with no such point is an error, never a negative that breaks the rule.
        """
        n = len(self.gallery)
        picks = rng.integers(0, n, (len(latlon), k))
        for _ in range(REDRAW_ROUNDS):
            close = self._closer_than(latlon, picks, min_km)
            if not close.any():
                return picks
            picks[close] = rng.integers(0, n, int(close.sum()))
        close = self._closer_than(latlon, picks, min_km)
        for row in np.flatnonzero(close.any(axis=1)):
            lat, lon = latlon[row]
            eligible = np.flatnonzero(haversine_km(lat, lon, self.gallery[:, 0], self.gallery[:, 1]) >= min_km)
            if not len(eligible):
                raise GeovarioError(f"no gallery point lies {min_km:g} km or more from ({lat:.4f}, {lon:.4f}): the gallery of {n:,} "
                                    "points cannot give it negatives; lower negatives.far_km or negatives.exclude_km, or use "
                                    "a wider gallery")
            picks[row, close[row]] = rng.choice(eligible, int(close[row].sum()))
        return picks

    def _closer_than(self, latlon: np.ndarray, picks: np.ndarray, min_km: float) -> np.ndarray:
        g = self.gallery[picks]
        return haversine_km(latlon[:, None, 0], latlon[:, None, 1], g[..., 0], g[..., 1]) < min_km

    def _near(self, latlon: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(B, k) the k nearest gallery points at least ``exclude_km`` from each location, nearest first; topped up
        with points drawn as :meth:`_away` does only when the gallery holds fewer than k such points."""
        if k == 0:
            return np.zeros((len(latlon), 0), dtype=np.int64)
        points = np.radians(latlon)
        excluded = self.tree.query_radius(points, self.exclude_km / EARTH_RADIUS_KM, count_only=True)
        wanted = min(len(self.gallery), k + int(excluded.max()))  # enough to find k beyond the excluded ones
        dist, index = self.tree.query(points, k=wanted)
        out = np.empty((len(latlon), k), dtype=np.int64)
        for row in range(len(latlon)):
            kept = index[row][dist[row] * EARTH_RADIUS_KM >= self.exclude_km][:k]
            if len(kept) < k:
                kept = np.concatenate([kept, self._away(latlon[row : row + 1], k - len(kept), rng, self.exclude_km)[0]])
            out[row] = kept
        return out


@dataclass(kw_only=True)
class GalleryCandidates(Candidates):
    """Per-row columns: column 0 the true location, then k gallery negatives."""

    column_index: np.ndarray  # (b, k) gallery index of each negative column

    def loss_inputs(self, image, location_embeddings, scale):
        per_row = location_embeddings.reshape(len(image), -1, location_embeddings.shape[-1])
        return self._inputs(scale * torch.einsum("be,bke->bk", image, per_row), scale)


class GalleryNegatives(NegativeSource):
    """k gallery negatives per sample; stateless, so ``commit`` has nothing to do.

    ``gallery_features(index)`` returns the plain features of gallery points, when the gallery
    comes from a feature store; losses that need image dissimilarity require it.
    """

    def __init__(self, gallery_latlon: np.ndarray, k: int = 64, selection: str = "mixed", far_km: float = 2500.0,
                 exclude_km: float = 1.0, batch_noise_m: float = 150.0, gallery_features=None, world: Dist | None = None,
                 geometry: bool = False):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; choose from {SELECTIONS}")
        self.neighbours = GalleryNeighbours(gallery_latlon, far_km, exclude_km)
        self.k, self.selection, self.batch_noise_m = k, selection, batch_noise_m
        self.gallery_features, self.world, self.geometry = gallery_features, world or Dist(), geometry

    def candidates(self, batch: Batch, generator, rng, embed=None) -> GalleryCandidates:
        gps, rows = batch.gps, batch.rows
        # Noise and selection are drawn for the whole global batch, so every process count draws alike.
        all_gps = self.world.gather(gps)
        noisy = add_gps_noise(all_gps, self.batch_noise_m, generator)[rows]
        picked = self.neighbours.select(all_gps.cpu().numpy(), self.k, self.selection, rng)[rows]
        negatives = torch.from_numpy(self.neighbours.gallery[picked]).to(gps.device)  # (b, k, 2) float64
        column_gps = torch.cat([gps.double()[:, None], negatives], dim=1)
        locations = torch.cat([noisy[:, None], negatives.to(gps.dtype)], dim=1).reshape(-1, 2)
        lags = dissimilarity = None
        if self.geometry:
            column_features = None
            if self.gallery_features is not None:
                found = torch.from_numpy(self.gallery_features(picked.reshape(-1))).to(batch.reference)
                column_features = torch.cat([batch.reference[:, None], found.reshape(len(gps), self.k, -1)], dim=1)
            lags, dissimilarity = pair_geometry(gps, column_gps, batch.reference, column_features, embed)
        return GalleryCandidates(locations=locations, query_gps=gps, column_gps=column_gps,
                                 targets=torch.zeros(len(gps), dtype=torch.long, device=gps.device),
                                 lags_km=lags, dissimilarity=dissimilarity, column_index=picked)
