"""Geodesy on torch tensors, differentiable and device-agnostic: distance, GeoCLIP's EqualEarth projection, GPS noise."""

from __future__ import annotations

import torch

from geovario.geo import EARTH_RADIUS_KM, METRES_PER_DEGREE


def haversine_km_torch(latlon1: torch.Tensor, latlon2: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km between (..., 2) tensors of (lat, lon) degrees; broadcasts.

    Differentiable and device-agnostic. ``haversine_km_torch(a[:, None], b[None])`` gives the
    pairwise matrix.
    """
    p1, p2 = torch.deg2rad(latlon1), torch.deg2rad(latlon2)
    dlat = p2[..., 0] - p1[..., 0]
    dlon = p2[..., 1] - p1[..., 1]
    a = torch.sin(dlat / 2) ** 2 + torch.cos(p1[..., 0]) * torch.cos(p2[..., 0]) * torch.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


# EqualEarth constants (Šavrič, Patterson & Jenny 2018), as GeoCLIP 1.3.0 uses them; SF scales the
# projected plane so that x spans about [-1, 1] after the division by 180.
_A1, _A2, _A3, _A4 = 1.340264, -0.081106, 0.000893, 0.003796
_EQUAL_EARTH_SF = 66.50336


def equal_earth(latlon: torch.Tensor) -> torch.Tensor:
    """Project (N, 2) (lat, lon) degrees with EqualEarth, scaled exactly as GeoCLIP 1.3.0 does.

    The operation order follows GeoCLIP's ``equal_earth_projection`` so that float32 results
    agree bit for bit; the location encoder's weights were trained on these inputs.
    """
    latitude_rad = torch.deg2rad(latlon[:, 0])
    longitude_rad = torch.deg2rad(latlon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0))
    theta = torch.asin((sqrt3 / 2) * torch.sin(latitude_rad))
    denominator = 3 * (9 * _A4 * theta**8 + 7 * _A3 * theta**6 + 3 * _A2 * theta**2 + _A1)
    x = (2 * sqrt3 * longitude_rad * torch.cos(theta)) / denominator
    y = _A4 * theta**9 + _A3 * theta**7 + _A2 * theta**3 + _A1 * theta
    return (torch.stack((x, y), dim=1) * _EQUAL_EARTH_SF) / 180


def add_gps_noise(latlon: torch.Tensor, metres: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Jitter (N, 2) (lat, lon) degrees by Gaussian noise of ``metres`` standard deviation per axis.

    Follows GeoCLIP's training recipe: the same degree-valued noise on both axes (metres / 111,320).
    Latitude is clamped to [-90, 90] and longitude wrapped into [-180, 180).
    """
    if metres <= 0:
        return latlon
    noise = torch.randn(latlon.shape, generator=generator, dtype=latlon.dtype, device="cpu").to(latlon.device)
    noisy = latlon + noise * (metres / METRES_PER_DEGREE)
    lat = noisy[:, 0].clamp(-90.0, 90.0)
    lon = torch.remainder(noisy[:, 1] + 180.0, 360.0) - 180.0
    return torch.stack((lat, lon), dim=1)

