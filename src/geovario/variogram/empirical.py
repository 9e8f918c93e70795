"""The empirical semivariogram of image features against great-circle distance.

For unit feature vectors, d_ij = 1 - cos(f_i, f_j) = 1/2 |f_i - f_j|^2, so the mean of d over the
pairs in a lag bin is Matheron's estimator of the multivariate field (DESIGN.md §4).

Cressie and Hawkins' robust estimator (1980) averages |Z|^(1/2) for the increment Z = f_i - f_j and
undoes the fourth root with constants derived for a *scalar* Gaussian increment: 2 gamma =
(mean |Z|^(1/2))^4 / (0.457 + 0.494 / N_k). Applied unchanged to D-dimensional features it overstates
gamma by up to 1 / 0.457 = 2.19x (on 768-d features, 2.19x in every bin), because |Z|^2 is then
(2 gamma / D) chi^2_D, not (2 gamma) chi^2_1. ``cressie_hawkins_constants`` redoes Cressie and
Hawkins' derivation for isotropic Gaussian increments in D dimensions; D = 1 gives back 0.457 and
0.494. For unit feature vectors this holds as D grows (the increments of normalised Gaussian
vectors are nearly Gaussian); features whose increments concentrate in a few directions fall
between the D = 1 and the D constants. The semivariogram loss therefore refuses anything but
Matheron's estimate (``losses.semivariogram``).

Up to ``exact_max`` points every pair is used, a row block at a time (memory O(block x N + bins)).
Above that, pairs are sampled in two strata: the pairs closer than ``short_lag_km`` (all of them,
or a uniform sample when there are more than half of ``max_pairs``), and uniform random pairs for
the rest. Each
stratum's pairs carry the inverse of their sampling rate as weight, so bin means stay unbiased,
while the short lags, nearly empty under random sampling alone, are fully populated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM, coordinate_problems
from geovario.variogram.choices import ESTIMATORS, EXACT_MAX, MAX_LAG_KM, MAX_PAIRS, SHORT_LAG_KM  # noqa: F401 (re-exported)


@dataclass
class EmpiricalVariogram:
    edges_km: np.ndarray  # (K + 1,) bin edges
    gamma: np.ndarray  # (K,) semivariance per bin; NaN where a bin has no pairs
    n: np.ndarray  # (K,) pairs used per bin
    n_weighted: np.ndarray  # (K,) estimated pairs in the population per bin (= n when exact)
    mean_h_km: np.ndarray  # (K,) mean lag of the pairs in the bin
    estimator: str
    sampling: str  # "exact" or "stratified"
    n_points: int

    @property
    def centres_km(self) -> np.ndarray:
        return (self.edges_km[:-1] + self.edges_km[1:]) / 2

    def bins(self) -> list[dict]:
        return [
            {"h_km": float(c), "mean_h_km": None if not n else float(m), "gamma": None if not n else float(g), "n": int(n), "n_weighted": float(w)}
            for c, m, g, n, w in zip(self.centres_km, self.mean_h_km, self.gamma, self.n, self.n_weighted)
        ]

    def to_dict(self) -> dict:
        return {"estimator": self.estimator, "sampling": self.sampling, "n_points": self.n_points,
                "n_pairs": int(self.n.sum()), "bin_edges_km": self.edges_km.tolist(), "bins": self.bins()}


def bin_edges(bins: int, max_lag_km: float, log: bool = False, min_lag_km: float | None = None) -> np.ndarray:
    if bins < 1:
        raise GeovarioError(f"--bins must be at least 1, got {bins}")
    if not max_lag_km > 0:
        raise GeovarioError(f"--max-lag-km must be positive, got {max_lag_km}")
    if not log:
        return np.linspace(0.0, max_lag_km, bins + 1)
    low = min_lag_km if min_lag_km is not None else max_lag_km / 1e4
    if not 0 < low < max_lag_km:
        raise GeovarioError(f"--min-lag-km must lie in (0, max lag), got {low}")
    # The first bin also takes every lag below min_lag_km.
    return np.concatenate([[0.0], np.geomspace(low, max_lag_km, bins)])


class _Bins:
    """Per-bin running sums; a bin index of K (one past the end) collects lags beyond the max lag."""

    def __init__(self, edges: np.ndarray):
        self.edges = torch.from_numpy(edges)
        self.k = len(edges) - 1
        self.linear = np.allclose(np.diff(edges), edges[1] - edges[0])
        self.inverse_width = 1.0 / float(edges[1] - edges[0])
        self.count = np.zeros(self.k + 1)
        self.w = np.zeros(self.k + 1)
        self.wd = np.zeros(self.k + 1)
        self.wh = np.zeros(self.k + 1)
        self.wroot = np.zeros(self.k + 1)

    def index(self, h: torch.Tensor) -> torch.Tensor:
        if self.linear:
            return (h * self.inverse_width).long().clamp_(max=self.k)
        return torch.clamp(torch.bucketize(h, self.edges, right=True) - 1, 0, self.k)

    def add(self, h: torch.Tensor, d: torch.Tensor, *, robust: bool, weight: float = 1.0) -> None:
        idx = self.index(h)
        # Sums per bin in float64. scatter_add_, not bincount: bincount scans its input twice more (for its
        # smallest and largest index) on every call, a third of the exact path's time with three calls per block.
        counts = self._sum(idx, torch.ones(1, dtype=torch.float64).expand(len(idx)))
        self.count += counts
        self.w += weight * counts
        self.wd += weight * self._sum(idx, d.double())
        self.wh += weight * self._sum(idx, h.double())
        if robust:
            root = torch.sqrt(torch.sqrt(torch.clamp(2 * d.double(), min=0)))  # |f_i - f_j|^(1/2)
            self.wroot += weight * self._sum(idx, root)

    def _sum(self, idx: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        return torch.zeros(self.k + 1, dtype=torch.float64).scatter_add_(0, idx, values).numpy()

    def reduce(self, reduce_sum) -> None:
        """Sum the running sums over processes (each one binned its share of the pairs)."""
        packed = reduce_sum(np.stack([self.count, self.w, self.wd, self.wh, self.wroot]))
        self.count, self.w, self.wd, self.wh, self.wroot = (np.asarray(row) for row in packed)

    def result(self, edges, estimator, sampling, n_points, dim: int) -> EmpiricalVariogram:
        k = self.k
        count, w = self.count[:k], self.w[:k]
        with np.errstate(invalid="ignore", divide="ignore"):
            if estimator == "matheron":
                gamma = self.wd[:k] / w
            else:
                a, b = cressie_hawkins_constants(dim)
                gamma = dim * (self.wroot[:k] / w) ** 4 / (a + b / count) / 2
            mean_h = self.wh[:k] / w
        gamma[count == 0] = np.nan
        return EmpiricalVariogram(edges, gamma, count.astype(np.int64), w, mean_h, estimator, sampling, n_points)


def cressie_hawkins_constants(dim: int) -> tuple[float, float]:
    """(a, b) such that 2 gamma = D (mean |Z|^(1/2))^4 / (a + b / N) for N isotropic Gaussian increments in D dims.

    With |Z|^2 = (2 gamma / D) chi^2_D, mu = E[(chi^2_D)^(1/4)] = 2^(1/4) G(D/2 + 1/4) / G(D/2) and
    m2 = E[(chi^2_D)^(1/2)] = 2^(1/2) G(D/2 + 1/2) / G(D/2) (G the gamma function). To first order in
    1/N, as Cressie and Hawkins (1980) expand it, E[(mean |Z|^(1/2))^4] = (2 gamma / D)(mu^4 + 6 mu^2
    (m2 - mu^2) / N). So a = mu^4 and b = 6 mu^2 (m2 - mu^2); D = 1 gives their 0.457 and 0.494.
    """
    from scipy.special import gammaln

    half = dim / 2
    mu = np.exp(0.25 * np.log(2) + gammaln(half + 0.25) - gammaln(half))
    m2 = np.exp(0.5 * np.log(2) + gammaln(half + 0.5) - gammaln(half))
    return float(mu**4), float(6 * mu**2 * (m2 - mu**2))


def _unit_sphere(latlon: np.ndarray) -> torch.Tensor:
    lat, lon = np.radians(latlon[:, 0].astype(np.float64)), np.radians(latlon[:, 1].astype(np.float64))
    return torch.from_numpy(np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1))


def _lag_km(cos_angle: torch.Tensor) -> torch.Tensor:
    """Great-circle km from the float64 cosine of the central angle, computed in ``cos_angle``'s own memory.

    acos loses nothing that matters here: near cos = 1 its error is eps / sin(angle), so a 1 km lag
    is off by about 1e-9 km, and a 1 m lag by about 4 mm.
    """
    return cos_angle.clamp_(-1.0, 1.0).acos_().mul_(EARTH_RADIUS_KM)  # in place (callers pass a temporary): no new tensors


def _validate(features, latlon, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row norms (float32) and float64 coordinates, or a one-line error for unusable input."""
    if features.ndim != 2:
        raise GeovarioError(f"features must be an (N, D) array, got shape {features.shape}")
    n = len(features)
    if len(latlon) != n:
        raise GeovarioError(f"{n} feature rows but {len(latlon)} coordinates")
    if n < 3:
        raise GeovarioError(f"a semivariogram needs at least 3 points, got {n}")
    latlon = np.asarray(latlon, dtype=np.float64)
    problems = coordinate_problems(latlon[:, 0], latlon[:, 1])
    if problems:
        raise GeovarioError(f"coordinates row {problems[0][0]}: {problems[0][1]}")
    norms = np.empty(n, np.float32)
    rows = 65536  # checked at a time (features may be a memory map)
    for start in range(0, n, rows):
        block = np.asarray(features[start : start + rows], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise GeovarioError(f"features row {start + int(np.argmin(finite))} contains NaN or inf")
        norms[start : start + len(block)] = np.linalg.norm(block, axis=1)
    if normalize and (norms == 0).any():
        raise GeovarioError(f"features row {int(np.argmin(norms))} has zero norm; cosine dissimilarity is undefined for it")
    if (np.ptp(_unit_sphere(latlon).numpy(), axis=0) < 1e-12).all():  # one place, however written (180 = -180, any lon at a pole)
        raise GeovarioError(f"all {n} points are at one location; a semivariogram needs spatial spread")
    return norms, latlon


def empirical_variogram(
    features,
    latlon,
    bins: int = 50,
    max_lag_km: float = MAX_LAG_KM,
    log_bins: bool = False,
    min_lag_km: float | None = None,
    estimator: str = "matheron",
    exact_max: int = EXACT_MAX,
    max_pairs: int = MAX_PAIRS,
    short_lag_km: float = SHORT_LAG_KM,
    seed: int = 0,
    normalize: bool = True,
    progress: bool = False,
    shard: tuple[int, int] = (0, 1),
    reduce_sum=None,
) -> EmpiricalVariogram:
    """Binned semivariance of 1 - cos(f_i, f_j) against haversine lag.

    ``features`` is (N, D), any float dtype, possibly a memory map; it is L2-normalised here.
    ``latlon`` is (N, 2) degrees. Exact for N <= ``exact_max``; stratified sampling above it.
    ``normalize=False`` gives the classical Matheron 1/2 |f_i - f_j|^2 of the raw vectors (for a
    1-d field, exactly what scikit-gstat computes; gstools reports it divided by D).
    Data-parallel (exact sampling only): process ``shard = (rank, world)`` bins every world-th block
    of rows, and ``reduce_sum`` (an all-reduce over processes) adds up the per-bin sums.
    """
    if estimator not in ESTIMATORS:
        raise GeovarioError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    edges = bin_edges(bins, max_lag_km, log_bins, min_lag_km)
    norms, latlon = _validate(features, latlon, normalize)
    if not normalize:
        norms = None
    accumulator = _Bins(edges)
    robust = estimator == "cressie"
    if len(features) <= exact_max:
        _exact_pairs(features, norms, latlon, accumulator, robust, progress, shard)
        sampling = "exact"
    elif shard != (0, 1):
        raise ValueError(f"sharded estimation needs exact sampling (at most exact_max={exact_max} points)")
    else:
        _stratified_pairs(features, norms, latlon, accumulator, robust, max_pairs, short_lag_km, seed, progress)
        sampling = "stratified"
    if reduce_sum is not None:
        accumulator.reduce(reduce_sum)
    return accumulator.result(edges, estimator, sampling, len(features), features.shape[1])


def _exact_pairs(features, norms, latlon, acc: _Bins, robust: bool, progress: bool, shard: tuple[int, int]) -> None:
    n = len(features)
    if norms is not None:  # d = 1 - cos
        unit = torch.from_numpy(np.asarray(features[:n], dtype=np.float32) / norms[:, None])  # (a slice: memory maps, lazy stores)
        half_sq = torch.full((n,), 0.5, dtype=torch.float32)
    else:  # d = 1/2 |f_i - f_j|^2 = 1/2 |f_i|^2 + 1/2 |f_j|^2 - f_i . f_j, in float64
        unit = torch.from_numpy(np.asarray(features[:n], dtype=np.float64))
        half_sq = 0.5 * (unit**2).sum(1)
    sphere = _unit_sphere(latlon)
    block = max(64, min(n, 4_000_000 // n))
    with tqdm(total=n * (n - 1) // 2, unit="pair", unit_scale=True, desc="pairs", disable=None if progress else True) as bar:
        for b, i0 in enumerate(range(0, n, block)):
            i1 = min(i0 + block, n)
            if b % shard[1] != shard[0]:
                continue
            rows, rows_sphere = unit[i0:i1], sphere[i0:i1]
            # The diagonal block, upper triangle only.
            upper = torch.triu_indices(i1 - i0, i1 - i0, offset=1)
            d = torch.addmm(half_sq[i0:i1, None] + half_sq[None, i0:i1], rows, rows.T, alpha=-1)[upper[0], upper[1]]
            h = _lag_km((rows_sphere @ rows_sphere.T)[upper[0], upper[1]])
            acc.add(h, d, robust=robust)
            if i1 < n:  # everything to the right of it, whole; with unit rows, d = 1 - cos in one fused product
                offset = torch.ones(1, dtype=unit.dtype) if norms is not None else half_sq[i0:i1, None] + half_sq[None, i1:]
                d = torch.addmm(offset, rows, unit[i1:].T, alpha=-1).reshape(-1)
                h = _lag_km(rows_sphere @ sphere[i1:].T).reshape(-1)
                acc.add(h, d, robust=robust)
            bar.update((i1 - i0) * (n - i0) - (i1 - i0) * (i1 - i0 + 1) // 2)


def _pair_dissimilarity(features, norms, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 15) -> torch.Tensor:
    """1 - cos (or 1/2 |f_i - f_j|^2 when ``norms`` is None) for listed pairs, gathering rows a chunk
    at a time (works on memory maps)."""
    out = []
    for s in range(0, len(i), chunk):
        a, b = i[s : s + chunk], j[s : s + chunk]
        fa = torch.from_numpy(np.asarray(features[a], dtype=np.float32))
        fb = torch.from_numpy(np.asarray(features[b], dtype=np.float32))
        if norms is None:
            out.append(0.5 * ((fa - fb) ** 2).sum(1))
        else:
            out.append(1 - (fa * fb).sum(1) / torch.from_numpy(norms[a] * norms[b]))
    return torch.cat(out)  # callers pass at least one pair


def _pair_lag(sphere: torch.Tensor, i: np.ndarray, j: np.ndarray) -> torch.Tensor:
    ii, jj = torch.from_numpy(i), torch.from_numpy(j)
    return _lag_km((sphere[ii] * sphere[jj]).sum(1))


def _stratified_pairs(features, norms, latlon, acc: _Bins, robust, max_pairs, short_lag_km, seed, progress) -> None:
    from sklearn.neighbors import KDTree

    n = len(features)
    rng = np.random.default_rng(seed)
    sphere = _unit_sphere(latlon)
    short_budget = long_budget = max(1, max_pairs // 2)

    # Stratum 1, pairs closer than short_lag_km. Neighbours come from a KD-tree on unit 3-vectors:
    # a chord radius selects exactly the pairs a haversine radius would, about 3x faster than a
    # haversine BallTree. When there are more such pairs than the budget, a random set of anchor
    # points (each with probability q) is queried and every pair touching an anchor is kept, so
    # each pair is in the sample with probability 1 - (1 - q)^2, the same for all pairs.
    points = sphere.numpy()
    tree = KDTree(points)
    radius = 2 * np.sin(short_lag_km / (2 * EARTH_RADIUS_KM))
    probe = rng.choice(n, min(n, 20_000), replace=False)
    neighbours_per_point = (tree.query_radius(points[probe], radius, count_only=True) - 1).mean()
    short_total = n * neighbours_per_point / 2
    q = 1.0 if short_total <= short_budget else 1 - np.sqrt(1 - short_budget / short_total)
    anchor = rng.random(n) < q if q < 1 else np.ones(n, bool)
    anchors = np.flatnonzero(anchor)
    weight = 1.0 / (1 - (1 - q) ** 2)
    with tqdm(total=len(anchors), unit="pt", unit_scale=True, desc="short-lag pairs", disable=None if progress else True) as bar:
        chunk = 20_000  # anchors queried at a time
        for s in range(0, len(anchors), chunk):
            block = anchors[s : s + chunk]
            found = tree.query_radius(points[block], radius)
            i = np.repeat(block, [len(x) for x in found])
            j = np.concatenate(found)  # one array per anchor of the block, which is never empty
            once = (j != i) & (~anchor[j] | (j > i))  # a pair of two anchors is taken from the smaller
            i, j = i[once], j[once]
            if len(i):
                acc.add(_pair_lag(sphere, i, j), _pair_dissimilarity(features, norms, i, j), weight=weight, robust=robust)
            bar.update(len(block))

    # Stratum 2: uniform random pairs, of which those beyond short_lag_km are kept. Drawn uniformly
    # from all n (n - 1) / 2 pairs, each stands for total / long_budget of the population.
    weight = n * (n - 1) / 2 / long_budget
    with tqdm(total=long_budget, unit="pair", unit_scale=True, desc="random pairs", disable=None if progress else True) as bar:
        chunk = 1 << 20  # pairs drawn at a time
        for s in range(0, long_budget, chunk):
            m = min(chunk, long_budget - s)
            i = rng.integers(0, n, m)
            j = (i + rng.integers(1, n, m)) % n  # j != i, uniform over the others
            h = _pair_lag(sphere, i, j)
            far = (h >= short_lag_km).numpy()
            if far.any():
                acc.add(h[far], _pair_dissimilarity(features, norms, i[far], j[far]), weight=weight, robust=robust)
            bar.update(m)
