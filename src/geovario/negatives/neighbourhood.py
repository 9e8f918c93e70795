"""Negatives drawn from the batch's gallery neighbourhoods, shared by every row: the thesis's ``get_neg``
(DeoBye/Thesis_GeoLoc, geoclip/model/strategy.py, ``WeightedwithNeg``), which its "weighted_neg" strategy
uses in place of GeoCLIP's queue.

For the step's batch locations, a haversine BallTree over the gallery gives each location's k nearest
gallery points ("near", k = 8 in the thesis) and its 2k nearest; "far" is the 2k-nearest set without any
near point. Gallery points at a batch location's exact coordinates are dropped from the near set (the
thesis's ``filter_out_true_gps``). Half of ``count`` (GeoCLIP's queue size, 4,096) is drawn without
replacement from the distinct near points, the other half from the far ones, fewer where fewer exist.
Columns are [the global batch, then these negatives]; as with the queue, the batch GPS carry 150 m of
noise and the negatives 1,000 m.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import BallTree

from geovario.distributed import Dist
from geovario.geo_tensors import add_gps_noise
from geovario.negatives.base import Batch, NegativeSource
from geovario.negatives.geometry import pair_geometry
from geovario.negatives.queue import QueueCandidates

SAME_PLACE_DECIMALS = 6  # coordinates equal to 1e-6 degrees (0.1 m) are the same place


class NeighbourhoodNegatives(NegativeSource):
    """``count`` negatives a step, half near the batch's locations and half a little farther (see the module)."""

    def __init__(self, gallery_latlon: np.ndarray, count: int = 4096, neighbours: int = 8, batch_noise_m: float = 150.0,
                 noise_m: float = 1000.0, gallery_features=None, world: Dist | None = None, geometry: bool = False):
        self.gallery = np.asarray(gallery_latlon, dtype=np.float64)
        self.tree = BallTree(np.radians(self.gallery), metric="haversine")
        self.count, self.neighbours = count, min(neighbours, len(self.gallery) // 2)
        self.batch_noise_m, self.noise_m = batch_noise_m, noise_m
        self.gallery_features, self.world, self.geometry = gallery_features, world or Dist(), geometry

    def select(self, latlon: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gallery indices of the step's negatives: the drawn near points, then the drawn far points."""
        latlon = np.asarray(latlon, dtype=np.float64)
        points = np.radians(latlon)
        near_all = self.tree.query(points, k=self.neighbours, return_distance=False).reshape(-1)
        wider = self.tree.query(points, k=2 * self.neighbours, return_distance=False).reshape(-1)
        far = np.setdiff1d(wider, near_all)
        batch_places = {tuple(p) for p in np.round(latlon, SAME_PLACE_DECIMALS)}
        near = np.unique(near_all)
        near = near[[tuple(p) not in batch_places for p in np.round(self.gallery[near], SAME_PLACE_DECIMALS)]]
        want_near = self.count // 2
        picked_near = rng.choice(near, size=min(want_near, len(near)), replace=False)
        picked_far = rng.choice(far, size=min(self.count - want_near, len(far)), replace=False)
        return np.concatenate([picked_near, picked_far]).astype(np.int64)

    def candidates(self, batch: Batch, generator, rng, embed=None) -> QueueCandidates:
        world = self.world
        all_gps, all_features = world.gather(batch.gps), world.gather(batch.reference)
        all_ids = torch.as_tensor(batch.index, dtype=torch.long, device=batch.gps.device)
        picked = self.select(all_gps.cpu().numpy(), rng)  # drawn on the global batch: every process count draws alike
        negatives = torch.from_numpy(self.gallery[picked]).to(device=batch.gps.device, dtype=all_gps.dtype)
        noisy = add_gps_noise(all_gps, self.batch_noise_m, generator)
        negatives_noisy = add_gps_noise(negatives, self.noise_m, generator)
        own = world.share(len(negatives_noisy))
        share, mine = own.stop - own.start, negatives_noisy[own]
        locations = torch.cat([noisy[batch.rows], F.pad(mine, (0, 0, 0, share - len(mine)))])
        column_gps = torch.cat([all_gps, negatives])
        lags = dissimilarity = None
        if self.geometry:
            features = None
            if self.gallery_features is not None:
                found = torch.from_numpy(self.gallery_features(picked)).to(all_features)
                features = torch.cat([all_features, found])
            lags, dissimilarity = pair_geometry(all_gps, column_gps, all_features, features, embed)
        return QueueCandidates(
            world=world, batch_rows=len(batch.gps), share=share, queue_len=len(negatives), local_loss=False,
            new_gps=all_gps, new_features=all_features, new_ids=all_ids, column_locations=torch.cat([noisy, negatives_noisy]),
            locations=locations, query_gps=all_gps, column_gps=column_gps, targets=torch.arange(len(all_gps), device=all_gps.device),
            lags_km=lags, dissimilarity=dissimilarity,
        )
