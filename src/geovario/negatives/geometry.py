"""Pair geometry: how far apart two samples lie, and how unalike their images look.

For query i and column j: h_ij, the great-circle distance in km between their true GPS, and
d_ij = 1 - cos(f_i, f_j), the dissimilarity of their images. In frozen space f is the backbone's
plain centre-crop feature (view 0), the quantity the fitted semivariogram describes; in learned
space (after the variogram is refitted on learned embeddings) f is the image head's embedding of
that same feature. Both sources compute their columns' geometry here, so it is defined once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geovario.geo_tensors import haversine_km_torch


@torch.no_grad()
def pair_geometry(query_gps: torch.Tensor, column_gps: torch.Tensor, query_features: torch.Tensor | None = None,
                  column_features: torch.Tensor | None = None, embed=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(lags_km, dissimilarity) of every (query, column) pair, detached and in full precision.

    ``column_gps`` is (C, 2) for columns shared by every query, or (q, C, 2) for per-query columns;
    ``column_features`` has the same leading shape. ``embed`` (learned space) maps features to unit
    embeddings; without it the features are L2-normalised as they are. Without features, the
    dissimilarity is None. Full precision even under autocast: delta = d - gamma(h) compares small
    differences.
    """
    device_type = query_gps.device.type
    with torch.autocast(device_type, enabled=False):
        columns = column_gps.double() if column_gps.dim() == 3 else column_gps.double()[None]
        lags = haversine_km_torch(query_gps.double()[:, None], columns)
        if query_features is None or column_features is None:
            return lags, None
        unit = embed if embed is not None else (lambda f: F.normalize(f, dim=-1))
        query = unit(query_features.float()).float()
        flat = unit(column_features.reshape(-1, column_features.shape[-1]).float()).float()
        if column_features.dim() == 2:
            similarity = query @ flat.T
        else:
            similarity = torch.einsum("qd,qcd->qc", query, flat.reshape(*column_features.shape[:2], -1))
        return lags, 1 - similarity
